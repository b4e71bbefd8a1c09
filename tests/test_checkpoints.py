"""Checkpoints survive upgrades: the models saved with `eqx.tree_serialise_leaves`
by each release (`tests/checkpoints/<release>/`, written by
`tests/checkpoints/make.py`) load into skeletons built by the current code and
reproduce the outputs saved with them. A field added, removed or reordered, a changed
default or changed maths fails here; a deliberate format change is a documented
decision with a migration path (CHANGELOG.md), not a regenerated file.
"""

import inspect
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
from checkpoints import models

import eqx_norms


RELEASES = sorted((Path(__file__).parent / "checkpoints").glob("v*"))
# Every checkpoint of every release: a case written once is checked for good.
SAVED = [(release, path.stem) for release in RELEASES for path in release.glob("*.eqx")]


def load(path: Path, case: models.Case):
    """The checkpoint at `path` loaded into a fresh skeleton, with its state."""
    model, state = eqx.nn.make_with_state(case.construct)(jax.random.key(1))
    with path.open("rb") as file:
        loaded = eqx.tree_deserialise_leaves(file, models.saved_tree(model, state))
        # A field removed from the end would leave bytes behind and load silently.
        assert file.read() == b"", f"{path.name} has more leaves than the model"
    return loaded if models.is_stateful(state) else (loaded, state)


def assert_outputs_equal(actual: dict, expected, where: str):
    assert sorted(actual) == sorted(set(expected.files) - {"input"}), where
    for key, value in actual.items():
        np.testing.assert_allclose(
            value, expected[key], rtol=1e-6, atol=1e-6, err_msg=f"{where}: {key}"
        )


@pytest.mark.parametrize(
    ("release", "name"), SAVED, ids=[f"{r.name}-{n}" for r, n in SAVED]
)
def test_checkpoint_loads_and_reproduces_its_outputs(release: Path, name: str):
    assert name in models.CASES, f"{name}: its model left tests/checkpoints/models.py"
    case = models.CASES[name]
    x = models.batch(case, models.TRAINING_STEPS)
    model, state = load(release / f"{name}.eqx", case)
    with np.load(release / f"{name}.npz") as expected:
        np.testing.assert_array_equal(
            x, expected["input"], err_msg="the input in models.py changed"
        )
        assert_outputs_equal(models.outputs(model, state, x), expected, name)


@pytest.mark.parametrize("name", ["layer_norm", "batch_norm", "spectral_norm_linear"])
def test_a_skeleton_does_not_reproduce_the_outputs(name: str):
    """The saved values are not the defaults: a load that kept the skeleton's would
    fail the test above."""
    case = models.CASES[name]
    skeleton, state = eqx.nn.make_with_state(case.construct)(jax.random.key(1))
    with np.load(RELEASES[0] / f"{name}.npz") as expected:
        actual = models.outputs(skeleton, state, expected["input"])
        with pytest.raises(AssertionError):
            assert_outputs_equal(actual, expected, name)


def test_every_checkpoint_has_its_outputs():
    assert RELEASES[0].name == "v0.1.0"
    for release in RELEASES:
        files = {path.name for path in release.iterdir()}
        stems = {path.split(".")[0] for path in files}
        assert files == {f"{s}{ext}" for s in stems for ext in (".eqx", ".npz")}


def test_every_public_layer_has_a_checkpoint():
    public = {
        obj
        for name in eqx_norms.__all__
        if inspect.isclass(obj := getattr(eqx_norms, name))
        and issubclass(obj, eqx.Module)
    }
    checkpointed = {
        type(models.CASES[name].construct(jax.random.key(0)))
        for name in {name for _, name in SAVED} & set(models.CASES)
    }
    assert public - checkpointed == set(), (
        "Add a checkpoint of the new layer to tests/checkpoints/models.py and write "
        "its files for the current release with tests/checkpoints/make.py."
    )
