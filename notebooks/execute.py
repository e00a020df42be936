"""Re-executes notebooks in full and stores their outputs, with a hash of the code that made them.

    python notebooks/execute.py                  # every notebook in this folder
    python notebooks/execute.py nnx.ipynb ...    # some of them

Each notebook runs top to bottom in a fresh ``python3`` kernel, on this checkout's ``resetax``,
one CPU device and the full settings (``RESETAX_NOTEBOOK_SMALL`` unset), in a temporary working
directory. Its outputs are stored in the ``.ipynb`` file together with the SHA-256 of its code
cells (``metadata.resetax.code_sha256``); ``tests/test_notebooks.py`` fails when the code no
longer matches, so that stored outputs never outlive the code that produced them. Run it again
after editing a notebook's code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time

import nbclient
import nbformat

NOTEBOOKS = pathlib.Path(__file__).resolve().parent
ROOT = NOTEBOOKS.parent
CELL_TIMEOUT_S = 3600  # a guard against a hung kernel, far above any cell's run time


def code_hash(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the notebook's code cells, in order; markdown and outputs do not count."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def execute(path: pathlib.Path) -> float:
    """Executes one notebook in full and writes it back with outputs and hash; returns seconds."""
    nb = nbformat.read(path, as_version=4)
    env = {
        # The kernel imports this checkout's resetax; one CPU device, as a reader's machine.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "XLA_FLAGS": "",
        "RESETAX_NOTEBOOK_SMALL": "0",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        with tempfile.TemporaryDirectory() as cwd:
            client = nbclient.NotebookClient(
                nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
                resources={"metadata": {"path": cwd}},
            )
            start = time.monotonic()
            client.execute()  # raises CellExecutionError at the first cell that fails
            seconds = time.monotonic() - start
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    nb.metadata["resetax"] = {"code_sha256": code_hash(nb), "small": False}
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    """Executes the notebooks named on the command line (default: all of them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook file names (default: all)")
    names = parser.parse_args(argv).notebooks or sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name in names:
        path = NOTEBOOKS / pathlib.Path(name).name
        if not path.is_file():
            sys.exit(f"no notebook {path}")
        seconds = execute(path)
        print(f"{name}: executed in {seconds:.0f} s, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
