"""The one reader of every file resetax reads back: a run's ``config.json``, ``metrics.jsonl``,
``summary.json``, ``plan.json`` and ``tracking.json``, and the dataset caches.

A file that is missing, empty, unparsable, of the wrong JSON type, or with unknown or missing
keys raises :class:`DamagedFile`, whose one-line message names the file, what is wrong with it
and what to do. Nothing here imports JAX: the data sources use it too.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

_DESCRIPTIONS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                 list: "a list", dict: "an object", type(None): "null"}


class DamagedFile(ValueError):
    """A file resetax reads back is missing, empty, unparsable or not what resetax wrote there.

    Its message is one line: the file's path, what is wrong, and what to do.

    Example:
      >>> from resetax._files import DamagedFile, damaged
      >>> error = damaged("run/config.json", "is empty", "restore it")
      >>> isinstance(error, DamagedFile), str(error)
      (True, "'run/config.json' is empty; restore it.")
    """


def damaged(path: str | os.PathLike, problem: str, fix: str) -> DamagedFile:
    """The :class:`DamagedFile` error for ``path``: ``'<path>' <problem>; <fix>.``"""
    return DamagedFile(f"{str(path)!r} {problem}; {fix}.")


def read_text(path: str | os.PathLike, *, fix: str) -> str:
    """The text of ``path``; :class:`DamagedFile` if it is missing or unreadable.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax._files import read_text
      >>> read_text(Path(tempfile.mkdtemp()) / "plan.json", fix="start again")
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: '...plan.json' is missing; start again.
    """
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise damaged(path, "is missing", fix) from None
    except UnicodeDecodeError:
        raise damaged(path, "is not text (undecodable bytes)", fix) from None
    except OSError as err:
        raise damaged(path, f"cannot be read ({err.strerror or err})", fix) from None


def read_json(path: str | os.PathLike, *, fix: str, known: Collection[str] | None = None,
              required: Collection[str] = (), types: Mapping[str, tuple[type, ...]] | None = None
              ) -> dict[str, Any]:
    """Reads a JSON object from ``path`` and checks its keys (see :func:`check_object`).

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax._files import read_json
      >>> path = Path(tempfile.mkdtemp()) / "summary.json"
      >>> _ = path.write_text('{"test_acc": 0.5}')
      >>> read_json(path, fix="restore it", required=["test_acc"], types={"test_acc": (float,)})
      {'test_acc': 0.5}
      >>> _ = path.write_text("")
      >>> read_json(path, fix="restore it")
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: '...summary.json' is empty; restore it.
      >>> _ = path.write_text('[1, 2]')
      >>> read_json(path, fix="restore it")
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: '...summary.json' holds a list, not a JSON object; restore it.
    """
    text = read_text(path, fix=fix)
    if not text.strip():
        raise damaged(path, "is empty", fix)
    problem, obj = _parse(text)
    if problem:
        raise damaged(path, problem, fix)
    return check_object(path, obj, fix=fix, known=known, required=required, types=types)


def check_object(path: str | os.PathLike, obj: Any, *, fix: str,
                 known: Collection[str] | None = None, required: Collection[str] = (),
                 types: Mapping[str, tuple[type, ...]] | None = None, where: str = ""
                 ) -> dict[str, Any]:
    """``obj``, read from ``path`` (at ``where``, e.g. ``"line 3 "``), if it is a JSON object
    with every ``required`` key, no key outside ``known`` (when given), and each key of
    ``types`` of one of its types (an int is a float; a bool is neither); else
    :class:`DamagedFile`.

    Example:
      >>> from resetax._files import check_object
      >>> check_object("metrics.jsonl", {"step": "3"}, fix="restore it", where="line 2 ",
      ...              types={"step": (int,)})
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: 'metrics.jsonl' line 2 holds "step": "3", not an integer; ...
      >>> check_object("config.json", {"seed": 0, "colour": 1}, fix="remove it",
      ...              known=["seed"])
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: 'config.json' has an unknown key, "colour"; remove it.
    """
    problem = _object_problem(obj, known=known, required=required, types=types or {})
    if problem:
        raise damaged(path, where + problem, fix)
    return obj


def json_lines(path: str | os.PathLike, *, fix: str, required: Collection[str] = (),
               types: Mapping[str, tuple[type, ...]] | None = None
               ) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """The lines of a JSON-lines file as ``(line number, object)``, or ``(line number,
    problem)`` for a line that is not a JSON object of the required keys and types (blank lines
    skipped; no file, no lines).

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax._files import json_lines
      >>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
      >>> _ = path.write_text('{"step": 0}\\n[3]\\n{"step": 20, "val_')
      >>> for number, row in json_lines(path, fix="restore it", required=["step"]):
      ...     print(number, row)
      1 {'step': 0}
      2 holds a list, not a JSON object
      3 is not valid JSON (Unterminated string starting at column 14)
    """
    if not Path(path).exists():
        return
    for number, line in enumerate(read_text(path, fix=fix).splitlines(), start=1):
        if not line.strip():
            continue
        problem, obj = _parse(line, lines=False)
        problem = problem or _object_problem(obj, known=None, required=required,
                                             types=types or {})
        yield number, problem or obj


def read_npz(path: str | os.PathLike, keys: Collection[str], *, fix: str) -> dict[str, Any]:
    """The arrays ``keys`` of a NumPy ``.npz`` file (no pickled objects); :class:`DamagedFile`
    if it is missing, cut short, not an ``.npz`` file or lacks one of them.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> import numpy as np
      >>> from resetax._files import read_npz
      >>> path = Path(tempfile.mkdtemp()) / "cache.npz"
      >>> np.savez(path, x=np.arange(3))
      >>> read_npz(path, ["x"], fix="generating it again")["x"]
      array([0, 1, 2])
      >>> _ = path.write_bytes(path.read_bytes()[:100])
      >>> read_npz(path, ["x"], fix="generating it again")
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: '...cache.npz' is unreadable (File is not a zip file); ...
    """
    import numpy as np

    if not Path(path).exists():
        raise damaged(path, "is missing", fix)
    try:
        with np.load(path, allow_pickle=False) as stored:
            missing = [key for key in keys if key not in stored.files]
            if missing:
                raise damaged(path, f"lacks the arrays {', '.join(missing)}", fix)
            return {key: stored[key] for key in keys}
    except DamagedFile:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = ("not a NumPy file" if isinstance(err, ValueError) and "pickle" in str(err)
                  else _first_line(err) or type(err).__name__)
        raise damaged(path, f"is unreadable ({reason})", fix) from None


def warn(message: str) -> None:
    """Prints a one-line warning on stderr: ``resetax: <message>``."""
    print(f"resetax: {message}", file=sys.stderr, flush=True)


def _parse(text: str, lines: bool = True) -> tuple[str, Any]:
    """``("", object)``, or ``(problem, None)`` if ``text`` is not valid JSON."""
    try:
        return "", json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}" if lines else f"column {err.colno}"
        return f"is not valid JSON ({err.msg.removesuffix(' at')} at {where})", None
    except ValueError as err:  # a number too long to convert, say
        return f"is not valid JSON ({_first_line(err)})", None


def _object_problem(obj: Any, *, known: Collection[str] | None, required: Collection[str],
                    types: Mapping[str, tuple[type, ...]]) -> str:
    if not isinstance(obj, dict):
        return f"holds {_describe(type(obj))}, not a JSON object"
    missing = [key for key in required if key not in obj]
    if missing:
        return f"lacks {_keys(missing)}"
    unknown = sorted(set(obj) - set(known)) if known is not None else []
    if unknown:
        return f"has {'an unknown key' if len(unknown) == 1 else 'unknown keys'}, {_keys(unknown)}"
    for key, accepted in types.items():
        if key in obj and not _is(obj[key], accepted):
            shown = json.dumps(obj[key])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return (f"holds {json.dumps(key)}: {shown}, not "
                    f"{' or '.join(_describe(t) for t in accepted)}")
    return ""


def _is(value: Any, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in accepted
    if isinstance(value, int) and float in accepted:
        return True
    return isinstance(value, accepted)


def _describe(kind: type) -> str:
    return _DESCRIPTIONS.get(kind, f"a {kind.__name__}")


def _keys(keys: Collection[str]) -> str:
    return ", ".join(json.dumps(key) for key in keys)


def _first_line(err: BaseException) -> str:
    return next(iter(str(err).strip().splitlines()), "")
