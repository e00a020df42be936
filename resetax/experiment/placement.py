"""Device placement: which devices a run trains on, and how its state, data and steps live there.

One interface, :class:`Placement`, with two strategies chosen once per run by
:func:`placement_for`: :class:`JitMesh` (the default, ``parallel="sharded"``: the steps jitted
over a ``Mesh``, the state replicated, the evaluation sets sharded, the batch sharded inside the
step) and :class:`Pmap` (``parallel="pmap"``: the same steps under ``jax.pmap`` on a copy of the
state per device, stacked along a leading axis, with cross-replica BatchNorm).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resetax.experiment import steps as steps_lib
from resetax.experiment import train_state
from resetax.experiment.config import Config
from resetax.experiment.data_input import ExperimentData, pad_eval_set

AXIS = "data"  # the mesh's one axis, and pmap's axis name


@dataclasses.dataclass(frozen=True)
class Placement(abc.ABC):
    """Where the state and the data of a run live, and how its steps are compiled for them.

    Attributes:
      devices: The devices, in mesh order.

    Example:
      >>> import numpy as np
      >>> from resetax.experiment.placement import JitMesh, Pmap
      >>> for placement in (JitMesh(tuple(jax.devices()[:2])), Pmap(tuple(jax.devices()[:2]))):
      ...     state = placement.place_state({"w": np.ones(3)})
      ...     print(state["w"].shape, placement.fetch(state)["w"].shape)  # on devices; back
      (3,) (3,)
      (2, 3) (3,)
    """

    devices: tuple

    @functools.cached_property
    def mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (AXIS,))

    @functools.cached_property
    def sharded(self) -> NamedSharding:
        """Split along the devices (the leading axis)."""
        return NamedSharding(self.mesh, P(AXIS))

    @functools.cached_property
    def replicated(self) -> NamedSharding:
        """A whole copy on every device."""
        return NamedSharding(self.mesh, P())

    @property
    @abc.abstractmethod
    def replicas(self) -> steps_lib.Replicas:
        """The collectives the steps use under this placement."""

    @property
    def batch_sharding(self) -> NamedSharding | None:
        """The sharding the train step constrains its batch to, if any."""
        return None

    @abc.abstractmethod
    def compile(self, fn: Callable, *, static_argnums: tuple[int, ...] = (),
                donate_argnums: tuple[int, ...] = ()) -> Callable:
        """``fn`` compiled to run on placed arguments, its result placed as the state is."""

    @abc.abstractmethod
    def place_state(self, host_state: Any) -> Any:
        """Puts a host pytree on the devices, as the steps take their state."""

    @abc.abstractmethod
    def fetch(self, tree: Any) -> Any:
        """The host copy (numpy) of a placed pytree (of one replica, where there are several)."""

    @abc.abstractmethod
    def place_data(self, data: ExperimentData) -> train_state.DeviceData:
        """The training split on every device, the evaluation splits padded and split over them.
        """

    @abc.abstractmethod
    def constant(self, make: Callable[[], Any]) -> Any:
        """``make()``'s pytree, placed as the state is.

        Built on the devices where it can be rather than transferred: a multi-process
        ``device_put`` checks that every process passes equal values, which NaN never is.
        """

    @abc.abstractmethod
    def stack_steps(self, metrics: list[Any]) -> Any:
        """The metrics of consecutive steps stacked, as a fused chunk returns them."""

    def padded(self, split: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An evaluation split padded to split evenly over the devices (and over their
        evaluation batches, when it is larger than one per device)."""
        n = len(self.devices)
        batch = steps_lib.EVAL_BATCH_SIZE
        multiple = n * batch if len(split) > n * batch else n
        return pad_eval_set(split.inputs, split.labels, multiple)

    def compile_eval(self, eval_step: Callable) -> Callable:
        """``eval_step(state, data)`` compiled for this placement."""
        return self.compile(eval_step)

    def compile_chunk(self, chunk: Callable, data: train_state.DeviceData) -> Callable:
        """``run_steps(state, step, num_steps)`` as one call of ``chunk(state, data, num_steps)``
        (fused steps, :func:`~resetax.experiment.steps.fuse_steps`); the state is donated."""
        compiled = self.compile(chunk, static_argnums=(2,), donate_argnums=(0,))
        return lambda state, step, num_steps: compiled(state, data, num_steps)

    def compile_steps(self, train_step: Callable, evaluate: Callable, eval_every: int,
                      data: train_state.DeviceData) -> Callable:
        """``run_steps(state, step, num_steps)`` as one call per step, dispatched from Python.

        ``evaluate`` is the eval step compiled by :meth:`compile_eval`. The calls run
        asynchronously: the host only waits when the metrics are read, once per ``run_steps``.
        Returns the metrics of each step stacked, as :meth:`compile_chunk`'s.
        """
        train = self.compile(train_step, donate_argnums=(0,))
        missing = self.constant(steps_lib.Evaluation.missing)

        def run_steps(state, step: int, num_steps: int):
            metrics = []
            for s in range(step, step + num_steps):
                evaluation = evaluate(state, data) if s % eval_every == 0 else missing
                state, step_metrics = train(state, data, evaluation)
                metrics.append(step_metrics)
            return state, self.stack_steps(metrics)

        return run_steps

    def on_devices(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``fn`` applied to a placed pytree where it lies, the result placed alike."""
        return self.compile(fn)


@dataclasses.dataclass(frozen=True)
class JitMesh(Placement):
    """The steps jitted over a ``Mesh``: the state replicated, the evaluation sets sharded, the
    batch sharded inside the step; XLA inserts the communication.

    Example:
      >>> from resetax.experiment.placement import JitMesh
      >>> placement = JitMesh(tuple(jax.devices()[:2]))
      >>> placement.place_state(jnp.zeros(4)).sharding.is_fully_replicated
      True
    """

    @property
    def replicas(self) -> steps_lib.Replicas:
        return steps_lib.NO_REPLICAS

    @property
    def batch_sharding(self) -> NamedSharding:
        return self.sharded

    def compile(self, fn: Callable, *, static_argnums: tuple[int, ...] = (),
                donate_argnums: tuple[int, ...] = ()) -> Callable:
        return jax.jit(fn, static_argnums=static_argnums, donate_argnums=donate_argnums,
                       out_shardings=self.replicated)

    def place_state(self, host_state: Any) -> Any:
        return jax.device_put(host_state, self.replicated)

    def fetch(self, tree: Any) -> Any:
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def place_data(self, data: ExperimentData) -> train_state.DeviceData:
        train = (data.train.inputs, data.train.labels.astype(np.int32))
        return train_state.DeviceData(
            *jax.device_put(train, self.replicated),
            *jax.device_put(self.padded(data.val), self.sharded),
            *jax.device_put(self.padded(data.test), self.sharded))

    def constant(self, make: Callable[[], Any]) -> Any:
        return self.compile(make)()

    def stack_steps(self, metrics: list[Any]) -> Any:
        return _stack(metrics)  # one transfer per metric, not per metric and step


@dataclasses.dataclass(frozen=True)
class Pmap(Placement):
    """The steps under ``jax.pmap``: a copy of the state per device, stacked along a leading
    axis; the steps average gradients and metrics across replicas explicitly.

    Example:
      >>> import numpy as np
      >>> from resetax.experiment.placement import Pmap
      >>> placement = Pmap(tuple(jax.devices()[:2]))
      >>> placement.place_state({"w": np.ones(3)})["w"].shape  # a copy per device
      (2, 3)
    """

    @property
    def replicas(self) -> steps_lib.Replicas:
        return steps_lib.Replicas(AXIS)

    def compile(self, fn: Callable, *, static_argnums: tuple[int, ...] = (),
                donate_argnums: tuple[int, ...] = ()) -> Callable:
        return jax.pmap(fn, axis_name=AXIS, static_broadcasted_argnums=static_argnums,
                        donate_argnums=donate_argnums, devices=self.devices)

    def place_state(self, host_state: Any) -> Any:
        n = len(self.devices)
        stacked = jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))), host_state)
        return jax.device_put(stacked, self.sharded)

    def fetch(self, tree: Any) -> Any:
        # The first local replica's (the replicas are equal), copied from the device that holds
        # it: indexing the stacked array instead would run a program over all the devices for
        # each leaf, every time.
        first = jax.tree.map(
            lambda x: x.addressable_shards[0].data if isinstance(x, jax.Array) else x[0], tree)
        return jax.tree.map(lambda x, whole: np.asarray(x).reshape(np.shape(whole)[1:]),
                            jax.device_get(first), tree)

    def place_data(self, data: ExperimentData) -> train_state.DeviceData:
        n = len(self.devices)
        train = (data.train.inputs, data.train.labels.astype(np.int32))
        stack = lambda a: np.broadcast_to(a, (n, *a.shape))  # noqa: E731
        split = lambda a: a.reshape(n, -1, *a.shape[1:])  # noqa: E731
        return jax.device_put(train_state.DeviceData(
            *map(stack, train), *map(split, self.padded(data.val)),
            *map(split, self.padded(data.test))), self.sharded)

    def constant(self, make: Callable[[], Any]) -> Any:
        return self.place_state(jax.tree.map(np.asarray, make()))

    def stack_steps(self, metrics: list[Any]) -> Any:
        # Stacked after the device axis, as pmap's chunk has it.
        return jax.tree.map(lambda *m: np.stack(m, 1), *jax.device_get(metrics))


_stack = jax.jit(lambda metrics: jax.tree.map(lambda *m: jnp.stack(m), *metrics))


def placement_for(config: Config) -> Placement:
    """The placement of a run of ``config``: its :func:`devices`, its ``parallel`` strategy.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.placement import placement_for
      >>> placement = placement_for(get_config("quick", num_devices=2, parallel="pmap"))
      >>> type(placement).__name__, len(placement.devices)
      ('Pmap', 2)
    """
    strategy = Pmap if config.parallel == "pmap" else JitMesh
    return strategy(tuple(devices(config)))


def devices(config: Config) -> list:
    """The devices a run of ``config`` trains on: its ``num_devices`` first local devices (all
    of them when ``None``), or every device of every process in a multi-process run.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.placement import devices
      >>> len(devices(get_config("quick", num_devices=2)))
      2
      >>> len(devices(get_config("quick"))) == len(jax.local_devices())
      True
    """
    if jax.process_count() > 1:  # every device of every process
        found = jax.devices()
        if config.num_devices not in (None, len(found)):
            raise ValueError(
                f"num_devices ({config.num_devices}) must be None in a multi-process run, "
                f"which uses all {len(found)} devices of its {jax.process_count()} processes.")
        return found
    found = jax.local_devices()
    if config.num_devices is not None:
        if config.num_devices > len(found):
            raise ValueError(
                f"num_devices ({config.num_devices}) exceeds the {len(found)} local devices.")
        found = found[: config.num_devices]
    return found


def check_devices(config: Config) -> None:
    """Checks that the devices can run the config: the batch must split evenly over them.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.placement import check_devices
      >>> check_devices(get_config("quick", num_devices=1))  # fine: returns None
      >>> check_devices(get_config("quick", batch_size=33, num_devices=2))
      Traceback (most recent call last):
      ...
      ValueError: batch_size (33) must be divisible by the number of devices (2).
    """
    if jax.process_count() > 1 and config.parallel == "pmap":
        raise ValueError("parallel='pmap' runs on one host; multi-process runs need the "
                         "default parallel='sharded'.")
    num_devices = len(devices(config))
    if config.batch_size % num_devices:
        raise ValueError(
            f"batch_size ({config.batch_size}) must be divisible by the number of devices "
            f"({num_devices}).")
