"""The code blocks the docs mark runnable do run, and their assertions hold.

A block is runnable when the line before its opening fence is
``<!-- runnable -->`` (invisible on the site). Each runs alone, in a
subprocess, with the same bounded timeout as the examples.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import TIMEOUT

DOCS = Path(__file__).resolve().parents[2] / "docs"
_RUNNABLE = re.compile(r"^<!-- runnable -->\n```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, match in enumerate(_RUNNABLE.finditer(page.read_text()), 1):
            blocks.append((f"{page.relative_to(DOCS)}#{number}", match.group(1)))
    return blocks


def test_the_docs_have_runnable_blocks() -> None:
    assert len(runnable_blocks()) >= 8


@pytest.mark.parametrize(("where", "code"), runnable_blocks(), ids=[where for where, _ in runnable_blocks()])
def test_runnable_block(where: str, code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
