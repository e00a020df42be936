"""The examples: each script runs end to end, and the README shows exactly their diffs."""

import contextlib
import importlib.util
import io
import pathlib
import runpy
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The fewest steps that still take every path of the loop: measured and unmeasured values, the
# printed progress, the final evaluation.
TINY_ARGS = {"optax": ["--num-steps", "21"], "linen": ["--num-epochs", "1"],
             "nnx": ["--num-steps", "21"]}


def _diffs():
    spec = importlib.util.spec_from_file_location("diffs", EXAMPLES / "diffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["baseline", "resetting"])
@pytest.mark.parametrize("idiom", list(TINY_ARGS))
def test_example_runs_as_a_script(idiom, kind, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as `python examples/<script>.py` has it
    script = EXAMPLES / f"{idiom}_{kind}.py"
    monkeypatch.setattr(sys, "argv", [str(script), *TINY_ARGS[idiom], "--seed", "1"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(script), run_name="__main__")
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("test_accuracy: ")
    assert 0.0 <= float(last.split()[-1]) <= 100.0


def test_data_parallel_example_runs_on_the_simulated_devices(monkeypatch):
    import jax

    assert jax.device_count() == 8, "conftest.py simulates 8 CPU devices"
    monkeypatch.syspath_prepend(str(EXAMPLES))
    script = EXAMPLES / "data_parallel.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--num-steps", "21"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(script), run_name="__main__")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("devices: 8") and lines[-1].startswith("test_accuracy: ")


def test_readme_shows_each_examples_diff():
    diffs = _diffs()
    readme = (ROOT / "README.md").read_text()
    assert diffs.markdown() in readme, "run `python examples/diffs.py` and paste it in the README"
    assert set(diffs.IDIOMS) == set(TINY_ARGS)


def test_changed_lines_count_the_diff(tmp_path, monkeypatch):
    diffs = _diffs()
    (tmp_path / "toy_baseline.py").write_text("a = 1\n\nb = 2\nc = 3\n")
    (tmp_path / "toy_resetting.py").write_text("a = 1\n\nb = 20\nc = 3\nd = 4\n\n")
    monkeypatch.setattr(diffs, "EXAMPLES", tmp_path)
    assert diffs.changed_lines("toy") == (2, 1)  # b changed, d added; blank lines do not count
