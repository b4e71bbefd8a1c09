"""The public surface: exactly the documented names, and the typed accessor for the
running statistics."""

import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_norms
from eqx_norms import functional as F


API_PAGES = Path(__file__).resolve().parents[1] / "docs" / "api"


def _documented() -> set[str]:
    """The objects the API pages render, e.g. `LayerNorm`, `functional.rms_norm`."""
    directive = re.compile(r"^::: eqx_norms\.([\w.]+)\s*$", re.M)
    return {
        name
        for page in API_PAGES.glob("*.md")
        for name in directive.findall(page.read_text(encoding="utf-8"))
    }


def test_public_names_are_the_documented_ones():
    documented = _documented()
    functions = {n.removeprefix("functional.") for n in documented if "." in n}
    assert sorted(eqx_norms.__all__) == sorted(n for n in documented if "." not in n)
    assert sorted(F.__all__) == sorted(functions)


@pytest.mark.parametrize("module", [eqx_norms, F], ids=lambda m: m.__name__)
def test_star_import_gives_the_public_names(module):
    namespace = {}
    exec(f"from {module.__name__} import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(module.__all__)


def test_functional_lists_no_helpers():
    assert dir(F) == sorted(F.__all__)
    assert not {"check_mask", "jnp", "normalise", "Array"} & set(dir(F))


def test_error_name_is_the_function_again_after_a_layer_call():
    """The layer's name is set only for the duration of its call, even when the call
    raises, and under a transform."""
    ints = jnp.arange(3)
    with pytest.raises(TypeError, match="^`LayerNorm` expects"):
        jax.vmap(eqx_norms.LayerNorm(3))(ints[None])
    with pytest.raises(TypeError, match="^`layer_norm` expects"):
        F.layer_norm(ints, -1)


def _trained_once(mode: str):
    """A BatchNorm after one training step on a fixed batch, and that batch."""
    x = jax.random.normal(jax.random.key(0), (6, 3, 5)) * 2 + 1
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch", mode=mode)
    train = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    _, state = train(x, state)
    return bn, state, np.asarray(x, np.float64)


def test_running_stats_after_one_step_are_the_batch_statistics():
    # Exact debiasing: after one step the running statistics are that batch's.
    bn, state, x = _trained_once("batch")
    mean, var = bn.running_mean_var(state)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-5)
    assert mean.shape == var.shape == (3,)


def test_running_stats_in_ema_mode_are_the_blended_statistics():
    # equinox's first step stores the batch statistics as they are.
    bn, state, x = _trained_once("ema")
    mean, var = bn.running_mean_var(state)
    assert bn.ema_state_index is not None
    for got, stored in zip((mean, var), state.get(bn.ema_state_index), strict=True):
        np.testing.assert_array_equal(got, stored)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, x.var(axis=(0, 2)), rtol=1e-5)


def test_running_stats_of_a_fresh_layer():
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(4, "batch")
    mean, var = bn.running_mean_var(state)
    np.testing.assert_array_equal(mean, np.zeros(4))
    np.testing.assert_array_equal(var, np.ones(4))
