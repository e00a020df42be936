"""Writes the generated pages of the documentation before Sphinx reads the sources.

At ``config-inited``, before Sphinx lists the sources (autosummary then adds a page per name):

- ``generated/api/<module>.rst`` for every public module of resetax that defines ``__all__``,
  listing its ``__all__`` in an autosummary table. A new module (``resetax.linen``, say) appears
  without any change here; a module whose ``__all__`` only re-exports names of its package's
  ``__all__`` (``resetax.resetting``, ``resetax.theory.mfpt``) is documented under the package.
  ``generated/api_index.rst`` is the table of those modules with their docstrings' summaries.
- ``generated/cli.rst``: the ``resetax`` commands and their flags, read from the argparse parser,
  and every :class:`resetax.experiment.Config` field with its help text (``metadata["help"]``,
  the flag's help too), its default and each preset's value, read from the dataclass.
- ``generated/examples.rst``: the scripts of ``examples/``, included from the files: for each
  ``<idiom>_baseline.py``/``<idiom>_resetting.py`` pair, the diff (``generated/examples/``) and
  the resetting script.
- ``generated/notebooks/*.ipynb``: the notebooks of ``notebooks/``, rendered from their stored
  outputs (``nb_execution_mode = "off"``).

Everything is rewritten at every build (a file only when its content changed, so that an
incremental build rereads only what changed), so none of it can drift from the code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import importlib
import inspect
import pkgutil
import re
import shutil
import typing
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
GENERATED = DOCS / "generated"


def public_modules(package: str = "resetax") -> list[str]:
    """The modules whose ``__all__`` the API reference lists, the package itself first."""
    root = importlib.import_module(package)
    found = [package]
    _walk(root, found)
    return found


def _walk(package: Any, found: list[str]) -> None:
    parent_names = set(getattr(package, "__all__", ()))
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        name = f"{package.__name__}.{info.name}"
        module = importlib.import_module(name)
        names = getattr(module, "__all__", None)
        if names is not None and not set(names) <= parent_names:
            found.append(name)
        if info.ispkg:
            _walk(module, found)


def api_page(module_name: str) -> str:
    module = importlib.import_module(module_name)
    rows = "".join(f"   {name}\n" for name in module.__all__)
    return (
        f"{_title(module_name)}\n"
        f".. automodule:: {module_name}\n\n"
        f".. currentmodule:: {module_name}\n\n"
        f".. autosummary::\n   :toctree: _autosummary\n\n{rows}"
    )


def api_index(modules: list[str]) -> str:
    """The table of the API reference: each module and the first line of its docstring."""
    rows = []
    for name in modules:
        doc = inspect.getdoc(importlib.import_module(name)) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ")
        # A cross-reference relative to the module (:func:`get_model`) resolves from here too.
        summary = re.sub(r":(\w+):`(\w[\w.]*)`",
                         lambda m, name=name: m[0] if m[2].startswith("resetax")
                         else f":{m[1]}:`~{name}.{m[2]}`", summary)
        rows.append((f":mod:`{name}`", summary))
    return _table(("module", "what it holds"), rows, raw_columns=(0, 1))


def cli_page() -> str:
    from resetax.experiment import cli, config

    root = cli.parser()
    lines = [
        ".. This file is written by docs/_ext/resetax_docs.py from the argparse parser and the",
        "   Config dataclass at every build; edit those instead.\n",
    ]
    commands = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    field_dests = {f"cfg_{f.name}" for f in dataclasses.fields(config.Config)}
    flags: dict[str, list[str]] = {}
    for name, sub in commands.choices.items():
        lines.append(_title(f"resetax {name}", "-"))
        lines.append(_escape(sub.description or "") + "\n")
        positionals = [a for a in sub._actions if not a.option_strings]
        synopsis = " ".join([f"resetax {name}", *(a.dest.upper() for a in positionals),
                             "[OPTIONS]", "[--FIELD VALUE ...]"])
        lines.append(f"``{synopsis}``\n")
        formatter = sub._get_formatter()
        own = []
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if action.dest in field_dests:
                flags.setdefault(action.dest[4:], action.option_strings)
                continue
            invocation = ", ".join(action.option_strings) or action.dest
            if action.choices is not None:
                invocation += " {" + ",".join(map(str, action.choices)) + "}"
            elif action.nargs != 0:
                invocation += " " + (action.metavar or action.dest.upper())
            own.append((invocation, formatter._expand_help(action) if action.help else ""))
        lines.append(_table(("argument", "meaning"), own, literal_first=True))
        lines.append(
            f"Every :ref:`Config field <config-fields>` is a flag of ``resetax {name}`` too.\n")
    lines.append(".. _config-fields:\n")
    lines.append(_title("Config fields", "-"))
    lines.append(
        "Each field of :class:`resetax.experiment.Config` is a flag of every command: "
        "``--name VALUE`` with the field's dashes (``none`` for an empty optional field), and "
        "``--name``/``--no-name`` for the booleans. A preset (``--preset``) changes the "
        "defaults: the last column gives the values that differ from the dataclass default.\n")
    rows = []
    for field in dataclasses.fields(config.Config):
        if field.name not in flags:
            raise RuntimeError(f"Config field {field.name!r} has no flag in `resetax train`.")
        overrides = [
            f"{preset}: {cli._show(values[field.name])}"
            for preset, values in config.PRESETS.items()
            if field.name in values and values[field.name] != field.default
        ]
        flag = " ".join(f"``{o}``" for o in flags[field.name] if not o.startswith("--no-"))
        rows.append((field.name, flag, field.type, cli._show(field.default),
                     field.metadata["help"], "; ".join(overrides)))
    lines.append(_table(
        ("field", "flag", "type", "default", "meaning", "presets"), rows, literal_first=True,
        raw_columns=(1,)))
    lines.append(_title("Presets", "-"))
    lines.append(
        "``--preset NAME`` (:data:`resetax.experiment.PRESETS`, "
        ":func:`resetax.experiment.get_config`):\n")
    lines.append(_table(
        ("preset", "fields it sets"),
        [(name, ", ".join(f"{k}={cli._show(v)}" for k, v in values.items()))
         for name, values in config.PRESETS.items()],
        literal_first=True))
    return "\n".join(lines)


def example_pairs(examples: Path) -> list[str]:
    """The idioms with an ``<idiom>_baseline.py`` and ``<idiom>_resetting.py``, in the README's
    order (``examples/diffs.py``'s ``IDIOMS``) where it gives one."""
    pairs = sorted(p.name.removesuffix("_resetting.py") for p in examples.glob("*_resetting.py")
                   if (examples / p.name.replace("_resetting", "_baseline")).exists())
    order = list(_module_constant(examples / "diffs.py", "IDIOMS") or ())
    return sorted(pairs, key=lambda idiom: order.index(idiom) if idiom in order else len(order))


def example_diff(examples: Path, idiom: str) -> str:
    """The unified diff from ``<idiom>_baseline.py`` to ``<idiom>_resetting.py``."""
    before, after = (examples / f"{idiom}_{kind}.py" for kind in ("baseline", "resetting"))
    return "".join(difflib.unified_diff(
        before.read_text().splitlines(keepends=True), after.read_text().splitlines(keepends=True),
        f"examples/{before.name}", f"examples/{after.name}"))


def examples_page(examples: Path) -> str:
    """The examples of ``examples/``, shown from the files: for each pair the diff
    (``generated/examples/<idiom>.diff``) and the resetting script, then every other script."""
    lines = [_title("Examples"), (
        "Complete scripts from the repository's ``examples/`` folder, each run end to end by the "
        "test suite on tiny settings. Each idiom is a pair, a training script without stochastic "
        "resetting and the same script with it: the diff shows what adding resetting changes. "
        "Run them from the repository's root, e.g. ``python examples/optax_resetting.py``.\n")]
    shown = set()
    for idiom in example_pairs(examples):
        after, before = f"{idiom}_resetting.py", f"{idiom}_baseline.py"
        shown |= {after, before}
        lines += [_title(_docstring_summary(examples / after), "-"),
                  f"The diff from ``examples/{before}`` to ``examples/{after}``:\n",
                  f".. literalinclude:: examples/{idiom}.diff\n   :language: diff\n",
                  f"``examples/{after}`` in full:\n",
                  f".. literalinclude:: ../../examples/{after}\n   :language: python\n"]
    others = sorted(p.name for p in examples.glob("*.py") if p.name not in shown)
    if others:
        lines.append(_title("Other files", "-"))
    for name in others:
        lines += [f"``examples/{name}``: {_docstring_summary(examples / name)}.\n",
                  f".. literalinclude:: ../../examples/{name}\n   :language: python\n"]
    return "\n".join(lines)


def _docstring_summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or path.name
    return _escape(doc.split("\n\n")[0].replace("\n", " ").removesuffix("."))


def _module_constant(path: Path, name: str) -> Any:
    """The literal value assigned to ``name`` at the top of a module, read without running it."""
    if not path.exists():
        return None
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def _title(text: str, underline: str = "=") -> str:
    return f"{text}\n{underline * len(text)}\n"


def _escape(text: str) -> str:
    for char in "\\*`|_":
        text = text.replace(char, "\\" + char)
    return text


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]], literal_first: bool = False,
           raw_columns: tuple[int, ...] = ()) -> str:
    out = [".. list-table::", "   :header-rows: 1", ""]
    for i, row in enumerate([header, *rows]):
        for j, cell in enumerate(row):
            text = str(cell)
            if i and j == 0 and literal_first:
                text = f"``{text}``"
            elif not (i and j in raw_columns):
                text = _escape(text)
            out.append(f"   {'*' if j == 0 else ' '} - {text}" if text else
                       f"   {'*' if j == 0 else ' '} -")
    return "\n".join(out) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _copy(source: Path, target: Path) -> None:
    if not target.exists() or target.read_bytes() != source.read_bytes():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def generate(app: Any = None, config: Any = None, out: Path = GENERATED) -> None:
    """Writes every generated page under ``out``, removing the ones whose source is gone."""
    modules = public_modules()
    names = [f"{m}.{n}" for m in modules for n in importlib.import_module(m).__all__]
    if config is not None:
        # The API pages show a constant's value, unless it is too long to read (PRESETS).
        config.autosummary_context = {**config.autosummary_context, "long_values": [
            name for name in names if len(repr(_resolve(name))) > 300]}
    api = out / "api"
    _remove_others(api, "*.rst", modules)
    # autosummary writes a page per name but never removes one whose name is gone.
    _remove_others(api / "_autosummary", "*.rst", names)
    for name in modules:
        _write(api / f"{name}.rst", api_page(name))
    _write(out / "api_index.rst", api_index(modules))
    _write(out / "cli.rst", cli_page())
    examples = REPO / "examples"
    idioms = example_pairs(examples) if examples.is_dir() else []
    _remove_others(out / "examples", "*.diff", idioms)
    if idioms:
        _write(out / "examples.rst", examples_page(examples))
    for idiom in idioms:
        _write(out / "examples" / f"{idiom}.diff", example_diff(examples, idiom))
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    _remove_others(out / "notebooks", "*.ipynb", [n.stem for n in notebooks])
    for notebook in notebooks:
        _copy(notebook, out / "notebooks" / notebook.name)


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _remove_others(directory: Path, pattern: str, stems: list[str]) -> None:
    """Removes the files of ``directory`` matching ``pattern`` whose stem is not in ``stems``."""
    for path in directory.glob(pattern):
        if path.stem not in stems:
            path.unlink()


