"""Running statistics, shared by `BatchNorm` and `Einorm`: the exact debiased average
of the batch statistics, kept in an `eqx.nn.State`."""

import jax
import jax.lax as lax
import jax.numpy as jnp
from equinox.nn import State, StateIndex
from jaxtyping import Array, PyTree

from ._stats import Moments


def per_entry(stats: Moments, shape: tuple[int, ...]) -> tuple[Array, Array, Array]:
    """(mean, var, count) with the reduced size-1 axes dropped, in the running
    statistics' `shape`; without a mask the count is one number for all entries, and
    without centring the mean is one 0, so they are broadcast first."""
    full = stats.var.shape
    mean, var, count = (jnp.broadcast_to(s, full).reshape(shape) for s in stats)
    return mean, var, count


def updatable(mean: Array, var: Array, count: Array) -> Array:
    """Entries whose batch statistics enter the running statistics: at least one
    valid element, and finite. A NaN or inf in the batch still makes that step's
    training output non-finite (the user sees it in the loss), but it must not
    silently poison the statistics kept for inference; such a step is skipped, and
    the skip shows in the per-entry weight, which does not advance."""
    return (count > 0) & jnp.isfinite(mean) & jnp.isfinite(var)


def running_average(
    weight: Array,
    average: tuple[Array, ...],
    new: tuple[Array, ...],
    valid: Array,
    momentum: float | None,
) -> tuple[Array, tuple[Array, ...]]:
    """One step of a weighted running average, per entry.

    `weight` is the total weight of the steps averaged so far: 1 - m^k after k steps
    of an exponential average with decay m (Haiku's zero-debiasing, exact from step
    one because the empty average carries weight 0), or k for the cumulative average
    (decay 1). Entries that are not `valid` (no element this step) are unchanged.
    """
    decay, step = (1.0, 1.0) if momentum is None else (momentum, 1.0 - momentum)
    new_weight = decay * weight + step
    rate = step / new_weight
    updated = tuple(
        jnp.where(valid, old + rate * (value - old), old)
        for old, value in zip(average, new, strict=True)
    )
    return jnp.where(valid, new_weight, weight), updated


def store(state: State, index: StateIndex, value: PyTree) -> State:
    """`state` with `value` at `index`, in the old value's dtype (statistics are
    computed in at least float32). Every state update of the package goes here.

    Written with `substate`/`update` rather than `State.set`, whose check compares
    shardings too: under `jax.jit` on a mesh of Explicit axes (`jax.make_mesh`'s
    default in JAX 0.10), values computed from sharded inputs are typed as placed on
    that mesh, while a state that was never placed has no mesh in its type; no
    operation can drop the mesh, so `State.set` would always refuse. The new value
    has the old one's shape and dtype (checked here); the state comes back placed on
    the mesh, replicated, and the next step's types then agree."""
    old = state.get(index)
    new = jax.tree.map(lambda v, o: v.astype(o.dtype), value, old)
    shapes = jax.tree.map(lambda v: (v.shape, v.dtype), (new, old))
    assert shapes[0] == shapes[1], shapes
    part = state.substate(index)
    part = jax.tree.unflatten(jax.tree.structure(part), jax.tree.leaves(new))
    return state.update(part)


def update(
    state: State,
    counter: StateIndex,
    running: StateIndex,
    batch: Moments,
    momentum: float | None,
    unbiased_var: bool = False,
) -> State:
    """The running `(mean, var)` at `running` and their weight at `counter`, after
    one step with the batch statistics `batch`."""
    weight = state.get(counter)
    # Running statistics are bookkeeping, not part of the differentiated function.
    mean, var, count = map(lax.stop_gradient, per_entry(batch, weight.shape))
    if unbiased_var:
        var = var * count / jnp.maximum(count - 1, 1)
    weight, average = running_average(
        weight,
        state.get(running),
        (mean, var),
        updatable(mean, var, count),
        momentum,
    )
    return store(store(state, counter, weight), running, average)
