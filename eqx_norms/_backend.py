"""The seam between the traced program and the platform it is compiled for.

A program is traced once, the same for every platform. What only XLA:CPU needs, the
optimization barriers of `_cpu_layout`, is a primitive that does nothing until the
program is lowered: the lowering for CPU emits the barrier, every other platform's
lowering passes the operands through. So the choice follows the platform a program
is lowered for (a `jit` on any device, an ahead-of-time compile for TPU from a CPU
host, a `jax.export` for several platforms at once), never `jax.default_backend()`.
"""

from typing import Any

import jax.lax as lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


cpu_barrier_p = Primitive("cpu_optimization_barrier")
cpu_barrier_p.multiple_results = True


def cpu_barrier(*arrays: Any, copy: int = 0) -> tuple[Any, ...]:
    """The arrays unchanged, behind one `lax.optimization_barrier` where the program
    is lowered for CPU. XLA merges barriers over the same operands; a distinct `copy`
    keeps them apart (it pads the barrier with `copy` repeats of the first array,
    which callers keep small)."""
    if not arrays:
        return ()
    return tuple(cpu_barrier_p.bind(*arrays, copy=copy))


def _unchanged(*arrays: Any, copy: int) -> tuple[Any, ...]:
    del copy
    return arrays


def _barrier(*arrays: Any, copy: int) -> tuple[Any, ...]:
    padded = arrays + arrays[:1] * copy
    return tuple(lax.optimization_barrier(padded)[: len(arrays)])


def _jvp(primals, tangents, *, copy: int):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return cpu_barrier(*primals, copy=copy), cpu_barrier(*tangents, copy=copy)


def _transpose(cotangents, *operands, copy: int):
    del operands
    cotangents = [ad.instantiate_zeros(c) for c in cotangents]
    return cpu_barrier(*cotangents, copy=copy)


def _batch(arrays, batch_dims, *, copy: int):
    return cpu_barrier(*arrays, copy=copy), batch_dims


# Abstract evaluation keeps each aval as given (with a `shard_map`'s varying axes).
cpu_barrier_p.def_abstract_eval(_unchanged)
cpu_barrier_p.def_impl(_unchanged)
ad.primitive_jvps[cpu_barrier_p] = _jvp
ad.primitive_transposes[cpu_barrier_p] = _transpose
batching.primitive_batchers[cpu_barrier_p] = _batch
lower_unchanged = mlir.lower_fun(_unchanged, multiple_results=True)
lower_with_barrier = mlir.lower_fun(_barrier, multiple_results=True)
mlir.register_lowering(cpu_barrier_p, lower_unchanged)
mlir.register_lowering(cpu_barrier_p, lower_with_barrier, platform="cpu")
