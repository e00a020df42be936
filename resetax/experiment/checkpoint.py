"""Resumable checkpoints of the whole training state, and the saved best model, with Orbax.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed in the middle of a write resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np

# Orbax's saves and restores in one process must not overlap: two at once (the runs of a group
# trained side by side) wait on each other's completion signals until they time out.
_ORBAX = threading.RLock()


class CheckpointManager:
    """Saves and restores the train state plus JSON metadata, keyed by training step.

    The state is stored as the named pytree it is (Orbax's standard format): a checkpoint can be
    read by field name with plain Orbax, e.g.
    ``ocp.StandardCheckpointer().restore(f"{run_dir}/checkpoints/{step}/state")["params"]``.
    ``restore`` rebuilds the exact pytree types (NamedTuples, optax states, ``MaskedNode``) from
    a template of the same structure.

    Example:
      >>> import collections
      >>> import tempfile
      >>> import numpy as np
      >>> import orbax.checkpoint as ocp
      >>> from resetax.experiment.checkpoint import CheckpointManager
      >>> State = collections.namedtuple("State", ["step", "params", "opt_state"])
      >>> params = {"w": np.arange(3, dtype=np.float32)}
      >>> state = State(np.int32(10), params, optax.adam(0.1).init(params))
      >>> directory = tempfile.mkdtemp()
      >>> manager = CheckpointManager(directory)
      >>> manager.latest_step() is None  # nothing saved yet: a fresh run
      True
      >>> manager.save(state, {"wall_time": 1.5})
      >>> manager.latest_step()
      10
      >>> template = jax.tree.map(np.zeros_like, state)  # same structure, any values
      >>> restored, meta = manager.restore(template)
      >>> int(restored.step), restored.params["w"].tolist(), meta
      (10, [0.0, 1.0, 2.0], {'wall_time': 1.5})
      >>> type(restored.opt_state[0]).__name__  # the optax state keeps its type
      'ScaleByAdamState'
      >>> raw = ocp.StandardCheckpointer().restore(f"{directory}/10/state")  # plain Orbax
      >>> sorted(raw), raw["params"]["w"].tolist()
      (['opt_state', 'params', 'step'], [0.0, 1.0, 2.0])
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        with _ORBAX:
            self._manager = ocp.CheckpointManager(
                self.directory,
                # Synchronous: save() waits for the write anyway, and Orbax's background
                # threads printed dozens of tracebacks when a write failed (a full disk).
                options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                    enable_async_checkpointing=False),
            )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, state: Any, meta: dict[str, Any]) -> None:
        """Writes ``state`` (host arrays; its ``step`` field names the checkpoint) and ``meta``.

        Orbax writes into a temporary directory and renames it when complete, so a failed or
        interrupted save leaves the earlier checkpoints as they were. A directory that cannot be
        written raises :class:`~resetax.experiment.workdir.RunError` at once.
        """
        from resetax.experiment.workdir import RunError, storage_fix, storage_problem

        ocp, step = self._ocp, int(state.step)
        try:  # fail in a moment, not after Orbax's retries, if the directory became unwritable
            probe = self.directory / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
            with _ORBAX:
                host = _host(state)
                self._manager.save(
                    step, args=ocp.args.Composite(
                        state=ocp.args.StandardSave(host),
                        meta=ocp.args.JsonSave({**meta, _DIGEST: _digest(host)})))
                self._manager.wait_until_finished()
        except Exception as err:  # OSError, or whatever Orbax and tensorstore raise for it
            self._discard(step)
            raise RunError(f"cannot write the checkpoint of step {step} to "
                           f"{str(self.directory)!r}: {storage_problem(err)}; the earlier "
                           f"checkpoints are intact: {storage_fix(err)}, then continue with "
                           f"--resume.") from None

    def _discard(self, step: int) -> None:
        """Removes what a failed save of ``step`` wrote, once its other writes have ended, to
        give back the space it took (a full disk)."""
        import time

        with contextlib.suppress(Exception):
            self._manager.wait_until_finished()
        for _ in range(50):  # tensorstore's last writes may still create files for a moment
            partial = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
            if not partial:
                return
            for path in partial:
                shutil.rmtree(path, ignore_errors=True)
            time.sleep(0.02)

    def restore_latest(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that reads back intact, or None if there is none at all.

        A checkpoint that cannot be read (a truncated file, empty metadata) is named in a warning
        and the next older one is tried; if none is intact,
        :class:`~resetax.experiment.workdir.RunError` says so in one line.
        """
        from resetax.experiment.workdir import RunError, note

        steps = sorted(self._manager.all_steps(), reverse=True)
        broken = []
        for step in steps:
            try:
                return self.restore(template, step)
            except RunError:  # readable, but of a layout this version cannot continue
                raise
            except Exception as err:  # tensorstore, JSON and Orbax errors alike
                broken.append(str(step))
                note(f"checkpoint {str(self.directory / str(step))!r} is unreadable "
                     f"({_first_line(err)}); trying an earlier one.")
        if broken:
            raise RunError(f"no intact checkpoint in {str(self.directory)!r} (unreadable: steps "
                           f"{', '.join(broken)}); start the run again with --overwrite.")
        return None

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Reads the checkpoint at ``step`` (default: the latest) into ``template``'s structure.

        Checkpoints of resetax 0.1.0, which stored the state's leaves under keys "00000",
        "00001"..., load when their train state has the same leaves; those written before the
        optimizer state gained ``num_nonfinite_resets`` are refused with a message.
        """
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        try:
            with _ORBAX:
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_host(template)),
                        meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError) as err:
            legacy = self._restore_legacy(template, step)
            if legacy is None:
                raise err
            return legacy
        meta = restored.meta
        if not (isinstance(meta, dict) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta.values())):
            raise ValueError(f"its metadata is not an object of numbers: {str(meta)[:40]}")
        leaves = jax.tree.leaves(jax.tree.map(np.asarray, restored.state))
        state = jax.tree.unflatten(jax.tree.structure(template), leaves)
        meta = dict(meta)
        saved = meta.pop(_DIGEST, None)  # absent from checkpoints of earlier versions
        if saved is not None and saved != _digest(state):
            raise ValueError("its arrays differ from the checksum saved with them")
        return state, meta

    def _restore_legacy(self, template: Any, step: int) -> tuple[Any, dict[str, Any]] | None:
        """0.1.0's format (the leaves in order), or None if the checkpoint is not in it."""
        from resetax.experiment.workdir import RunError

        ocp = self._ocp
        with _ORBAX:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                              meta=ocp.args.JsonRestore()))
        stored = restored.state
        if not (isinstance(stored, dict) and stored and all(k.isdigit() for k in stored)):
            return None
        leaves, treedef = jax.tree.flatten(template)
        if len(stored) != len(leaves):
            raise RunError(
                f"checkpoint {str(self.directory / str(step))!r} was written by resetax 0.1.0, "
                f"whose train state had {len(stored)} arrays (this version's has {len(leaves)}); "
                f"finish that run with `pip install resetax==0.1.0`, or start it again with "
                f"--overwrite.")
        state = treedef.unflatten([np.asarray(stored[k]) for k in sorted(stored)])
        return state, restored.meta


