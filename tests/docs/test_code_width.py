"""No code line is hidden in a browser: the theme wraps code, and the first pages need no wrapping.

At 1280 px, Material's code blocks show about 82 characters; a longer line
used to scroll sideways, hiding its end (often a comment that was the point).
docs/stylesheets/extra.css makes such lines wrap; the pages a new user reads
first keep their code within the width, so that nothing wraps there either.
docs/screenshots.py checks both in headless Chromium.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

VISIBLE = 82
"""Characters of code a block shows at 1280 px (measured with docs/screenshots.py)."""

WITHIN_WIDTH = ["getting-started.md"]
"""Pages whose code must fit unwrapped (the rest may wrap)."""


def code_lines(page: Path) -> list[tuple[int, str]]:
    """The lines inside fenced code blocks of a Markdown page, with their numbers."""
    lines, inside = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if re.match(r"\s*(```|~~~)", line):
            inside = not inside
        elif inside:
            lines.append((number, line))
    return lines


@pytest.mark.parametrize("name", WITHIN_WIDTH)
def test_first_pages_code_fits_the_block(name: str) -> None:
    wide = [f"{name}:{n}: {len(line)}" for n, line in code_lines(DOCS / name) if len(line) > VISIBLE]
    assert not wide, f"code lines wider than {VISIBLE} characters: {wide}"


def test_the_theme_wraps_code_instead_of_hiding_it() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^extra_css:\n  - stylesheets/extra\.css", config, re.M)
    css = " ".join((DOCS / "stylesheets" / "extra.css").read_text().split())
    assert re.search(r"\.md-typeset pre > code \{ white-space: pre-wrap;", css)


@pytest.mark.skipif(
    not os.environ.get("CONNECTEUR_DOCS_SCREENSHOTS"), reason="opt-in (~45 s): set CONNECTEUR_DOCS_SCREENSHOTS=1"
)
def test_no_code_block_is_clipped_in_chromium(tmp_path: Path) -> None:
    if shutil.which("chromium") is None or importlib.util.find_spec("mkdocs") is None:
        pytest.skip("needs chromium (Debian: apt-get install chromium) and the docs extra")
    spec = importlib.util.spec_from_file_location("screenshots", DOCS / "screenshots.py")
    assert spec is not None and spec.loader is not None
    screenshots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshots)
    assert screenshots.main([str(tmp_path)]) == 0
