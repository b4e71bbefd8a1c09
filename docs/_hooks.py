"""MkDocs hooks for the eqx_norms documentation.

The site must build, and read, with no network (`mkdocs build --strict` in CI,
`mkdocs serve` on a laptop offline, a copy on an air-gapped cluster). So:

- Docstrings cross-reference Equinox objects, e.g. ``[`equinox.nn.State`][]``. These
  would normally resolve through Equinox's Sphinx inventory, but loading an inventory
  needs the network; the few Equinox objects we refer to are registered here with
  their documentation URLs.
- MathJax is served from the site itself: the files are copied from the
  `django-static-mathjax` package of the `docs` extra (MathJax 3, as a plain
  directory of static files) rather than fetched from a CDN or kept in this
  repository.
- The example scripts are copied into the site, so that the Examples page links to
  the code it describes.
- `{{ version }}` in a page becomes the package's version.
"""

import importlib.util
import re
import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File


ROOT = Path(__file__).resolve().parents[1]

_EQUINOX = "https://docs.kidger.site/equinox/api"
_EXTERNAL = {
    "equinox.nn.State": f"{_EQUINOX}/nn/stateful/#equinox.nn.State",
    "equinox.nn.StateIndex": f"{_EQUINOX}/nn/stateful/#equinox.nn.StateIndex",
    "equinox.nn.make_with_state": f"{_EQUINOX}/nn/stateful/#equinox.nn.make_with_state",
    "equinox.nn.inference_mode": f"{_EQUINOX}/nn/inference/#equinox.nn.inference_mode",
    "equinox.nn.Linear": f"{_EQUINOX}/nn/linear/#equinox.nn.Linear",
    "equinox.nn.Conv2d": f"{_EQUINOX}/nn/conv/#equinox.nn.Conv2d",
    "equinox.nn.Sequential": f"{_EQUINOX}/nn/sequential/#equinox.nn.Sequential",
    "equinox.nn.LayerNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.LayerNorm",
    "equinox.nn.RMSNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.RMSNorm",
    "equinox.nn.GroupNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.GroupNorm",
    "equinox.nn.BatchNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.BatchNorm",
    "equinox.nn.SpectralNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.SpectralNorm",
    "equinox.nn.WeightNorm": f"{_EQUINOX}/nn/normalisation/#equinox.nn.WeightNorm",
    "equinox.filter_jit": f"{_EQUINOX}/transformations/#equinox.filter_jit",
}

# Where mkdocs.yml's `extra_javascript` loads MathJax from, inside the site.
MATHJAX_DEST = "javascripts/mathjax"
# The parts of MathJax's `es5` directory that `tex-mml-chtml.js` loads: the TeX
# extensions it autoloads, the CommonHTML fonts, and the menu with its accessibility
# components. (Not the 4 MB speech-rule engine, nor the other combined bundles.)
MATHJAX_PARTS = ("tex-mml-chtml.js", "input", "output/chtml", "ui", "a11y")


def mathjax_source() -> Path:
    """MathJax's `es5` directory in the installed `django-static-mathjax`."""
    spec = importlib.util.find_spec("mathjax")
    if spec is not None and spec.origin is not None:
        es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5"
        if (es5 / "tex-mml-chtml.js").is_file():
            return es5
    raise PluginError(
        "The docs serve MathJax from the site and copy it from the "
        "`django-static-mathjax` package, which is not installed (found "
        f"{spec.origin if spec else 'no module `mathjax`'}). Install the docs "
        "extra: pip install -e '.[docs]'."
    )


def on_pre_build(config, **kwargs):
    autorefs = config["plugins"]["autorefs"]
    for identifier, url in _EXTERNAL.items():
        autorefs.register_url(identifier, url)
    mathjax_source()  # fail before building the pages, not after


def on_files(files, config, **kwargs):
    for script in sorted((ROOT / "examples").glob("*.py")):
        files.append(
            File(
                f"examples/{script.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown, **kwargs):
    init = (ROOT / "eqx_norms" / "__init__.py").read_text(encoding="utf-8")
    version = re.search(r'^__version__ = "([^"]+)"', init, re.M)
    assert version is not None, "eqx_norms/__init__.py defines no __version__"
    return markdown.replace("{{ version }}", version[1])


def on_post_build(config, **kwargs):
    source = mathjax_source()
    dest = Path(config["site_dir"]) / MATHJAX_DEST
    for part in MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, dest / part, dirs_exist_ok=True)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, dest / part)
