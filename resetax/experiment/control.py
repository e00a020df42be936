"""Run control: stop requests (signals), compile timing and the progress display of a run."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from resetax.experiment import distributed


class CompileTimer:
    """Adds up the time JAX spends tracing, lowering and compiling while it is entered.

    Example:
      >>> import jax.numpy as jnp
      >>> from resetax.experiment.control import CompileTimer
      >>> with CompileTimer() as timer:
      ...     _ = jax.jit(lambda x: x * 3.0 + 1.0)(jnp.ones(3))  # a new function: compiled
      >>> timer.seconds > 0
      True
    """

    EVENTS = "/jax/core/compile/"

    def __init__(self):
        self.seconds = 0.0
        self._thread = threading.get_ident()  # JAX compiles on the thread that calls

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        # Only this thread's compilations: a group's runs side by side each time their own.
        if event.startswith(self.EVENTS) and threading.get_ident() == self._thread:
            self.seconds += duration

    def __enter__(self) -> CompileTimer:
        self._thread = threading.get_ident()
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc_info) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)


class StopRequest:
    """Turns a SIGTERM (preemption, ``kill``, a scheduler's time limit) or a Ctrl-C (SIGINT) into
    a clean stop.

    The run goes on to the end of its evaluation window, saves a checkpoint there and returns, so
    ``--resume`` loses nothing. A second signal ends the process at once (the run then resumes
    from its last periodic checkpoint). Outside the main thread no handler can be installed and
    the signals keep their default actions. Under the command line's handlers
    (:func:`handle_signals`) it installs none of its own: those pass it the signal.

    Example:
      >>> import signal
      >>> from resetax.experiment.control import StopRequest
      >>> with StopRequest() as stop:
      ...     signal.raise_signal(signal.SIGTERM)  # handled: the run would stop at its window end
      ...     stop.requested, stop.agreed(), stop.signal_name
      (True, True, 'SIGTERM')
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.stopping = False  # asked by the program (a failed run of a group), not a signal
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.stopping

    def request(self) -> None:
        """Stops the runs watching this request at their window ends, as a signal would."""
        self.stopping = True

    @property
    def signal_name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def __enter__(self) -> StopRequest:
        if _SIGNALS.installed:  # the command's handlers (handle_signals) pass the signal on
            _SIGNALS.watch(self)
        elif threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        _SIGNALS.unwatch(self)
        for signum, previous in self._previous.items():
            signal.signal(signum, _handler_or_default(previous))
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: its default action, now
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.signum = signum

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a collective in a multi-process run)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
        return bool(np.max(flags))


def _handler_or_default(handler):
    return signal.SIG_DFL if handler is None else handler


class _Signals:
    """SIGINT and SIGTERM for a whole command, from its start to its last write (see
    :func:`handle_signals`)."""

    def __init__(self):
        self.installed = False
        self.signum: int | None = None
        self._stops: list[StopRequest] = []
        self._cleanups: dict[int, Callable[[], None]] = {}
        self._writing = 0  # critical sections in progress (see critical())
        self._condition = threading.Condition()
        self._message: Callable[[str, bool], str] = lambda name, second: ""

    def watch(self, stop: StopRequest) -> None:
        with self._condition:
            self._stops.append(stop)

    def unwatch(self, stop: StopRequest) -> None:
        with self._condition:
            if stop in self._stops:
                self._stops.remove(stop)

    def received(self, signum: int) -> None:
        """The watcher's reaction to a signal: stop the running loops at their window ends, or,
        with none running (importing, loading, building, compiling, writing the results) or at
        a second signal, end the process now."""
        with self._condition:
            second = self.signum is not None
            self.signum = self.signum or signum
            stops = list(self._stops)
        if stops and not second:
            for stop in stops:
                stop._handle(signum, None)
            return
        self.end(signum, second)

    def end(self, signum: int, second: bool) -> None:
        """Ends the process as the signal would (status 128 + its number) once no critical write
        is in progress: the files it leaves are those of a run killed between two writes, which
        ``--resume`` continues. No Python or XLA code unwinds (which crashed JAX mid-compile)."""
        with self._condition:
            if not second:
                self._condition.wait_for(lambda: self._writing == 0)
            for cleanup in list(self._cleanups.values()):
                with contextlib.suppress(Exception):
                    cleanup()
            with contextlib.suppress(Exception):
                line = self._message(signal.Signals(signum).name, second)
                if line:
                    os.write(2, (line + "\n").encode())
            os._exit(128 + signum)


_SIGNALS = _Signals()


