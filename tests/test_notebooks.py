"""The notebooks: stored with outputs of their code, and executed end to end on tiny settings.

The executions start a kernel each and take 8-30 s per notebook: they are end-to-end tests and
run with the slow ones (``pytest -m slow``, which ``.ci/run`` runs after the default suite).
"""

import importlib.util
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
MAX_BYTES = 1_000_000  # stored figures are PNGs at screen resolution; keep the repository small


def _execute_script():
    spec = importlib.util.spec_from_file_location("execute", ROOT / "notebooks" / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_all_notebooks_are_covered():
    assert set(NOTEBOOKS) >= {"nnx.ipynb", "noisy_labels.ipynb", "quickstart.ipynb",
                              "theory.ipynb"}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch, tmp_path):
    monkeypatch.setenv("RESETAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # rendering figures would only cost time here
    # The kernel must import this checkout's resetax (else the install cell would stop); one CPU
    # device is enough for it.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("XLA_FLAGS", "")
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    # jupyter_client runs the "python3" kernelspec's `python` as this interpreter. The timeout
    # only guards against a hung kernel; how fast a notebook runs is not checked here.
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # no files of the repository at hand
    )
    client.execute()  # raises CellExecutionError at the first cell that fails


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_outputs_come_from_the_current_code(name):
    path = ROOT / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    stored = nb.metadata.get("resetax", {})
    assert stored.get("code_sha256") == _execute_script().code_hash(nb), (
        f"{name}: its code changed since its outputs were stored; "
        f"run `python notebooks/execute.py {name}` and commit the result")
    assert stored.get("small") is False, f"{name}: outputs must come from the full settings"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), f"{name}: unexecuted cells"
    outputs = [out for cell in code for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{name}: no figure"
    assert any(out.output_type == "stream" for out in outputs), f"{name}: no printed results"
    assert path.stat().st_size < MAX_BYTES


def test_code_hash_follows_code_cells_only():
    code_hash = _execute_script().code_hash
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# title"), nbformat.v4.new_code_cell("x = 1")])
    before = code_hash(nb)
    nb.cells[0].source = "# another title"
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    assert code_hash(nb) == before
    nb.cells[1].source = "x = 2"
    assert code_hash(nb) != before
    nb.cells[1].source = "x = 1"
    nb.cells.append(nbformat.v4.new_code_cell(""))
    assert code_hash(nb) != before
