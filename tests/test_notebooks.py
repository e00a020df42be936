"""Executes the notebooks end to end on tiny settings (RESETAX_NOTEBOOK_SMALL=1)."""

import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Notebook -> seconds it may take on the small settings.
BUDGETS = {"quickstart.ipynb": 60, "theory.ipynb": 60, "noisy_labels.ipynb": 60}


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_notebook_runs(name, monkeypatch, tmp_path):
    monkeypatch.setenv("RESETAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # rendering figures would only cost time here
    # The kernel must import this checkout's resetax (else the install cell would reach for the
    # network); one CPU device is enough for it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("XLA_FLAGS", "")
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    # jupyter_client runs the "python3" kernelspec's `python` as this interpreter.
    client = nbclient.NotebookClient(
        nb, timeout=BUDGETS[name], kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.monotonic()
    client.execute()  # raises CellExecutionError at the first cell that fails
    assert time.monotonic() - start < BUDGETS[name]
