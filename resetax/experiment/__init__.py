"""Experiments on noisy labels: configs and presets, train/eval steps, runner, CLI."""

from resetax.experiment.config import PRESETS, Config, get_config
from resetax.experiment.runner import train

__all__ = ["PRESETS", "Config", "get_config", "train"]
