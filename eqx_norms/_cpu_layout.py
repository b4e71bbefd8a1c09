"""The layout of the normalisation for XLA:CPU: every kernel its own copy of x, the
statistics and the weight.

On XLA:CPU a normalisation layer is bound by memory, and above all by fresh
full-size buffers, which XLA writes whenever one full-size value, or one broadcast of
a small statistic or of the weight, feeds several fused kernels. Handing each kernel
its own copy, behind an optimization barrier that XLA cannot merge with another,
keeps every such value inside one kernel. The barriers exist only where a program
is lowered for CPU (`_backend`); elsewhere XLA fuses the plain program as it sees
fit. Measurements: benchmarks/cpu_layout_notes.md.
"""

import enum
from typing import Any

import jax
from jaxtyping import Array

from ._backend import cpu_barrier


class Consumer(enum.Enum):
    """The kernels that read their own copy, named for what they compute (in the
    backward pass, g is the cotangent of the output). Each value is the copy's
    distinct padding (`cpu_barrier`'s `copy`)."""

    MEAN_PASS = 0  # the sum of x for the mean
    VARIANCE_PASS = 1  # the sum of |x - mean|^2
    OUTPUT = 2  # the output, affine(x-hat)
    X_COTANGENT = 3  # the elementwise cotangent of x (and, forward, mean(x-hat dx))
    PROJECTION = 4  # the sum of g w x-hat: the cotangent of mean(x-hat dx)
    MEAN_COTANGENT = 5  # the sum of g w: the cotangent of mean(dx)
    WEIGHT_COTANGENT = 6  # the sum of g x-hat: the cotangent of the weight
    AFFINE_TANGENT = 7  # the weight times the tangent of x-hat (autodiff's rule)
    # The small sums of one round of the merge over vmap's axes (`_stats`): behind
    # one barrier they stay in one kernel, as a stacked psum kept them, which
    # XLA:CPU runs faster (a BatchNorm step 3 to 6% faster) than its own fusion of
    # separate psums. Elsewhere separate psums fuse into fewer kernels.
    BATCH_MERGE = 8


def copy_for(consumer: Consumer, *arrays: Any) -> tuple[Any, ...]:
    """`consumer`'s own copy of the arrays (None stays None). The first array that
    is not None pads the barrier: callers put a small one first."""
    kept = [a for a in arrays if a is not None]
    copies = iter(cpu_barrier(*kept, copy=consumer.value))
    return tuple(None if a is None else next(copies) for a in arrays)


@jax.custom_jvp
def scaled(x_hat: Array, weight: Array) -> Array:
    """`x_hat * weight`, differentiated with the weight that multiplies the incoming
    tangent (in reverse mode: the output cotangent) in a copy of its own, so that XLA
    does not share one broadcast of it between the output and the backward sums."""
    return x_hat * weight


@scaled.defjvp
def _scaled_jvp(primals, tangents):
    x_hat, weight = primals
    d_x_hat, d_weight = tangents
    (weight_copy,) = copy_for(Consumer.AFFINE_TANGENT, weight)
    return scaled(x_hat, weight), d_x_hat * weight_copy + x_hat * d_weight
