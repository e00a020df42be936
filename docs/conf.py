"""Sphinx configuration of the resetax documentation (``sphinx-build -W -b html docs OUT``)."""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS / "_ext"))

import resetax  # noqa: E402

project = "resetax"
author = "resetax developers"
copyright = "resetax developers"
release = version = resetax.__version__

extensions = [
    "resetax_docs",  # the API, CLI and notebook pages, generated from the code (docs/_ext)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
nitpicky = True

# -- API pages: one per public name (docs/_ext/resetax_docs.py lists each module's __all__).
autosummary_generate = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
add_module_names = False

# -- Notebooks: rendered from the outputs stored in notebooks/ (never executed here).
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = f"resetax {release}"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
