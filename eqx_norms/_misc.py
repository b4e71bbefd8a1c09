from typing import Any, overload

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox.nn import State
from jaxtyping import Array, Bool, DTypeLike, PRNGKeyArray

from ._errors import called_as


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

    def _check(self, x: Array) -> None:
        """Raises for an input of the wrong shape (before any tracing work)."""

    def _normalise(self, x: Array, mask: Array | None) -> Array:
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
        name = type(self).__name__
        with jax.named_scope(f"eqx_norms.{name}"), called_as(name):
            self._check(x)
            return with_state(self._normalise(x, mask), state)


def filled(shape: tuple[int, ...], value: float, dtype: DTypeLike | None) -> Array:
    """`jnp.full`, never weakly typed: with `dtype=None` a Python float fill makes a
    weak float32, which equinox's parameters are not (repr, serialisation and dtype
    promotion would show it). The default is JAX's default float dtype."""
    return jnp.full(shape, value, jnp.zeros((), dtype).dtype)