@contextlib.contextmanager
def handle_signals(message: Callable[[str, bool], str]) -> Iterator[None]:
    """SIGINT (Ctrl-C) and SIGTERM for a command, while it is entered: a signal never raises
    ``KeyboardInterrupt`` inside Python, JAX or XLA code.

    A thread receives the signals (``signal.set_wakeup_fd``), even while the main thread is
    inside a long compilation. A running training loop (:class:`StopRequest`) stops at its
    evaluation window's end, after a checkpoint. With no loop running (importing, loading the
    data, building, writing the results), or at a second signal, the process ends at once with
    status 128 + the signal's number, after the write in progress (:func:`critical`), the
    registered cleanups (:func:`on_exit`) and the line ``message(signal name, second)`` on stderr
    (nothing if empty). Outside the main thread it does nothing.

    Example:
      >>> from resetax.experiment import control
      >>> with control.handle_signals(lambda name, second: f"stopped by {name}"):
      ...     with control.StopRequest() as stop:
      ...         pass
      >>> stop.requested
      False
    """
    if threading.current_thread() is not threading.main_thread() or _SIGNALS.installed:
        yield
        return
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    previous = {s: signal.signal(s, _ignore) for s in StopRequest.SIGNALS}
    previous_fd = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    _SIGNALS.__init__()
    _SIGNALS.installed, _SIGNALS._message = True, message
    _SIGNALS_ENTERED.set()
    watcher = threading.Thread(target=_watch, args=(receiver,), name="resetax-signals",
                               daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for signum, handler in previous.items():
            signal.signal(signum, _handler_or_default(handler))
        _SIGNALS.installed = False
        sender.close()  # the watcher's recv returns b"": it ends
        watcher.join()
        receiver.close()


def signals_were_handled() -> bool:
    """Whether :func:`handle_signals` has been entered in this process (it may have exited
    since): a signal the ``resetax`` command's own handler receives came before its work began,
    or after it ended.

    Example:
      >>> from resetax.experiment import control
      >>> with control.handle_signals(lambda name, second: ""):
      ...     pass
      >>> control.signals_were_handled()
      True
    """
    return _SIGNALS_ENTERED.is_set()


_SIGNALS_ENTERED = threading.Event()


def _ignore(signum, frame) -> None:
    """The Python-level handler: the watcher thread acts on the signal (see handle_signals)."""


def _watch(receiver: socket.socket) -> None:
    while True:
        try:
            data = receiver.recv(16)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum in StopRequest.SIGNALS:
                _SIGNALS.received(signum)


def received_signal() -> int | None:
    """The first signal :func:`handle_signals` received (None if none, or outside it).

    Example:
      >>> from resetax.experiment import control
      >>> print(control.received_signal())
      None
    """
    return _SIGNALS.signum if _SIGNALS.installed else None


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A write that a signal does not cut short: ending the process at a signal waits for it.

    Example:
      >>> from resetax.experiment import control
      >>> with control.critical():
      ...     pass  # e.g. emptying a run directory and writing its config.json
    """
    with _SIGNALS._condition:
        _SIGNALS._writing += 1
    try:
        yield
    finally:
        with _SIGNALS._condition:
            _SIGNALS._writing -= 1
            _SIGNALS._condition.notify_all()


def on_exit(key: int, cleanup: Callable[[], None] | None) -> None:
    """Registers ``cleanup`` (under ``key``; None removes it) to run when a signal ends the
    process at once (see :func:`handle_signals`), e.g. removing a run's lock file.

    Example:
      >>> from resetax.experiment import control
      >>> control.on_exit(1, lambda: None)
      >>> control.on_exit(1, None)
    """
    with _SIGNALS._condition:
        if cleanup is None:
            _SIGNALS._cleanups.pop(key, None)
        else:
            _SIGNALS._cleanups[key] = cleanup


class Progress(NamedTuple):
    """How a run shows its progress bar: its name and its line (a group's runs side by side).

    Attributes:
      label: The run's name, before the bar; None for none.
      position: The bar's line; None for the next free one.
    """

    label: str | None = None
    position: int | None = None


class ProgressBar:
    """A tqdm bar over steps, with the last window's losses and the resets; shown on process 0
    only, and not at all when ``progress`` is None.

    Example:
      >>> from resetax.experiment.control import ProgressBar
      >>> with ProgressBar(total=20, initial=0, progress=None) as bar:  # hidden
      ...     bar.show(per_step=[{"step": 0}, {"step": 1}], window_lines=[])
    """

    def __init__(self, total: int, initial: int, progress: Progress | None):
        from tqdm.auto import tqdm

        self._shown = progress is not None and distributed.is_primary()
        progress = progress or Progress()
        self._file = sys.stderr
        self._bar = tqdm(total=total, initial=initial, disable=not self._shown, unit="step",
                         dynamic_ncols=True, desc=progress.label, position=progress.position,
                         file=self._file)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        """Clears the bar and writes its last state as a line of its own, above the bars still
        running, with the cursor on the line after it.

        (tqdm's ``leave=True`` writes the last state at the cursor's line and moves one line
        down, which with bars on several lines, one closing while another still updates below
        it, leaves the cursor on a stale copy of the other bar: the next output, the results
        table, was written over it.)
        """
        if not self._shown:
            self._bar.close()
            return
        last = str(self._bar)
        self._bar.leave = False
        self._bar.close()
        self._bar.write("\r" + last, file=self._file)  # from the line's start

    def show(self, per_step: list[dict[str, Any]], window_lines: list[dict[str, Any]]) -> None:
        """Advances by the steps done; shows the last closed window's losses and resets."""
        if window_lines:
            last = window_lines[-1]
            self._bar.set_postfix(loss=f"{last['train_loss']:.3f}", val=f"{last['val_loss']:.3f}",
                                  resets=last["num_resets"], refresh=False)
        self._bar.update(len(per_step))