def external_or_private_reference(app: Any, domain: Any, node: Any) -> bool | None:
    """Silences a nitpicky warning for a target outside the documented API, and only then.

    The site builds offline, so the names of other packages (``jax.Array``, ``optax.Params``)
    cannot be linked; names in resetax's private modules (``resetax.experiment.runner``) have no
    page. A reference to any other name that does not resolve stays an error.
    """
    if domain is None or domain.name != "py":
        return None
    target = node["reftarget"]
    top = target.split(".")[0]
    if top != "resetax":
        return True if _importable(top) else None
    parts = target.split(".")
    for end in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:end])
        if _importable(module_name):
            if module_name not in _documented():
                return True
            obj = importlib.import_module(module_name)
            for attr in parts[end:]:
                obj = getattr(obj, attr, None)
            return True if isinstance(obj, typing.TypeVar) else None
    return None


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


@functools.cache
def _documented() -> frozenset[str]:
    return frozenset(public_modules())


_DATA_DOCSTRINGS: dict[str, list[str]] = {}


def keep_data_docstring(app: Any, what: str, name: str, obj: Any, options: Any,
                        lines: list[str]) -> None:
    """Undoes napoleon on a constant's docstring, which is prose: napoleon reads a first line
    with a colon as ``type: description``."""
    if what == "data" and name in _DATA_DOCSTRINGS:
        lines[:] = _DATA_DOCSTRINGS.pop(name)


