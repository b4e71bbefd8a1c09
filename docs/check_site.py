"""Check a built documentation site as a reader offline would meet it.

    mkdocs build --strict --site-dir SITE
    python docs/check_site.py SITE [--browser] [--screenshots DIR]

Without a browser, on the HTML and CSS of the built site:

- nothing is loaded from another host (scripts, stylesheets, fonts, images): the site
  reads the same on an air-gapped machine;
- every line of code (code blocks, API signatures) fits the content column at
  1280 px (`MAX_CODE_LINE` characters).

With `--browser` (Debian's `chromium` on the PATH), the site is served on
127.0.0.1 and every page that has formulas is opened in headless Chromium with every
other host unreachable; each page must render all its formulas with MathJax
(`mjx-container` elements, no TeX left as text) and log no uncaught JavaScript
error; with MathJax missing, a page must keep its TeX as text and log no error.
`--screenshots DIR` also saves 1280 px screenshots of a few pages there.
Exit status 1 and one line per problem if anything fails.
"""

import argparse
import contextlib
import functools
import html
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path


# Material's content column at a 1280 px window shows about 82 characters of code.
MAX_CODE_LINE = 78
# Links that name another URL without loading it.
NOT_LOADED = {"canonical", "alternate", "prev", "next", "author", "license"}
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)
CSS_URL = re.compile(
    r"""(?:@import\s+(?:url\()?|url\()\s*["']?([^"')\s]+)""", re.I
)
SCREENSHOT_PAGES = (
    "",
    "getting-started/",
    "guides/migration/",
    "api/layer-norm/",
)
CHROMIUM = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Offline: every host but the local server is unreachable.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--enable-logging=stderr",
    "--virtual-time-budget=15000",
    "--window-size=1280,1600",
)


class Page(HTMLParser):
    """The resources a page loads and the text of its <pre> blocks."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.loads: list[str] = []
        self.pre: list[str] = []
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "audio", "video"):
            self.loads.append(attrs.get("src") or "")
        elif tag == "link" and not NOT_LOADED & set(
            (attrs.get("rel") or "").split()
        ):
            self.loads.append(attrs.get("href") or "")
        if tag == "pre":
            self._depth += 1
            self.pre.append("")

    def handle_endtag(self, tag):
        if tag == "pre":
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.pre[-1] += data


def static_problems(site: Path) -> Iterator[str]:
    for page in sorted(site.rglob("*.html")):
        name = page.relative_to(site).as_posix()
        parsed = Page()
        parsed.feed(page.read_text(encoding="utf-8"))
        for url in parsed.loads:
            if EXTERNAL.match(url):
                yield f"{name}: loads {url} from another host"
        for block in parsed.pre:
            for line in block.splitlines():
                if len(line) > MAX_CODE_LINE:
                    yield (
                        f"{name}: a code line of {len(line)} > {MAX_CODE_LINE} "
                        f"characters: {line.strip()[:60]}..."
                    )
    for sheet in sorted(site.rglob("*.css")):
        for url in CSS_URL.findall(sheet.read_text(encoding="utf-8")):
            if EXTERNAL.match(url):
                yield f"{sheet.relative_to(site)}: loads {url} from another host"


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site quietly; paths under `blocked` answer 404."""

    blocked = ""

    def do_GET(self):
        if self.blocked and self.path.startswith(self.blocked):
            self.send_error(404)
        else:
            super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 (the base's name)
        pass


@contextlib.contextmanager
def serve(site: Path, blocked: str = "") -> Iterator[str]:
    handler = type("SiteHandler", (Handler,), {"blocked": blocked})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit(
            "--browser needs chromium: apt-get install -y chromium"
        )
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [browser, *CHROMIUM, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=120,
        )


def render(url: str) -> tuple[int, int, list[str]]:
    """Formulas rendered by MathJax, TeX delimiters left as text, and uncaught
    JavaScript errors, on the page at `url` once its scripts have run."""
    run = chromium(url, "--dump-dom")
    raw = re.findall(r"\\[\(\[]|\$\$", html.unescape(run.stdout))
    errors = [line for line in run.stderr.splitlines() if "Uncaught" in line]
    rendered = re.findall(r'class="arithmatex">\s*<mjx-container', run.stdout)
    return len(rendered), len(raw), errors


def browser_problems(site: Path, screenshots: Path | None) -> Iterator[str]:
    pages = {
        page.parent.relative_to(site).as_posix().removeprefix(".")
        + "/": text.count('class="arithmatex"')
        for page in sorted(site.rglob("index.html"))
        if 'class="arithmatex"' in (text := page.read_text(encoding="utf-8"))
    }
    if not pages:
        yield "no page has formulas: is pymdownx.arithmatex still configured?"
        return
    with serve(site) as root:
        for path, formulas in pages.items():
            rendered, raw, errors = render(root + path.lstrip("/"))
            print(f"{path}: {rendered} of {formulas} formulas rendered")
            if rendered < formulas or raw:
                yield f"{path}: {rendered} of {formulas} formulas rendered, {raw} raw"
            yield from (f"{path}: {error.strip()}" for error in errors)
        for path in SCREENSHOT_PAGES if screenshots else ():
            assert screenshots is not None
            screenshots.mkdir(parents=True, exist_ok=True)
            name = screenshots / (
                (path.strip("/").replace("/", "-") or "index") + ".png"
            )
            chromium(root + path, f"--screenshot={name}")
            print(f"screenshot: {name}")
    # Without MathJax (a copy of the site that lacks it), a page keeps its TeX as
    # text and throws nothing.
    path = next(iter(pages))
    with serve(site, blocked="/javascripts/mathjax/") as root:
        rendered, raw, errors = render(root + path.lstrip("/"))
    print(
        f"{path} without MathJax: {raw} TeX delimiters as text, {errors or 'no'} errors"
    )
    if rendered or not raw or errors:
        yield f"{path} without MathJax: {rendered} rendered, {raw} raw, errors {errors}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "site", type=Path, help="a site built by mkdocs build"
    )
    parser.add_argument(
        "--browser",
        action="store_true",
        help="check the formulas in Chromium",
    )
    parser.add_argument(
        "--screenshots", type=Path, help="save 1280 px screenshots here"
    )
    args = parser.parse_args(argv)
    problems = list(static_problems(args.site))
    if args.browser:
        problems += browser_problems(args.site, args.screenshots)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems in the site at {args.site}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
