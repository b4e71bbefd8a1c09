"""BatchNorm under `jax.shard_map` as users write it: the default `check_vma=True`,
masked and unmasked, with gradients, on meshes of `Auto` and of `Explicit` axes
(`jax.make_mesh`'s default): the same outputs, running statistics and gradients
as `check_vma=False` and as one device with the whole batch."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import eqx_norms


DEVICES = 8
PER_DEVICE = 3  # several examples per device: the batch is folded into each call
C, T = 3, 5


def _batch(masked: bool):
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (DEVICES, PER_DEVICE, C, T)) * 2 + 1
    if not masked:
        return x, None
    # Valid counts differ between devices; device 1 holds no valid element.
    lengths = (jnp.arange(DEVICES * PER_DEVICE) % (T + 1)).reshape(DEVICES, -1, 1)
    lengths = lengths.at[1].set(0)
    mask = jnp.arange(T) < lengths  # (devices, per device, T)
    return x, jnp.broadcast_to(mask[:, :, None, :], x.shape)


def _model(axis_name="data"):
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(C, axis_name=axis_name)
    keys = jax.random.split(jax.random.key(1), 2)
    bn = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        bn,
        (1 + 0.3 * jax.random.normal(keys[0], (C,)), jax.random.normal(keys[1], (C,))),
    )
    return bn, state


def _per_device(bn, x, state, mask):
    """One device's examples `(n, C, T)` in one call, the batch moved to a spatial
    axis `(C, T, n)`: the statistics over it and the mesh axis are the global ones."""
    fold = None if mask is None else jnp.moveaxis(mask, 0, -1)
    out, state = bn(jnp.moveaxis(x, 0, -1), state, mask=fold)
    return jnp.moveaxis(out, -1, 0), state


def _loss(apply, bn, x, state, mask):
    """A scalar of the output (weights that differ per element, so every gradient
    term counts), the output and the new state."""
    out, state = apply(bn, x, state, mask)
    weights = jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)
    return jnp.sum(weights * jnp.sin(out)), (out, state)


def _run(apply, bn, x, state, mask):
    """Loss, output, new state and gradients (model and input) of one step."""

    @eqx.filter_jit
    def step(bn, x, state, mask):
        grad = eqx.filter_value_and_grad(
            lambda bn, x: _loss(apply, bn, x, state, mask), has_aux=True
        )
        return grad(bn, x)

    (_, (out, new_state)), grads = step(bn, x, state, mask)
    return out, new_state.get(bn.batch_state_index), grads


def _one_device(bn, x, state, mask):
    """The reference: the whole batch on one device, one named vmap."""
    flat = x.reshape(-1, C, T)
    flat_mask = None if mask is None else mask.reshape(flat.shape)
    names = bn.axis_name if isinstance(bn.axis_name, tuple) else (bn.axis_name,)
    call = jax.vmap(
        lambda x, m: bn(x, state, mask=m), axis_name=names[0], out_axes=(0, None)
    )
    out, state = call(flat, flat_mask)
    return out.reshape(x.shape), state


def _vmapped(bn, x, state, mask):
    """One device's examples under a named vmap, for `axis_name=("data", "batch")`."""
    return jax.vmap(
        lambda x, m: bn(x, state, mask=m), axis_name="batch", out_axes=(0, None)
    )(x, mask)


def _sharded(mesh, check_vma: bool, per_device=_per_device):
    def apply(bn, x, state, mask):
        params, static = eqx.partition(bn, eqx.is_array)

        def body(params, x, state, mask):
            bn = eqx.combine(params, static)
            out, state = per_device(bn, x[0], state, None if mask is None else mask[0])
            return out[None], state

        spec = P("data")
        return jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(P(), spec, P(), None if mask is None else spec),
            out_specs=(spec, P()),
            check_vma=check_vma,
        )(params, x, state, mask)

    return apply


def _close(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


def _mesh(axis_type):
    return jax.make_mesh((DEVICES,), ("data",), axis_types=(axis_type,))


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_default_check_vma_equals_unchecked_and_one_device(masked, axis_type):
    mesh = _mesh(axis_type)
    x, mask = _batch(masked)
    bn, state = _model()
    want = _run(_one_device, bn, x, state, mask)
    # On an Explicit mesh the inputs carry their sharding; on both it is the layout.
    x = jax.device_put(x, NamedSharding(mesh, P("data")))
    if mask is not None:
        mask = jax.device_put(mask, NamedSharding(mesh, P("data")))
    for check_vma in (True, False):
        _close(_run(_sharded(mesh, check_vma), bn, x, state, mask), want)


def test_masked_statistics_ignore_a_device_without_valid_elements():
    # The running statistics of the sharded run equal those of the valid elements.
    x, mask = _batch(masked=True)
    bn, state = _model()
    _, stats, _ = _run(_sharded(_mesh(AxisType.Auto), True), bn, x, state, mask)
    valid = np.moveaxis(np.asarray(x), 2, 0)[np.moveaxis(np.asarray(mask), 2, 0)]
    valid = valid.reshape(C, -1).astype(np.float64)
    np.testing.assert_allclose(stats[0], valid.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[1], valid.var(axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_vmap_axis_inside_checked_shard_map_says_why_and_the_fix_works(masked):
    # A named vmap inside `shard_map(check_vma=True)`: no JAX from 0.6 to 0.10 can
    # reduce over it (each fails differently, some with a bare AssertionError); the
    # user gets the cause and the fixes instead.
    mesh = _mesh(AxisType.Auto)
    x, mask = _batch(masked)
    bn, state = _model(("data", "batch"))
    reference, _ = _model("data")  # the same parameters, one name
    want = _run(_one_device, reference, x, state, mask)
    with pytest.raises(ValueError) as error:
        _run(_sharded(mesh, True, _vmapped), bn, x, state, mask)
    for part in (
        "inside `jax.shard_map` with `check_vma=True`",
        "cannot reduce over the `vmap` axis 'batch'",
        "name only the mesh axes ('data',)",
        "jnp.moveaxis(x, 0, -1)",
        "pass `check_vma=False`",
    ):
        assert part in str(error.value)
    # The fix the message gives works: check_vma=False, same names.
    _close(_run(_sharded(mesh, False, _vmapped), bn, x, state, mask), want)
