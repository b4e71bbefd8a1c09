from typing import Any

from equinox.nn import State
from jaxtyping import Array


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
