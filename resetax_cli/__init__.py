"""The ``resetax`` command's entry point, outside the ``resetax`` package so that it runs before
JAX is imported.

Importing ``resetax`` loads JAX and Optax (seconds on a busy machine). A SIGINT (Ctrl-C) or
SIGTERM during those imports raised ``KeyboardInterrupt`` inside them: a traceback, or, inside
JAX's garbage-collection callback, a Ctrl-C printed as "ignored" and the run went on. Here the
signal ends the process at once, with one line and status 128 + its number: nothing is written
before the command's own handlers (``resetax.experiment.control.handle_signals``) take over, and
nothing is left to write once they hand back.
"""

import atexit
import os
import signal
import sys
import typing


def main() -> typing.NoReturn:
    """Runs ``resetax`` (:func:`resetax.experiment.cli.main`) with ``sys.argv`` and exits with
    its status."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    from resetax.experiment import cli

    try:
        status = cli.main()
    except SystemExit as exit_:  # argparse's --help and usage errors
        status = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    _end(status)


def _end(status: int) -> typing.NoReturn:
    """Exits with ``status`` after the exit functions (JAX's, W&B's) and the flush of the
    output, without the interpreter's teardown.

    Python puts the default handlers back before the last steps of its teardown (freeing the
    modules, JAX's among them): a signal there killed the process with no line and status
    -signum (found by the slow signal fuzz). Here ``_stop`` handles a signal to the end.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (``resetax ... | head``), a closed stream
            pass
    os._exit(status)


def _stop(signum, frame) -> None:
    control = sys.modules.get("resetax.experiment.control")
    when = ("after the command ended" if control is not None and control.signals_were_handled()
            else "before anything was written")
    os.write(2, f"resetax: stopped by {signal.Signals(signum).name} {when}.\n".encode())
    os._exit(128 + signum)
