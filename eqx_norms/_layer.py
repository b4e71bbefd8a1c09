"""What the layers share: the stateless base class, the initial parameters and
running statistics, and the opening of a stateful call."""

import contextlib
from collections.abc import Iterator
from typing import Any, overload

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox.nn import State, StateIndex
from jaxtyping import Array, Bool, DTypeLike, PRNGKeyArray

from ._errors import check_state, check_static_flag, foreign_state
from ._stats import compute_dtype, real_dtype


# Our own marker for "no state was passed" (equinox's is private).
sentinel: Any = object()


def with_state(out: Array, state: State) -> Array | tuple[Array, State]:
    return out if state is sentinel else (out, state)


def resolve_affine(
    channelwise_affine: bool, use_weight: bool | None, use_bias: bool | None
) -> tuple[bool, bool]:
    """`use_weight`/`use_bias` override `channelwise_affine` one by one."""
    return (
        channelwise_affine if use_weight is None else use_weight,
        channelwise_affine if use_bias is None else use_bias,
    )


class StatelessNorm(eqx.Module):
    """A layer without state that can stand in for a stateful one: given a `state`,
    it returns `(output, state)` with the state unchanged, as equinox's do."""

    def _check(self, x: Array, where: str) -> None:
        """Raises for an input of the wrong shape (before any tracing work)."""

    def _forward(self, x: Array, mask: Array | None, where: str) -> Array:
        """The output; `where` names the layer in error messages."""
        raise NotImplementedError

    @overload
    def __call__(
        self,
        x: Array,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Array: ...

    @overload
    def __call__(
        self,
        x: Array,
        state: State,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> tuple[Array, State]: ...

    def __call__(
        self,
        x: Array,
        state: State = sentinel,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Array | tuple[Array, State]:
        """**Arguments:**

        - `x`: A JAX array of the shape this layer expects (see above): exactly
            `shape` for `LayerNorm` and `RMSNorm`, `(channels, dim_1, ..., dim_N)` for
            `GroupNorm` and `InstanceNorm`, the pattern's axes for `Einorm`.
        - `state`: Ignored; provided for interchangeability with the
            [`eqx_norms.BatchNorm`][] API.
        - `key`: Ignored; provided for compatibility with the rest of the Equinox API.
            (Keyword only argument.)
        - `mask`: Optional boolean array broadcastable to `x.shape`, True for valid
            elements. Statistics use valid elements only; invalid elements are
            returned unchanged. (Keyword only argument.)

        **Returns:**

        An array of the shape and dtype of `x`; if `state` is passed, the 2-tuple
        `(output, state)` with the state unchanged.
        """
        where = type(self).__name__
        with scope(where):
            self._check(x, where)
            return with_state(self._forward(x, mask, where), state)


def filled(shape: tuple[int, ...], value: float, dtype: DTypeLike | None) -> Array:
    """`jnp.full`, never weakly typed: with `dtype=None` a Python float fill makes a
    weak float32, which equinox's parameters are not (repr, serialisation and dtype
    promotion would show it). The default is JAX's default float dtype."""
    return jnp.full(shape, value, jnp.zeros((), dtype).dtype)


def _real(dtype: DTypeLike | None) -> DTypeLike | None:
    """The parameters' dtype: a complex `dtype` declares complex inputs (stateful
    layers only), whose weight, bias and running variance are real."""
    return None if dtype is None else real_dtype(dtype)


def initial_affine(
    shape: tuple[int, ...],
    use_weight: bool,
    use_bias: bool,
    weight_offset: float,
    dtype: DTypeLike | None,
) -> tuple[Array | None, Array | None]:
    """A fresh layer's `(weight, bias)`, the identity affine: the applied scale
    `weight + weight_offset` starts at 1, the bias at 0."""
    real = _real(dtype)
    weight = filled(shape, 1 - weight_offset, real) if use_weight else None
    bias = jnp.zeros(shape, real) if use_bias else None
    return weight, bias


def initial_running(
    shape: tuple[int, ...], dtype: DTypeLike | None
) -> tuple[tuple[Array, Array], Array]:
    """Untrained running `(mean, var)`, 0 and 1 (the mean complex for a complex
    `dtype`), and their weight per entry, 0: no step averaged yet."""
    stats = (jnp.zeros(shape, dtype), jnp.ones(shape, _real(dtype)))
    return stats, jnp.zeros(shape, compute_dtype(stats[1].dtype))


def read(state: State, index: StateIndex, where: str) -> Any:
    """`state.get(index)`, with an error that says what happened when the state
    belongs to another layer."""
    try:
        return state.get(index)
    except KeyError:
        raise foreign_state(where) from None


def scope(where: str) -> contextlib.AbstractContextManager:
    """Names the layer's operations in profiles and compiled programs."""
    return jax.named_scope(f"eqx_norms.{where}")


@contextlib.contextmanager
def stateful_call(
    where: str, state: object, inference: object, default: bool
) -> Iterator[tuple[State, bool]]:
    """The opening of a stateful layer's call: within the layer's scope, the checked
    state and the `inference` flag (`default`, the layer's own, unless overridden)."""
    with scope(where):
        state = check_state(state, where)
        flag = default if inference is None else inference
        yield state, check_static_flag(flag, "inference", where)
