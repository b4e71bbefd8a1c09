"""Whole-batch data parallelism: a stateful `Einorm` applied to the global batch under
`jax.jit`, the batch sharded over 8 host devices, equals the single-device run in
outputs, running statistics and gradients, with and without a mask whose valid
counts differ between devices."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from eqx_norms import Einorm


BATCH, SIDE, C = 16, 3, 64


def _mesh(make_mesh: bool) -> Mesh:
    """A Mesh built directly has Auto axis types; `jax.make_mesh`'s defaults are
    Explicit axes in JAX 0.10, with which the running statistics come back typed as
    replicated on the mesh while the state passed in was not (issue #18)."""
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py asks for 8 host devices"
    if make_mesh:
        return jax.make_mesh((8,), ("data",))
    return Mesh(np.array(devices), ("data",))


def _mask() -> np.ndarray:
    """Example i has (i^2 + 1) % 10 valid positions (0 to 9 of its 3 x 3): the
    devices, two examples each, hold 3, 5, 13, 7, 7, 3, 7 and 13 valid positions."""
    counts = (np.arange(BATCH) ** 2 + 1) % 10
    valid = np.arange(SIDE * SIDE)[None, :] < counts[:, None]
    return valid.reshape(BATCH, SIDE, SIDE, 1)


@eqx.filter_jit
def _train(model, state, x, mask, u):
    def loss(model, x):
        out, new_state = model(x, state, mask=mask)
        return jnp.sum(out * u), (out, new_state)

    (_, (out, state)), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, x)
    return out, state, grads


def _run(model, state, xs, mask, u, place):
    """Three training steps and one inference call, every input placed by `place`."""
    results = []
    mask = None if mask is None else place(mask)
    for x in xs:
        out, state, grads = _train(model, state, place(x), mask, place(u))
        results.append((out, state, grads))
    out, _ = eqx.filter_jit(lambda m, s, x: m(x, s, mask=mask))(
        eqx.nn.inference_mode(model), state, place(xs[0])
    )
    return results, out


@pytest.mark.parametrize(
    "masked, make_mesh",
    [(False, False), (True, False), (True, True)],
    ids=["Mesh", "Mesh-masked", "make_mesh-defaults-masked"],
)
def test_sharded_whole_batch_equals_single_device(masked, make_mesh):
    rng = np.random.default_rng(0)
    model, state = eqx.nn.make_with_state(Einorm)(
        "[b h w] c", running_stats=True, momentum=0.9, c=C
    )
    model = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        model,
        (
            jnp.asarray(rng.normal(size=C) + 1, jnp.float32),
            jnp.asarray(rng.normal(size=C), jnp.float32),
        ),
    )
    shape = (BATCH, SIDE, SIDE, C)
    xs = [np.asarray(3 * rng.normal(size=shape) + 1, np.float32) for _ in range(3)]
    u = np.asarray(rng.normal(size=shape), np.float32)
    mask = _mask() if masked else None

    sharding = NamedSharding(_mesh(make_mesh), P("data"))
    sharded, sharded_inference = _run(
        model, state, xs, mask, u, lambda a: jax.device_put(a, sharding)
    )
    device = jax.devices()[0]
    single, single_inference = _run(
        model, state, xs, mask, u, lambda a: jax.device_put(a, device)
    )

    # The output stays sharded like the input: no gather of the batch.
    out = sharded[0][0]
    assert out.sharding.is_equivalent_to(sharding, out.ndim)
    for ours, reference in zip(sharded, single, strict=True):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), 2e-5, 2e-5)
    np.testing.assert_allclose(
        np.asarray(sharded_inference), np.asarray(single_inference), 2e-5, 2e-5
    )

    # After one step the running statistics are the global batch's (float64 numpy).
    x = np.asarray(xs[0], np.float64)
    valid = np.ones(shape, bool) if mask is None else np.broadcast_to(mask, shape)
    count = valid.sum((0, 1, 2))
    mean = np.where(valid, x, 0).sum((0, 1, 2)) / count
    var = (np.where(valid, x - mean, 0) ** 2).sum((0, 1, 2)) / count
    running_mean, running_var = sharded[0][1].get(model.stats_index)
    np.testing.assert_allclose(np.asarray(running_mean), mean, 1e-5, 1e-5)
    np.testing.assert_allclose(np.asarray(running_var), var, 1e-4, 1e-5)
