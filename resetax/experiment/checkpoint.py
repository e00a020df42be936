"""Resumable checkpoints of the whole training state, and the saved best model, with Orbax.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed in the middle of a write resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np


class CheckpointManager:
    """Saves and restores a pytree of host arrays plus JSON metadata, keyed by training step.

    The tree is stored as its flat list of leaves; ``restore`` rebuilds it from a template of the
    same structure, so any pytree (NamedTuples, optax states, ``MaskedNode``) round-trips.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, state: Any, meta: dict[str, Any]) -> None:
        ocp = self._ocp
        leaves = {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
        self._manager.save(
            int(state.step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                    meta=ocp.args.JsonSave(meta)),
        )
        self._manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        leaves, treedef = jax.tree.flatten(template)
        target = {f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                          meta=ocp.args.JsonRestore()))
        state = treedef.unflatten([np.asarray(restored.state[k]) for k in sorted(target)])
        return state, restored.meta


def save_best(directory: str | os.PathLike, params: Any, batch_stats: Any) -> None:
    """Saves the best-validation model's variables (``{"params", "batch_stats"}``)."""
    import orbax.checkpoint as ocp

    variables = {"params": params}
    if jax.tree.leaves(batch_stats):
        variables["batch_stats"] = batch_stats
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(directory).absolute(), variables, force=True)


def load_best(directory: str | os.PathLike) -> dict[str, Any]:
    """Loads the variables saved by :func:`save_best`, ready for ``model.apply``."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(Path(directory).absolute())
    variables.setdefault("batch_stats", {})
    return variables
