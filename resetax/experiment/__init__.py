"""Experiments on noisy labels: configs and presets, train/eval steps, runner, CLI."""

from resetax.experiment.build import setup
from resetax.experiment.config import PRESETS, Config, get_config
from resetax.experiment.runner import train, train_loop

__all__ = ["PRESETS", "Config", "get_config", "setup", "train", "train_loop"]
