"""Build the docs and look at them as a reader does: headless Chromium at 1280 px.

Usage: ``python docs/screenshots.py [OUT_DIR]`` (default: a new temporary
directory). It builds the site into ``OUT_DIR/site``, saves a screenshot of
each page of `PAGES` as ``OUT_DIR/NAME.png``, and counts the code blocks whose
text is wider than the block (clipped behind a scroll bar). Exit status 1 if
one is. Needs ``mkdocs`` (``pip install '.[docs]'``) and ``chromium`` (on
Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PAGES = {
    "getting-started": "getting-started/index.html",
    "reference": "reference/index.html",
    "reference-connecteur": "reference/connecteur/index.html",
    "reference-server": "reference/server/index.html",
}
"""The pages a new user reads first, by screenshot name."""

WINDOW = "1280,2000"

# Run in the page once it is laid out: how many code blocks scroll sideways.
_MEASURE = """<script>
window.addEventListener("load", () => {
  const clipped = [...document.querySelectorAll("pre > code")].filter((c) => c.scrollWidth > c.clientWidth + 1);
  const meta = document.createElement("meta");
  meta.name = "clipped-code";
  meta.content = clipped.length + "|" + clipped.map((c) => c.textContent.split("\\n")[0].slice(0, 60)).join("|");
  document.head.appendChild(meta);
});
</script>"""


def chromium() -> str | None:
    """The Chromium command, if one is installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def build(site: Path) -> None:
    """Build the docs into `site` (strict, as CI does)."""
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT, check=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={WINDOW}"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120, check=True)


def shoot(browser: str, page: Path, png: Path) -> None:
    """Save a screenshot of `page` as `png`."""
    _chromium(browser, f"--screenshot={png}", page.as_uri())


def clipped_code(browser: str, page: Path) -> list[str]:
    """The first characters of each code block of `page` wider than the block, at `WINDOW`."""
    probe = page.with_name("_measure.html")  # beside the page: its relative links still work
    probe.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    try:
        dom = _chromium(browser, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    finally:
        probe.unlink()
    match = re.search(r'<meta name="clipped-code" content="([^"]*)">', dom)
    if match is None:
        raise RuntimeError(f"the measuring script did not run on {page}")
    count, *starts = match.group(1).split("|")
    return [html.unescape(start) for start in starts[: int(count)]]


def main(argv: list[str]) -> int:
    """Build, shoot and measure; return 1 if a code block is clipped."""
    browser = chromium()
    if browser is None:
        print("chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    out = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="connecteur-docs-"))
    out.mkdir(parents=True, exist_ok=True)
    build(out / "site")
    status = 0
    for name, path in PAGES.items():
        page = out / "site" / path
        shoot(browser, page, out / f"{name}.png")
        clipped = clipped_code(browser, page)
        print(f"{out / name}.png: {len(clipped)} clipped code blocks", *(f"\n  {start}" for start in clipped))
        status |= bool(clipped)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
