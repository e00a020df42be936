"""Fixtures shared by the trainer's test modules (helpers are in ``runs.py``)."""

import pytest
from runs import tiny, without_times

from resetax.experiment import runner


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    """An uninterrupted 600-step run, for the interruptions of a CLI subprocess."""
    run_dir = tmp_path_factory.mktemp("long") / "run"
    summary = runner.train(tiny(num_steps=600), run_dir, progress=False).summary
    return run_dir, without_times(summary)
