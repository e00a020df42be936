"""Checks that every link inside the built site resolves: the file exists, and so does the anchor.

``sphinx-build -b linkcheck`` needs the network; this needs none. External links (``https:``,
``mailto:``) are not checked. Usage: ``python docs/check_links.py docs/_build/html``; exits 1
and lists the broken links (page, link) if there is any.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    """The anchors (``id``, ``<a name>``) a page defines and the local links it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("id", "name") if tag == "a" else ("id",):
            if attributes.get(name):
                self.anchors.add(attributes[name])
        for name in ("href", "src"):
            link = attributes.get(name)
            if link is not None and _is_local(link):
                self.links.append(link)


def _is_local(link: str) -> bool:
    parts = urlsplit(link)
    return not (parts.scheme or parts.netloc or link.startswith("javascript:"))


def _pages(root: Path) -> list[Path]:
    """The site's pages; ``_static`` holds the theme's template fragments, not pages."""
    return sorted(p for p in root.rglob("*.html") if "_static" not in p.relative_to(root).parts)


def broken_links(root: Path) -> list[tuple[str, str]]:
    """``(page, link)`` for every local link of the site under ``root`` that does not resolve."""
    pages: dict[Path, _Page] = {}

    def page(path: Path) -> _Page:
        if path not in pages:
            parsed = _Page()
            parsed.feed(path.read_text(encoding="utf-8", errors="replace"))
            pages[path] = parsed
        return pages[path]

    broken = []
    for html in _pages(root):
        for link in page(html).links:
            parts = urlsplit(link)
            target = (html.parent / unquote(parts.path)).resolve() if parts.path else html
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append((str(html.relative_to(root)), link))
            elif parts.fragment and target.suffix == ".html" and (
                unquote(parts.fragment) not in page(target).anchors
            ):
                broken.append((str(html.relative_to(root)), link))
    return broken


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python docs/check_links.py BUILT_HTML_DIRECTORY", file=sys.stderr)
        return 2
    root = Path(argv[0])
    broken = broken_links(root)
    for html, link in broken:
        print(f"{html}: broken link {link}")
    count = len(_pages(root))
    print(f"{count} pages, {len(broken)} broken links" if broken else
          f"{count} pages: every local link resolves")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
