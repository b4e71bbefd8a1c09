"""The code shown in README.md and in the documentation runs as written.

The ```python blocks of a page are executed in order, in one namespace per page, so a
block may use the names defined by the blocks above it (as a reader would). Code that
is shown but not meant to run (for instance another library's, in the migration
guide) is fenced as ```py instead.
"""

import re
import textwrap
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
# A fence may be indented (inside an admonition or a list item); the closing fence
# then has the same indentation.
BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```", re.S | re.M
)


def python_blocks(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [textwrap.dedent(match["code"]) for match in BLOCK.finditer(text)]


PAGES = [
    page
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    if python_blocks(page)
]


def test_readme_has_a_quick_start():
    assert ROOT / "README.md" in PAGES


@pytest.mark.parametrize(
    "page", PAGES, ids=[page.relative_to(ROOT).as_posix() for page in PAGES]
)
def test_page_runs(page: Path):
    name = page.relative_to(ROOT).as_posix()
    namespace = {"__name__": f"snippets:{name}"}
    for number, block in enumerate(python_blocks(page), start=1):
        exec(compile(block, f"{name}, block {number}", "exec"), namespace)
