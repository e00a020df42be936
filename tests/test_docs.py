"""The documentation site's generated pages and its link check.

The site itself is built by ``.ci/run`` (``sphinx-build -n -W``, then ``docs/check_links.py``);
these tests need no Sphinx.
"""

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    _load(DOCS / "_ext" / "resetax_docs.py").generate(out=out)
    return out


def _listed(page: pathlib.Path) -> list[str]:
    """The names of a generated API page's autosummary table."""
    text = page.read_text()
    return re.findall(r"^   (\w+)$", text.split(":toctree: _autosummary\n\n", 1)[1], re.M)


def test_every_public_name_has_an_api_page(generated):
    pages = {p.stem: p for p in (generated / "api").glob("*.rst")}
    assert {"resetax", "resetax.noise", "resetax.losses", "resetax.data", "resetax.models",
            "resetax.theory", "resetax.diagnostics", "resetax.nnx", "resetax.experiment",
            "resetax.experiment.report"} <= set(pages)
    for name, page in pages.items():
        assert _listed(page) == list(importlib.import_module(name).__all__), name
    # Modules whose names their package re-exports are documented under the package.
    documented = {f"{m}.{n}" for m, p in pages.items() for n in _listed(p)}
    for module, package in (("resetax.resetting", "resetax"), ("resetax.schedules", "resetax"),
                            ("resetax.theory.mfpt", "resetax.theory"),
                            ("resetax.theory.simulate", "resetax.theory")):
        assert module not in pages
        for name in importlib.import_module(module).__all__:
            assert f"{package}.{name}" in documented, (module, name)


def test_the_cli_page_lists_every_config_field_with_its_flag_and_help(generated):
    from resetax.experiment import cli, config

    text = generated.joinpath("cli.rst").read_text()
    for command in ("train", "compare", "reproduce"):
        assert f"resetax {command}\n---" in text
    rows = text.split(".. _config-fields:", 1)[1]
    for field in dataclasses.fields(config.Config):
        flag = "--" + field.name.replace("_", "-")
        row = re.search(rf"\* - ``{field.name}``\n     - ``{flag}``\n(.*?)\n   \* -",
                        rows, re.S)
        assert row is not None, field.name
        help_text = re.sub(r"\\(.)", r"\1", " ".join(row.group(1).split()))
        assert field.metadata["help"] in help_text, field.name
        assert f"- {cli._show(field.default)} -" in help_text.replace("\n", " "), field.name


def test_the_notebooks_are_rendered_from_their_stored_files(generated):
    stored = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in (generated / "notebooks").glob("*.ipynb")) == stored
    for name in stored:
        assert (generated / "notebooks" / name).read_bytes() == (
            ROOT / "notebooks" / name).read_bytes()
    pages = (DOCS / "notebooks.md").read_text()
    for name in stored:
        assert f"generated/notebooks/{name.removesuffix('.ipynb')}\n" in pages, name


def test_check_links_reports_missing_pages_and_anchors(tmp_path):
    check_links = _load(DOCS / "check_links.py")
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<p id="top"></p><a href="sub/page.html#here">ok</a> <a href="#top">ok</a>'
        '<a href="https://example.org/x.html">external</a> <img src="missing.png">'
        '<a href="sub/page.html#nowhere">no anchor</a> <a href="sub/gone.html">no page</a>')
    (tmp_path / "sub" / "page.html").write_text(
        '<h1 id="here">x</h1><a href="../index.html#top">ok</a> <a href="../">ok</a>')
    assert check_links.broken_links(tmp_path) == [
        ("index.html", "missing.png"),
        ("index.html", "sub/page.html#nowhere"),
        ("index.html", "sub/gone.html"),
    ]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert check_links.main([str(tmp_path)]) == 1
    assert "index.html: broken link sub/gone.html" in out.getvalue()


def test_the_examples_page_shows_each_pair_as_a_diff_and_every_script(generated):
    text = generated.joinpath("examples.rst").read_text()
    examples = ROOT / "examples"
    idioms = [p.name.removesuffix("_resetting.py") for p in examples.glob("*_resetting.py")]
    assert {"optax", "linen", "nnx"} <= set(idioms)
    for idiom in idioms:
        assert f".. literalinclude:: examples/{idiom}.diff\n" in text, idiom
        diff = generated.joinpath("examples", f"{idiom}.diff").read_text()
        assert diff.startswith(f"--- examples/{idiom}_baseline.py\n"
                               f"+++ examples/{idiom}_resetting.py\n"), idiom
        assert any(line.startswith("+") and "resetax" in line for line in diff.splitlines()[2:])
    for script in examples.glob("*.py"):
        if not script.name.endswith("_baseline.py"):
            assert f".. literalinclude:: ../../examples/{script.name}\n   :language: python" in (
                text), script.name
    # In the README's order.
    from_readme = [text.index(f"examples/{i}_resetting.py``:") for i in ("optax", "linen", "nnx")]
    assert from_readme == sorted(from_readme)
