"""The ``resetax`` command's entry point, outside the ``resetax`` package so that it runs before
JAX is imported.

Importing ``resetax`` loads JAX and Optax (seconds on a busy machine). A SIGINT (Ctrl-C) or
SIGTERM during those imports raised ``KeyboardInterrupt`` inside them: a traceback, or, inside
JAX's garbage-collection callback, a Ctrl-C printed as "ignored" and the run went on. Here the
signal ends the process at once, with one line and status 128 + its number: nothing is written
before the command's own handlers (``resetax.experiment.control.handle_signals``) take over, and
nothing is left to write once they hand back.
"""

import os
import signal
import typing

_when = "before anything was written"


def main() -> typing.NoReturn:
    """Runs ``resetax`` (:func:`resetax.experiment.cli.main`) with ``sys.argv`` and exits with
    its status."""
    global _when
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    from resetax.experiment import cli

    status = cli.main()
    _when = "after the command ended"
    cli.exit_quietly(status)


def _stop(signum, frame) -> None:
    os.write(2, f"resetax: stopped by {signal.Signals(signum).name} {_when}.\n".encode())
    os._exit(128 + signum)
