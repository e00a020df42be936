"""Experiments on noisy labels: configs and presets, train/eval steps, runner, CLI."""

from resetax.experiment.build import Experiment, load_inputs, setup
from resetax.experiment.config import PRESETS, Config, get_config
from resetax.experiment.runner import Diverged, Finished, RunResult, Stopped, train, train_loop

__all__ = ["PRESETS", "Config", "Diverged", "Experiment", "Finished", "RunResult", "Stopped",
           "get_config", "load_inputs", "setup", "train", "train_loop"]
