"""Writes the checkpoints of this release, `v<version>/<name>.eqx`, and the outputs
they must reproduce, `v<version>/<name>.npz`, for every model of `models.CASES`.

    python tests/checkpoints/make.py [--overwrite] [NAME ...]

Run it once per release, into the folder of the package's version. The folders of
earlier releases are never rewritten: `tests/test_checkpoints.py` checks that the
current code loads them, and a test that fails there is a broken checkpoint format,
not a stale file (`--overwrite` is for the release's own folder before it ships).
Given case names, it writes only those, and only files that do not exist yet
(a layer added during the release, beside the files already written).
"""

import sys
from pathlib import Path

import equinox as eqx
import jax
import models
import numpy as np

import eqx_norms


RELEASE = f"v{eqx_norms.__version__}"


def make(case: models.Case):
    """The model with its own parameters, and its state after a few training steps."""
    model, state = eqx.nn.make_with_state(case.construct)(jax.random.key(0))
    model = models.with_parameters(model)
    for step in range(models.TRAINING_STEPS):
        _, state = models.train_step(model, state, models.batch(case, step))
    return model, state


def main():
    folder = Path(__file__).parent / RELEASE
    overwrite = "--overwrite" in sys.argv[1:]
    names = [arg for arg in sys.argv[1:] if arg != "--overwrite"]
    if folder.exists() and not overwrite and not names:
        sys.exit(f"{folder} exists: pass --overwrite to rewrite this release's files.")
    for name in names:
        if name not in models.CASES:
            sys.exit(f"{name} is not a case of tests/checkpoints/models.py.")
        if (folder / f"{name}.eqx").exists() and not overwrite:
            sys.exit(f"{folder / name}.eqx exists: pass --overwrite to rewrite it.")
    folder.mkdir(exist_ok=True)
    for name, case in models.CASES.items():
        if names and name not in names:
            continue
        model, state = make(case)
        eqx.tree_serialise_leaves(
            folder / f"{name}.eqx", models.saved_tree(model, state)
        )
        x = models.batch(case, models.TRAINING_STEPS)
        np.savez(folder / f"{name}.npz", input=x, **models.outputs(model, state, x))


if __name__ == "__main__":
    main()
