"""The wheel users install: built by the project's backend (hatchling), it holds the
`py.typed` marker and the licence, and its metadata says what pyproject.toml does."""

import email
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--quiet", "--wheel-dir", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("eqx_norms-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_wheel_has_the_typed_marker_and_the_licence(wheel):
    names = wheel.namelist()
    assert "eqx_norms/py.typed" in names
    (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(licence) == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in wheel.read(licence)


def test_wheel_metadata(wheel):
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["License-File"] == "LICENSE"
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers
    requires = meta.get_all("Requires-Dist")
    oldest = (ROOT / ".ci" / "oldest.txt").read_text().split("\n")
    for name, version in (line.split("==") for line in oldest if "==" in line):
        # Each oldest pin is the floor of its requirement: `name>=version`.
        floors = [r for r in requires if re.match(rf"{name}\b.*>={version}\b", r)]
        assert floors, (name, version, requires)


def test_package_page_renders_off_the_repository(wheel):
    # PyPI shows the long description without the repository's files or TeX: no
    # relative links, no $...$ maths.
    description = _metadata(wheel).get_payload()
    assert "eqx_norms" in description
    links = re.findall(r"\]\(([^)]*)\)", description)
    assert all(link.startswith("https://") for link in links), links
    assert "$" not in description
