"""Test accuracy of the README's examples, without and with stochastic resetting, over seeds.

    python benchmarks/examples_accuracy.py --seeds 3

Each of examples/{optax,linen,nnx}_{baseline,resetting}.py trains with its default settings
(scikit-learn's digits, 40% symmetric label noise on the training and validation labels, clean
test labels) and reports the clean test accuracy of its final parameters. Prints one Markdown row
per idiom: the mean ± standard error over the seeds without and with resetting, and of the paired
difference.
"""

import argparse
import contextlib
import importlib
import io
import pathlib
import sys

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def test_accuracy(idiom: str, kind: str, seed: int) -> float:
    """Trains one example with its defaults; returns its final test accuracy in percent."""
    module = importlib.import_module(f"{idiom}_{kind}")
    with contextlib.redirect_stdout(io.StringIO()):
        if idiom == "linen":
            return 100 * module.train_and_evaluate(60, seed=seed)[1]
        return 100 * module.main(2000, seed=seed)


def _mean_sem(values):
    values = np.asarray(values)
    return f"{values.mean():.1f} ± {values.std(ddof=1) / np.sqrt(len(values)):.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(EXAMPLES))
    print("| idiom | without resetting | with resetting | difference |")
    print("|---|---|---|---|")
    for idiom in ("optax", "linen", "nnx"):
        runs = {kind: [test_accuracy(idiom, kind, seed) for seed in range(args.seeds)]
                for kind in ("baseline", "resetting")}
        difference = np.subtract(runs["resetting"], runs["baseline"])
        print(f"| {idiom} | {_mean_sem(runs['baseline'])} | {_mean_sem(runs['resetting'])} | "
              f"{_mean_sem(difference)} |", flush=True)


if __name__ == "__main__":
    main()
