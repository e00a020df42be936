"""The training loop around the pure steps: devices, run directory, metrics, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resetax.experiment import distributed
from resetax.experiment import steps as steps_lib
from resetax.experiment.config import Config, validate
from resetax.experiment.input import load_data, pad_eval_set, preprocess

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.jsonl", "summary.json"
EVAL_BATCH_SIZE = 1000
DIAGNOSTICS_SAMPLES = 4096  # training samples the diagnostics look at (the first ones)


def check_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Refuses to touch an existing run unless asked to resume or overwrite it.

    Returns:
      ``run_dir`` as a ``Path``. Nothing is created.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import runner
      >>> root = Path(tempfile.mkdtemp())
      >>> runner.check_run_dir(root / "new", resume=False, overwrite=False).name
      'new'
      >>> (root / "old").mkdir(); (root / "old" / "metrics.jsonl").write_text("")
      0
      >>> runner.check_run_dir(root / "old", resume=False, overwrite=False)
      Traceback (most recent call last):
      ...
      FileExistsError: run directory '...old' already exists; pass --resume to continue it or ...
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other; pass at most one.")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if exists and not (resume or overwrite):
        raise FileExistsError(
            f"run directory {str(run_dir)!r} already exists; pass --resume to continue it or "
            f"--overwrite to replace it."
        )
    if resume and not (run_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"nothing to resume: {str(run_dir)!r} holds no {CONFIG_FILE}.")
    return run_dir


def load_config(run_dir: str | os.PathLike) -> Config:
    """Reads the config a run directory was started with (its ``config.json``).

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import runner
      >>> from resetax.experiment.config import get_config
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> runner.write_config(run_dir, get_config("quick", noise_rate=0.6))
      >>> runner.load_config(run_dir) == get_config("quick", noise_rate=0.6)
      True
    """
    fields = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    return validate(Config(**fields))


def check_devices(config: Config) -> None:
    """Checks that the devices can run the config: the batch must split evenly over them.

    Example:
      >>> from resetax.experiment import runner
      >>> from resetax.experiment.config import get_config
      >>> runner.check_devices(get_config("quick", num_devices=1))  # fine: returns None
      >>> runner.check_devices(get_config("quick", batch_size=33, num_devices=2))
      Traceback (most recent call last):
      ...
      ValueError: batch_size (33) must be divisible by the number of devices (2).
    """
    if jax.process_count() > 1 and config.parallel == "pmap":
        raise ValueError("parallel='pmap' runs on one host; multi-process runs need the "
                         "default parallel='sharded'.")
    num_devices = len(_devices(config))
    if config.batch_size % num_devices:
        raise ValueError(
            f"batch_size ({config.batch_size}) must be divisible by the number of devices "
            f"({num_devices})."
        )


def write_config(run_dir: Path, config: Config) -> None:
    """Writes ``config.json``, from which a run is resumed (see :func:`load_config`).

    Example:
      >>> import json, tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import runner
      >>> from resetax.experiment.config import get_config
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> runner.write_config(run_dir, get_config("quick"))
      >>> json.loads((run_dir / "config.json").read_text())["dataset"]
      'mnist1d'
    """
    _write_json(Path(run_dir) / CONFIG_FILE, dataclasses.asdict(config))


def prepare_run_dir(run_dir: Path, config: Config, *, overwrite: bool) -> None:
    """Creates the run directory and its ``config.json``, once every process has checked it.

    In a multi-process run, process 0 writes (the run directory must be on a filesystem all
    hosts share) and the others wait for it.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import runner
      >>> from resetax.experiment.config import get_config
      >>> run_dir = Path(tempfile.mkdtemp()) / "run"
      >>> runner.prepare_run_dir(run_dir, get_config("quick"), overwrite=False)
      >>> sorted(p.name for p in run_dir.iterdir())
      ['config.json']
    """
    distributed.barrier("resetax: run directory checked")
    if distributed.is_primary():
        if overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, config)
    distributed.barrier("resetax: run directory prepared")


def train(config: Config, run_dir: str | os.PathLike, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True, stop_after: int | None = None
          ) -> dict[str, Any]:
    """Trains one run and writes its directory; returns the summary.

    Every check (config, run directory, device count, dataset availability) happens before
    anything is written. With ``resume=True`` the run continues from its last checkpoint and ends
    identical to an uninterrupted one. ``stop_after`` stops (after a checkpoint) once that many
    steps are done, as an interruption would. A SIGTERM stops the run at the end of the current
    evaluation window, after a checkpoint; the result is then
    ``{"stopped_at": step, "signal": "SIGTERM"}``.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import runner
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", num_steps=40,
      ...                     eval_every=10, steps_per_dispatch=10, checkpoint_every=20,
      ...                     reset_prob=0.1, patience=0)
      >>> run_dir = Path(tempfile.mkdtemp()) / "run"
      >>> runner.train(config, run_dir, progress=False, stop_after=20)  # as if interrupted
      {'stopped_at': 20}
      >>> summary = runner.train(config, run_dir, progress=False, resume=True)
      >>> summary["num_steps"], summary["num_resets"] > 0, 0 <= summary["test_acc"] <= 1
      (40, True, True)
      >>> sorted(p.name for p in run_dir.iterdir())
      ['best', 'checkpoints', 'config.json', 'curves.png', 'metrics.jsonl', 'summary.json']
    """
    validate(config)
    run_dir = check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        saved = load_config(run_dir)
        if saved != config:
            changed = [f.name for f in dataclasses.fields(Config)
                       if getattr(saved, f.name) != getattr(config, f.name)]
            raise ValueError(f"cannot resume {str(run_dir)!r} with a different config: {changed}.")
    check_devices(config)
    data = load_data(config)
    prepare_run_dir(run_dir, config, overwrite=overwrite)
    experiment = _Experiment(config, data)
    return experiment.run(run_dir, resume=resume, progress=progress, stop_after=stop_after)


class _Experiment:
    """Builds the model, optimizer and device placement of one config."""

    def __init__(self, config: Config, data):
        from resetax import models

        self.config, self.data = config, data
        pmap = config.parallel == "pmap"
        self.axis_name = "data" if pmap else None
        self.model = models.get_model(config.model, data.num_classes, axis_name=self.axis_name)
        self.loss_fn, loss_state = steps_lib.make_loss(config, len(data.train), data.num_classes)
        self.devices = _devices(config)
        n = len(self.devices)
        sample = jnp.asarray(data.train.inputs[:1])
        params_shape = jax.eval_shape(
            lambda: steps_lib.init_state(config, _unsynced(self.model), _NoOpt(), sample).params)
        self.tx = steps_lib.make_optimizer(config, params_shape)
        self.host_state = steps_lib.init_state(config, _unsynced(self.model), self.tx, sample,
                                               loss_state)

        multiple = n * EVAL_BATCH_SIZE if len(data.val) > n * EVAL_BATCH_SIZE else n
        val = pad_eval_set(data.val.inputs, data.val.labels, multiple)
        multiple = n * EVAL_BATCH_SIZE if len(data.test) > n * EVAL_BATCH_SIZE else n
        test = pad_eval_set(data.test.inputs, data.test.labels, multiple)
        train = (data.train.inputs, data.train.labels.astype(np.int32))
        mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(mesh, P())
        sharded = NamedSharding(mesh, P("data"))
        if pmap:
            stack = lambda a: np.broadcast_to(a, (n, *a.shape))  # noqa: E731
            split = lambda a: a.reshape(n, -1, *a.shape[1:])  # noqa: E731
            self.device_data = jax.device_put(steps_lib.DeviceData(
                *map(stack, train), *map(split, val), *map(split, test)), sharded)
            chunk = steps_lib.make_train_chunk(
                config, self.model, self.tx, self.loss_fn, len(data.train), axis_name="data",
                eval_batch_size=EVAL_BATCH_SIZE)
            self._run = jax.pmap(chunk, axis_name="data", static_broadcasted_argnums=2,
                                 donate_argnums=0, devices=self.devices)
        else:
            self.device_data = steps_lib.DeviceData(
                *jax.device_put(train, self.replicated), *jax.device_put(val, sharded),
                *jax.device_put(test, sharded))
            chunk = steps_lib.make_train_chunk(
                config, self.model, self.tx, self.loss_fn, len(data.train),
                batch_sharding=sharded, eval_batch_size=EVAL_BATCH_SIZE)
            self._run = jax.jit(chunk, static_argnums=2, donate_argnums=0,
                                out_shardings=self.replicated)
        self._diagnose = None
        self.evaluate = jax.jit(steps_lib.make_evaluate(_unsynced(self.model), None,
                                                        EVAL_BATCH_SIZE))

    def place(self, host_state):
        if self.axis_name is not None:  # one copy per device along a leading axis
            n = len(self.devices)
            stacked = jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))), host_state)
            return jax.device_put(stacked, NamedSharding(self.replicated.mesh, P("data")))
        return jax.device_put(host_state, self.replicated)

    def fetch(self, tree):
        if self.axis_name is not None:
            tree = jax.tree.map(lambda x: x[0], tree)
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def run(self, run_dir: Path, *, resume: bool, progress: bool, stop_after: int | None):
        from resetax.experiment import checkpoint, report

        config = self.config
        manager = checkpoint.CheckpointManager(run_dir / "checkpoints")
        host_state, wall_time, saved_step = self.host_state, 0.0, None
        primary = distributed.is_primary()  # the one process that writes files
        metrics_path = run_dir / METRICS_FILE
        if resume and manager.latest_step() is not None:
            host_state, meta = manager.restore(host_state)
            wall_time, saved_step = meta["wall_time"], int(host_state.step)
            if primary:
                _truncate_metrics(metrics_path, int(host_state.step))
        elif primary and metrics_path.exists():
            metrics_path.unlink()
        state = self.place(host_state)
        step = int(host_state.step)
        bar = _progress_bar(config.num_steps, step, progress and primary)
        window: dict[str, Any] = {}
        signalled = _StopRequest()
        with signalled, open(metrics_path if primary else os.devnull, "a") as metrics_file:
            while step < config.num_steps:
                if stop_after is not None and step >= stop_after:
                    break
                stopping = signalled.agreed()  # the same decision on every process
                if stopping and step % config.eval_every == 0:
                    if saved_step != step:
                        manager.save(self.fetch(state), {"wall_time": wall_time})
                    break
                start = time.perf_counter()
                length = min(config.steps_per_dispatch, config.num_steps - step,
                             config.checkpoint_every - step % config.checkpoint_every)
                if stopping:  # run on to the end of the evaluation window only
                    length = min(length, config.eval_every - step % config.eval_every)
                if config.diagnostics_every:
                    every = config.diagnostics_every
                    length = min(length, every - step % every)
                    if step % every == 0:
                        window["diagnostics"] = self.diagnose(state)
                state, metrics = self._run(state, self.device_data, length)
                metrics = self.fetch(metrics)
                wall_time += time.perf_counter() - start
                for row in _rows(metrics):
                    line = _window_line(window, row, config)
                    if line is not None:
                        metrics_file.write(json.dumps(line) + "\n")
                        bar.set_postfix(loss=f"{line['train_loss']:.3f}",
                                        val=f"{line['val_loss']:.3f}",
                                        resets=line["num_resets"], refresh=False)
                metrics_file.flush()
                step += length
                bar.update(length)
                if step % config.checkpoint_every == 0 or step == config.num_steps:
                    manager.save(self.fetch(state), {"wall_time": wall_time})
                    saved_step = step
        bar.close()
        if step < config.num_steps:
            return {"stopped_at": step, **({"signal": "SIGTERM"} if signalled.requested else {})}
        final = self.fetch(state)
        checkpoint.save_best(run_dir / "best", final.best_params, final.best_batch_stats)
        summary = self.summarize(final, wall_time)
        if primary:
            _write_json(run_dir / SUMMARY_FILE, summary)
            report.plot_run(run_dir)
        return summary

    def diagnose(self, state) -> dict[str, float]:
        """Latent-gradient-bias diagnostics at the current params, on the training set."""
        from resetax import diagnostics

        if self._diagnose is None:
            train = self.data.train
            if train.clean_labels is None:
                raise ValueError("diagnostics_every needs a dataset with known clean labels.")
            model = _unsynced(self.model)
            n = min(len(train), DIAGNOSTICS_SAMPLES)
            x = jnp.asarray(train.inputs[:n])
            noisy, clean = jnp.asarray(train.labels[:n]), jnp.asarray(train.clean_labels[:n])

            def run(params, batch_stats):
                def apply_fn(p, xb):
                    return model.apply({"params": p, "batch_stats": batch_stats}, preprocess(xb),
                                       train=False)

                loss = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
                    logits, y)
                parts = diagnostics.decompose_gradients(
                    apply_fn, loss, params, x, noisy, noisy != clean,
                    chunk_size=min(n, EVAL_BATCH_SIZE))
                logits = jax.lax.map(lambda xb: apply_fn(params, xb[None])[0], x,
                                     batch_size=min(n, EVAL_BATCH_SIZE))
                return parts.overall, diagnostics.memorization_fractions(logits, noisy, clean)

            self._diagnose = jax.jit(run)
        host = self.fetch(state)  # computed by each process on its own first device
        alignment, memorization = self._diagnose(host.params, host.batch_stats)
        out = {f"grad_{k}": float(v) for k, v in alignment._asdict().items()}
        out.update({f"mem_{k}": float(v) for k, v in memorization._asdict().items()
                    if not k.startswith("num_")})
        return out

    def summarize(self, final, wall_time: float) -> dict[str, Any]:
        from resetax import find_resetting_state

        test = self.data.test
        x, y, w = pad_eval_set(test.inputs, test.labels, 1)
        _, best_test_acc = self.evaluate(final.best_params, final.best_batch_stats, x, y, w)
        _, last_test_acc = self.evaluate(final.params, final.batch_stats, x, y, w)
        vx, vy, vw = pad_eval_set(self.data.val.inputs, self.data.val.labels, 1)
        best_val_loss, best_val_acc = self.evaluate(
            final.best_params, final.best_batch_stats, vx, vy, vw)
        resetting = find_resetting_state(final.opt_state)
        device = self.devices[0]
        return {
            "best_step": int(final.best_step),
            "best_val_loss": float(best_val_loss),
            "best_val_acc": float(best_val_acc),
            "test_acc": float(best_test_acc),
            "last_test_acc": float(last_test_acc),
            "num_resets": int(resetting.num_resets),
            "reset_prob": self.config.reset_prob,
            "num_steps": int(final.step),
            "wall_time_s": round(wall_time, 3),
            "device": f"{len(self.devices)}x {device.platform}:{device.device_kind}",
            "num_processes": jax.process_count(),
            "parallel": self.config.parallel,
        }


def _devices(config: Config) -> list:
    if jax.process_count() > 1:  # every device of every process
        devices = jax.devices()
        if config.num_devices not in (None, len(devices)):
            raise ValueError(
                f"num_devices ({config.num_devices}) must be None in a multi-process run, "
                f"which uses all {len(devices)} devices of its {jax.process_count()} processes.")
        return devices
    devices = jax.local_devices()
    if config.num_devices is not None:
        if config.num_devices > len(devices):
            raise ValueError(
                f"num_devices ({config.num_devices}) exceeds the {len(devices)} local devices.")
        devices = devices[: config.num_devices]
    return devices


class _StopRequest:
    """Turns a SIGTERM (preemption, ``kill``, a scheduler's time limit) into a clean stop.

    The run goes on to the end of its evaluation window, saves a checkpoint there and returns, so
    ``--resume`` loses nothing. A second SIGTERM terminates at once (the run then resumes from its
    last periodic checkpoint). Outside the main thread no handler can be installed and SIGTERM
    keeps its default action.
    """

    def __init__(self):
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info):
        if self._installed:
            signal.signal(signal.SIGTERM, _handler_or_default(self._previous))
            self._installed = False

    def _handle(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGTERM, _handler_or_default(self._previous))
            signal.raise_signal(signal.SIGTERM)
        self.requested = True

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a collective in a multi-process run)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
        return bool(np.max(flags))


def _handler_or_default(handler):
    return signal.SIG_DFL if handler is None else handler


class _NoOpt:
    """Stands in for the optimizer when only the parameter shapes are needed."""

    def init(self, params):
        return None


def _unsynced(model):
    """The same model without a BatchNorm axis name, for work outside ``pmap``."""
    if getattr(model, "axis_name", None) is None:
        return model
    return model.clone(axis_name=None)


def _rows(metrics: dict[str, np.ndarray]):
    keys = list(metrics)
    for i in range(len(metrics["step"])):
        row = {}
        for k in keys:
            v = metrics[k][i]
            row[k] = bool(v) if v.dtype == np.bool_ else (
                int(v) if np.issubdtype(v.dtype, np.integer) else float(v))
        yield row


def _window_line(window: dict[str, Any], row: dict[str, Any], config: Config):
    """Folds one step's metrics into the current evaluation window; returns it once complete.

    A window starts at an evaluation step ``s`` (validation and test metrics at the params step
    ``s`` starts from) and covers steps ``[s, s + eval_every)``: the mean train loss, the steps
    that reset, and the resetting status after the window's last update.
    """
    if math.isfinite(row["val_loss"]):
        diagnostics = window.pop("diagnostics", None)
        window.clear()
        if diagnostics is not None and row["step"] % (config.diagnostics_every or 1) == 0:
            window.update(diagnostics)
        window.update(step=row["step"], val_loss=row["val_loss"], val_acc=row["val_acc"],
                      test_acc=row["test_acc"], learning_rate=row["learning_rate"],
                      train_losses=[], reset_steps=[])
    window["train_losses"].append(row["train_loss"])
    if row["did_reset"]:
        window["reset_steps"].append(row["step"])
    end = row["step"] + 1
    if end % config.eval_every and end != config.num_steps:
        return None
    line = {k: v for k, v in window.items() if k != "train_losses"}
    line.update(train_loss=float(np.mean(window["train_losses"])), active=row["active"],
                num_resets=row["num_resets"], distance=row["distance"])
    return line


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] < step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in lines))
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True)
