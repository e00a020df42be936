"""resetax: stochastic resetting of SGD for training on noisy labels, in JAX and Optax.

Importing resetax loads jax and optax only; the submodules that need Flax or TensorFlow Datasets
(``resetax.data``, ``resetax.models``, ``resetax.nnx``, ``resetax.linen``, ``resetax.experiment``,
``resetax.diagnostics``) load on first attribute access.
"""

import importlib

from resetax.plasticity import (
    RecycleDormantUnitsState,
    ResetToInitState,
    ShrinkAndPerturbState,
    UnitWeights,
    apply_reset_updates,
    init_from_initializers,
    recycle_dormant_units,
    reinit_model_state,
    reset_to_init,
    shrink_and_perturb,
    unit_activations,
)
from resetax.resetting import (
    ModelStateCheckpoint,
    ResettingState,
    apply_updates,
    find_resetting_state,
    init_model_state_checkpoint,
    reset_model_state,
    set_checkpoint,
    stochastic_resetting,
)
from resetax.schedules import (
    ScaleByRestorableScheduleState,
    restorable_learning_rate,
    scale_by_restorable_schedule,
)

__version__ = "0.1.0"

_SUBMODULES = (
    "data", "diagnostics", "experiment", "linen", "losses", "models", "nnx", "noise", "theory")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"resetax.{name}")
    raise AttributeError(f"module 'resetax' has no attribute {name!r}")


__all__ = [
    "ModelStateCheckpoint",
    "RecycleDormantUnitsState",
    "ResetToInitState",
    "ResettingState",
    "ScaleByRestorableScheduleState",
    "ShrinkAndPerturbState",
    "UnitWeights",
    "apply_reset_updates",
    "apply_updates",
    "find_resetting_state",
    "init_from_initializers",
    "init_model_state_checkpoint",
    "recycle_dormant_units",
    "reinit_model_state",
    "reset_model_state",
    "reset_to_init",
    "restorable_learning_rate",
    "scale_by_restorable_schedule",
    "set_checkpoint",
    "shrink_and_perturb",
    "stochastic_resetting",
    "unit_activations",
]
