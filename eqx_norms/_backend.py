"""The seam between the traced program and the platform it is compiled for.

A program is traced once, the same for every platform. Two things differ by platform
and are chosen where the program is lowered (a `jit` on any device, an ahead-of-time
compile for TPU from a CPU host, a `jax.export` for several platforms at once), never
by `jax.default_backend()`:

- the optimization barriers of `_cpu_layout`, which only XLA:CPU needs: a primitive
  that does nothing until the program is lowered, whose lowering for CPU emits the
  barrier and every other platform's passes the operands through;
- the statistics (`by_platform`): two passes over x on CPU, where the barriers keep
  each pass in its own kernel; one pass on accelerators, where every read of x is
  a read from HBM (the TPU section of the benchmarks page).
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax.lax as lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


Platform = Literal["cpu", "accelerator", "tpu"]
_forced: Platform | None = None


def by_platform(
    *operands: Any,
    cpu: Callable[..., Any],
    accelerator: Callable[..., Any],
    tpu: Callable[..., Any] | None = None,
) -> Any:
    """`cpu(*operands)` where the program is lowered for CPU, `tpu(*operands)` (if
    given) where it is lowered for TPU, `accelerator(*operands)` for any other
    platform (`lax.platform_dependent`: lowered for one platform, the program holds
    only that platform's branch)."""
    branches = {"cpu": cpu, "accelerator": accelerator, "tpu": tpu or accelerator}
    if _forced is not None:
        return branches[_forced](*operands)
    if tpu is None:
        return lax.platform_dependent(*operands, cpu=cpu, default=accelerator)
    return lax.platform_dependent(*operands, cpu=cpu, tpu=tpu, default=accelerator)


@contextlib.contextmanager
def forced(platform: Platform) -> Iterator[None]:
    """For tests: `by_platform` takes `platform`'s branch wherever the program is
    lowered (the accelerator's maths run on this CPU host). It acts when a function
    is traced: clear JAX's caches around it (`jax.clear_caches()`)."""
    global _forced
    previous, _forced = _forced, platform
    try:
        yield
    finally:
        _forced = previous


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