def data_docstring(app: Any, what: str, name: str, obj: Any, options: Any,
                   lines: list[str]) -> None:
    """A constant re-exported by a package keeps the docstring written where it is defined.

    autodoc reads attribute docstrings from the source of the module it documents, so
    ``resetax.data.LABEL_VARIANTS`` would show ``dict``'s own docstring instead of the one under
    its assignment in ``resetax/data/sources.py``.
    """
    if what != "data":
        return
    module_name, _, attr = name.rpartition(".")
    if not lines or "\n".join(lines).strip() == inspect.cleandoc(type(obj).__doc__ or ""):
        lines.clear()
        _defining_docstring(module_name, attr, obj, lines)
    _DATA_DOCSTRINGS[name] = list(lines)


def _defining_docstring(module_name: str, attr: str, obj: Any, lines: list[str]) -> None:
    from sphinx.pycode import ModuleAnalyzer

    package = importlib.import_module(module_name)
    for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
        module = importlib.import_module(f"{module_name}.{info.name}")
        if getattr(module, attr, None) is obj:
            doc = ModuleAnalyzer.for_module(module.__name__).find_attr_docs().get(("", attr))
            if doc:
                lines.extend(doc)
                return


def init_signature(app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None,
                   return_annotation: str | None) -> tuple[str, str | None] | None:
    """A class whose metaclass defines ``__call__(*args, **kwargs)`` (an ``nnx.Module``, say)
    shows its ``__init__``'s signature instead."""
    if what != "class" or signature != "(*args, **kwargs)" or "__init__" not in vars(obj):
        return None
    from sphinx.util.inspect import stringify_signature

    init = inspect.signature(obj.__init__)
    init = init.replace(parameters=list(init.parameters.values())[1:])
    # The types are listed with the parameters (autodoc_typehints = "description").
    return stringify_signature(init, show_annotation=False, show_return_annotation=False), None


def setup(app: Any) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("autodoc-process-signature", init_signature)
    app.connect("warn-missing-reference", external_or_private_reference)
    # Around napoleon's handler (priority 500).
    app.connect("autodoc-process-docstring", data_docstring, priority=100)
    app.connect("autodoc-process-docstring", keep_data_docstring, priority=900)
    # At config-inited, before Sphinx lists the source files (autosummary, at builder-inited,
    # generates a page per name from the pages it finds then).
    app.connect("config-inited", generate)
    # An environment loaded from an earlier build lists the sources of that build; autosummary
    # must also see the pages just written (a new module's).
    app.connect("builder-inited", lambda app: app.env.find_files(app.config, app.builder),
                priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
