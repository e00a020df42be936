"""Prints the README's diffs: what each example changes to add stochastic resetting.

    python examples/diffs.py

Each idiom is a pair of complete scripts, ``<idiom>_baseline.py`` and ``<idiom>_resetting.py``;
``tests/test_examples.py`` checks that the README holds exactly what this prints.
"""

import difflib
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parent
IDIOMS = {
    "optax": "Plain JAX + Optax",
    "linen": "Flax linen (`TrainState`, BatchNorm; Flax's MNIST example)",
    "nnx": "Flax NNX (`nnx.Optimizer`, BatchNorm; Flax's NNX MNIST tutorial)",
}


def changed_lines(idiom: str) -> tuple[int, int]:
    """Non-blank lines added and removed from ``<idiom>_baseline.py`` to its resetting twin."""
    plus = minus = 0
    for line in _diff(idiom):
        if line.startswith(("+++", "---")) or not line[1:].strip():
            continue
        plus += line.startswith("+")
        minus += line.startswith("-")
    return plus, minus


def markdown() -> str:
    """The diffs of every idiom, as the README's Markdown."""
    blocks = []
    for idiom, title in IDIOMS.items():
        plus, minus = changed_lines(idiom)
        blocks.append(f"#### {title}: {plus} lines added, {minus} removed\n\n"
                      f"```diff\n{''.join(_diff(idiom))}```\n")
    return "\n".join(blocks)


def _diff(idiom):
    before, after = (EXAMPLES / f"{idiom}_{kind}.py" for kind in ("baseline", "resetting"))
    return list(difflib.unified_diff(
        before.read_text().splitlines(keepends=True), after.read_text().splitlines(keepends=True),
        f"examples/{before.name}", f"examples/{after.name}", n=1))


if __name__ == "__main__":
    print(markdown(), end="")
