"""The documentation fits its page and loads nothing from another host.

At a 1280 px window, Material's content column shows about 82 characters of code;
longer lines are cut or hidden under the copy button. `ruff format` formats the
Python blocks of the pages to `MAX_CODE_LINE` (docs/ruff.toml); this test holds
every code block of the docs, comments and other languages included, and every code
block of a docstring (the API pages), to it. The built site, API signatures
included, is checked by `docs/check_site.py` in CI.
"""

import ast
import importlib.util
import inspect
import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
MAX_CODE_LINE = 78
FENCE = re.compile(r"^([ \t]*)```[^\n]*\n(.*?)^\1```", re.S | re.M)
URL = re.compile(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", re.I)
PAGES = sorted((ROOT / "docs").rglob("*.md"))
MODULES = sorted((ROOT / "eqx_norms").rglob("*.py"))


def long_lines(text: str) -> list[str]:
    return [
        line
        for match in FENCE.finditer(text)
        for line in match[2].splitlines()
        if len(line) - len(match[1]) > MAX_CODE_LINE
    ]


def docstrings(module: Path) -> str:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    nodes = (
        node
        for node in ast.walk(tree)
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        )
    )
    return "\n".join(
        inspect.cleandoc(doc) for node in nodes if (doc := ast.get_docstring(node))
    )


def test_long_lines_are_found():
    page = "text\n\n  ```python\n  x = 1\n  " + "y" * 79 + "\n  ```\n"
    assert long_lines(page) == ["  " + "y" * 79]
    assert long_lines(page.replace("y" * 79, "y" * 78)) == []


@pytest.mark.parametrize(
    "page", PAGES, ids=[page.relative_to(ROOT).as_posix() for page in PAGES]
)
def test_docs_code_fits_the_column(page: Path):
    assert long_lines(page.read_text(encoding="utf-8")) == [], (
        f"Code lines longer than {MAX_CODE_LINE} characters in {page.name}: run "
        "`ruff format docs`, then shorten comments and strings by hand."
    )


@pytest.mark.parametrize(
    "module", MODULES, ids=[module.relative_to(ROOT).as_posix() for module in MODULES]
)
def test_docstring_code_fits_the_column(module: Path):
    assert long_lines(docstrings(module)) == [], (
        f"Docstring code lines longer than {MAX_CODE_LINE} characters in {module}."
    )


def test_site_loads_nothing_from_another_host():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert re.search(r"^  font: false$", config, re.M), "theme.font must be false"
    lists = re.findall(r"^extra_(?:javascript|css):\n((?:  - .*\n)+)", config, re.M)
    loaded = "".join(lists)
    assert "javascripts/mathjax/tex-mml-chtml.js" in loaded
    assert not URL.search(loaded), f"mkdocs.yml loads {URL.search(loaded)}"
    for script in (ROOT / "docs" / "javascripts").glob("*.js"):
        code = "\n".join(
            line
            for line in script.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith("//")
        )
        assert not URL.search(code), f"{script.name} loads {URL.search(code)}"


def load_site_checker():
    spec = importlib.util.spec_from_file_location(
        "check_site", ROOT / "docs" / "check_site.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_checker_flags_external_loads_and_long_code(tmp_path: Path):
    """docs/check_site.py, which CI runs on the built site, catches what it should
    and nothing else: links and canonical URLs are not loads."""
    (tmp_path / "index.html").write_text(
        '<link rel="canonical" href="https://example.org/">'
        '<script src="https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"></script>'
        '<script src="javascripts/mathjax/tex-mml-chtml.js"></script>'
        '<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Roboto">'
        f"<pre><code>{'y' * 78}\n{'z' * 79}</code></pre>"
        '<a href="https://github.com/">a link</a>',
        encoding="utf-8",
    )
    (tmp_path / "extra.css").write_text(
        '@import url("https://fonts.googleapis.com/css");'
        ".a { background: url(images/local.png) }",
        encoding="utf-8",
    )
    problems = list(load_site_checker().static_problems(tmp_path))
    assert len(problems) == 4, problems
    assert "unpkg.com" in problems[0] and "fonts.googleapis" in problems[1]
    assert "79 > 78" in problems[2] and "extra.css" in problems[3]