# A checkpoint's metadata holds a CRC-32 of its arrays: a flipped byte in the array files reads
# back without an error, and would resume a run from other numbers than it saved.
_DIGEST = "arrays_crc32"


def _digest(state: Any) -> int:
    """CRC-32 of the bytes of every array of ``state``, in leaf order."""
    crc = 0
    for leaf in jax.tree.leaves(state):
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes(), crc)
    return crc


def _first_line(err: BaseException) -> str:
    """An exception as one short line (tensorstore's messages run to kilobytes)."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:200] + "..."


def _host(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)


def save_best(directory: str | os.PathLike, params: Any, batch_stats: Any) -> None:
    """Saves the best-validation model's variables (``{"params", "batch_stats"}``).

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> import numpy as np
      >>> from resetax.experiment.checkpoint import load_best, save_best
      >>> directory = Path(tempfile.mkdtemp()) / "best"
      >>> params = {"Dense_0": {"kernel": np.ones((2, 3), np.float32),
      ...                       "bias": np.zeros(3, np.float32)}}
      >>> save_best(directory, params, batch_stats={})  # a model without BatchNorm
      >>> directory.is_dir()
      True
      >>> variables = load_best(directory)
      >>> variables["params"]["Dense_0"]["kernel"].tolist(), variables["batch_stats"]
      ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], {})
    """
    import orbax.checkpoint as ocp

    from resetax.experiment.workdir import StorageError

    variables = {"params": params}
    if jax.tree.leaves(batch_stats):
        variables["batch_stats"] = batch_stats
    directory = Path(directory).absolute()
    try:
        with _ORBAX, ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(directory, variables, force=True)
    except Exception as err:  # OSError, or whatever Orbax and tensorstore raise for it
        for partial in directory.parent.glob(f"{directory.name}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        raise StorageError(directory, err) from None


def load_best(directory: str | os.PathLike) -> dict[str, Any]:
    """Loads the variables saved by :func:`save_best`, ready for ``model.apply``.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax import models
      >>> from resetax.experiment.checkpoint import load_best, save_best
      >>> model = models.get_model("mlp", 3, hidden_sizes=(4,))  # with BatchNorm
      >>> x = jnp.linspace(-1.0, 1.0, 10).reshape(2, 5)
      >>> variables = model.init(jax.random.key(0), x)
      >>> directory = Path(tempfile.mkdtemp()) / "best"
      >>> save_best(directory, variables["params"], variables["batch_stats"])
      >>> loaded = load_best(directory)
      >>> sorted(loaded), sorted(loaded["batch_stats"]["BatchNorm_0"])
      (['batch_stats', 'params'], ['mean', 'var'])
      >>> bool(jnp.array_equal(model.apply(loaded, x), model.apply(variables, x)))
      True
    """
    import orbax.checkpoint as ocp

    with _ORBAX, ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(Path(directory).absolute())
    variables.setdefault("batch_stats", {})
    return variables
