"""Pytree helpers shared by the package: names of key paths and the masked-leaf test."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optax


def key_name(entry: Any) -> str:
    """The name of one key-path entry: a dict key, an attribute name or a sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_name(path: Sequence[Any]) -> str:
    """A key path as ``"a/b/c"``, e.g. ``Dense_0/kernel`` for a Flax parameter."""
    return "/".join(key_name(entry) for entry in path)


def is_masked(x: Any) -> bool:
    """Whether ``x`` stands for a leaf that a mask left out (``optax.MaskedNode``)."""
    return isinstance(x, optax.MaskedNode)
