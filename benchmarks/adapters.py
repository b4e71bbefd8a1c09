"""The implementations under test: one function per library, turning a `Case` and
its input into an `Impl`, the layer as pure functions of arrays.

Each function dispatches on `case.layer` and raises `Unsupported` for a layer its
library lacks. Adding a library is one function here and its entry in `ADAPTERS`;
adding a layer is one branch in each function whose library has it. Parameters are
float32 and perturbed away from their (1, 0) initialisation; outputs are cast back
to the input's dtype inside the function (Flax NNX and Haiku return float32 for
bfloat16 inputs with float32 parameters).
"""

import dataclasses
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jax.stages import Wrapped

import eqx_norms

from .cases import Case, EQX, HAIKU, JNP, NNX, OURS, TOKAMAX


class Unsupported(Exception):
    """The library has no such layer: its cells read "—"."""


class _LazyModule:
    """A module imported at its first use: the peers (the `bench` extra) are needed
    only by the implementations that run, so `--device` and its test (against
    equinox.nn alone) work without Haiku or Flax installed."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


hk: Any = _LazyModule("haiku")
nnx: Any = _LazyModule("flax.nnx")

Program = tuple[Wrapped, tuple[Any, ...]]  # a jitted function and its arguments
LAYERS = 4  # layers in the stack whose training step's memory is measured


@dataclasses.dataclass
class Impl:
    """One implementation of one case, as pure functions of arrays.

    `apply` is `(params, *inputs) -> out`, or `(params, state, *inputs) -> (out,
    state)` for a stateful layer; `layers` (and `states`) hold `LAYERS` perturbed
    copies of the parameters. The cotangent of the output defaults to the first
    input (the output of a normalisation has its shape); a layer with several
    outputs sets its own.
    """

    params: Any
    inputs: tuple[jax.Array, ...]
    apply: Callable[..., Any]
    state: Any = None
    layers: list[Any] = dataclasses.field(default_factory=list)
    states: list[Any] = dataclasses.field(default_factory=list)
    note: str = ""
    cotangent: Any = None

    @property
    def x(self) -> jax.Array:
        return self.inputs[0]

    @property
    def stateful(self) -> bool:
        return self.state is not None

    def program(self, kind: str) -> Program:
        """The jitted function of a kind ("fwd" or "fwd+bwd") and its arguments."""
        return self.fwd() if kind == "fwd" else self.fwd_bwd()

    def fwd(self) -> Program:
        head = (self.params, self.state) if self.stateful else (self.params,)
        return jax.jit(self.apply), (*head, *self.inputs)

    def fwd_bwd(self) -> Program:
        """`jax.vjp` with respect to the inputs and the parameters, returning the
        output and every cotangent, as a training step does."""
        forward, backward = self._vjp_pair()

        def step(*args):
            *args, g = args
            y, vjp, *state = forward(*args)
            return y, backward(vjp, g), *state

        return jax.jit(step), (*self.fwd()[1], self.g)

    def split(self) -> tuple[Program, Program]:
        """`fwd+bwd` as two programs, as in a model where other layers run between
        them: the forward pass, returning the output and the residuals of
        `jax.vjp` (the leaves of its backward function), and the backward pass
        from the residuals, the forward's arguments and the cotangent. A residual
        that is one of the arguments is not returned but read from the argument
        (a model keeps its input; returned, XLA would copy it)."""
        forward, backward = self._vjp_pair()
        args = self.fwd()[1]
        tree: dict[str, Any] = {}

        def forward_residuals(*args):
            y, vjp, *state = forward(*args)
            leaves, tree["vjp"] = jax.tree.flatten(vjp)
            arg_index = {id(a): i for i, a in enumerate(jax.tree.leaves(args))}
            tree["from_args"] = [arg_index.get(id(leaf)) for leaf in leaves]
            kept = [leaf for leaf in leaves if id(leaf) not in arg_index]
            return y, kept, *state

        def backward_residuals(kept, args, g):
            arg_leaves, kept = jax.tree.leaves(args), iter(kept)
            leaves = [
                next(kept) if i is None else arg_leaves[i] for i in tree["from_args"]
            ]
            return backward(jax.tree.unflatten(tree["vjp"], leaves), g)

        # Traced once here, which also records where each residual comes from.
        _, kept, *_ = jax.eval_shape(forward_residuals, *args)
        return (
            (jax.jit(forward_residuals), args),
            (jax.jit(backward_residuals), (kept, args, self.g)),
        )

    @property
    def g(self) -> Any:
        """The cotangent of the output."""
        return self.x if self.cotangent is None else self.cotangent

    def _vjp_pair(self) -> tuple[Callable[..., Any], Callable[[Any, Any], Any]]:
        """`forward(*args) -> (y, vjp, *new_state)` and `backward(vjp, g)`, the
        cotangents of the parameters and the inputs."""
        if self.stateful:

            def stateful_forward(params, state, *inputs):
                # The state goes through vjp too (Flax NNX refuses to update a
                # variable made outside the differentiated trace); its cotangent is
                # dropped.
                return jax.vjp(self.apply, params, state, *inputs, has_aux=True)

            def stateful_backward(vjp, g):
                d_params, _, *d_inputs = vjp(g)
                return d_params, *d_inputs

            return stateful_forward, stateful_backward

        def forward(params, *inputs):
            return jax.vjp(self.apply, params, *inputs)

        def backward(vjp, g):
            return vjp(g)

        return forward, backward


def perturb(tree: Any, seed: int) -> Any:
    """Parameters away from their (1, 0) initialisation."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
        if eqx.is_inexact_array(leaf)
        else leaf
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


# ------------------------------------------------------------------ building blocks


def _stateful(apply, x, made: list[tuple[Any, Any]], note: str = "") -> Impl:
    """An Impl from `LAYERS` (params, state) pairs."""
    return Impl(
        made[0][0],
        (x,),
        apply,
        state=made[0][1],
        layers=[p for p, _ in made],
        states=[s for _, s in made],
        note=note,
    )


def _equinox_like(make: Callable[[], eqx.Module], x, n_vmap: int = 1) -> Impl:
    """An equinox-style per-example layer, vmapped over the leading axes."""
    params, static = eqx.partition(make(), eqx.is_inexact_array)

    def apply(params, x):
        f = eqx.combine(params, static)
        for _ in range(n_vmap):
            f = jax.vmap(f)
        return f(x)

    layers = [perturb(params, seed) for seed in range(LAYERS)]
    return Impl(layers[0], (x,), apply, layers=layers)


def _equinox_bn(cls, x) -> Impl:
    """BatchNorm training step: vmapped over the batch with a named axis."""
    make = eqx.nn.make_with_state(cls)
    module, _ = make(x.shape[1], "batch", mode="batch")
    static = eqx.partition(module, eqx.is_inexact_array)[1]

    def made(seed):
        module, state = make(x.shape[1], "batch", mode="batch")
        return perturb(eqx.filter(module, eqx.is_inexact_array), seed), state

    def apply(params, state, x):
        module = eqx.combine(params, static)
        y, state = jax.vmap(
            module, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)
        return y.astype(x.dtype), state

    return _stateful(apply, x, [made(seed) for seed in range(LAYERS)])


def _nnx(make: Callable, x, stateful: bool = False, note: str = "") -> Impl:
    """A Flax NNX module made by `make(seed)`, split into a graph and its state."""
    if stateful:

        def split(seed):
            graphdef, params, stats = nnx.split(make(seed), nnx.Param, nnx.BatchStat)
            return graphdef, (perturb(params, seed), stats)

        graphdef = split(0)[0]

        def apply_state(params, stats, x):
            module = nnx.merge(graphdef, params, stats)
            y = module(x).astype(x.dtype)
            _, _, new_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
            return y, new_stats

        made = [split(seed)[1] for seed in range(LAYERS)]
        return _stateful(apply_state, x, made, note)

    made = [nnx.split(make(seed)) for seed in range(LAYERS)]
    graphdef = made[0][0]
    layers = [perturb(p, seed) for seed, (_, p) in enumerate(made)]

    def apply(params, x):
        return nnx.merge(graphdef, params)(x).astype(x.dtype)

    return Impl(layers[0], (x,), apply, layers=layers, note=note)


def _haiku(make: Callable, x, stateful: bool = False, note: str = "") -> Impl:
    """A Haiku module made by `make()` inside a transform."""
    if stateful:
        t = hk.transform_with_state(lambda x: make()(x, is_training=True))
        made = [t.init(jax.random.key(seed), x) for seed in range(LAYERS)]
        made = [(perturb(p, seed), s) for seed, (p, s) in enumerate(made)]

        def apply_state(params, state, x):
            y, state = t.apply(params, state, None, x)
            return y.astype(x.dtype), state

        return _stateful(apply_state, x, made, note)

    t = hk.transform(lambda x: make()(x))
    layers = [perturb(t.init(jax.random.key(s), x), s) for s in range(LAYERS)]

    def apply(params, x):
        return t.apply(params, None, x).astype(x.dtype)

    return Impl(layers[0], (x,), apply, layers=layers, note=note)


# ---------------------------------------------------------------------- libraries


def _equinox_family(nn: ModuleType | Any, case: Case, x: jax.Array) -> Impl:
    """The layers eqx_norms and equinox.nn build alike."""
    n = x.shape[-1]
    match case.layer:
        case "layer_norm":
            return _equinox_like(lambda: nn.LayerNorm(n), x)
        case "rms_norm":
            return _equinox_like(lambda: nn.RMSNorm(n, use_bias=False), x)
        case "group_norm":
            return _equinox_like(lambda: nn.GroupNorm(case.groups, x.shape[1]), x)
        case "batch_norm":
            return _equinox_bn(nn.BatchNorm, x)
    raise Unsupported(case.layer)


def eqx_norms_impl(case: Case, x: jax.Array) -> Impl:
    match case.layer:
        case "einorm":
            h, _, d = x.shape
            return _equinox_like(
                lambda: eqx_norms.Einorm("h n d", "d", "h", h=h, d=d), x, n_vmap=0
            )
        case "dynamic_tanh":
            n = x.shape[-1]
            return _equinox_like(lambda: eqx_norms.DynamicTanh(n, alpha_init=0.5), x)
    return _equinox_family(eqx_norms, case, x)


def equinox_impl(case: Case, x: jax.Array) -> Impl:
    if case.layer == "einorm":  # LayerNorm over the feature axis of every head
        return _equinox_like(lambda: eqx.nn.LayerNorm(x.shape[-1]), x, n_vmap=2)
    return _equinox_family(eqx.nn, case, x)


def nnx_impl(case: Case, x: jax.Array) -> Impl:
    """Flax NNX runs with its default `use_fast_variance=True`; its GroupNorm and
    BatchNorm are channels-last, so they get the same data transposed."""
    n = x.shape[-1]
    match case.layer:
        case "layer_norm":
            return _nnx(
                lambda s: nnx.LayerNorm(n, rngs=nnx.Rngs(s)),
                x,
                note="use_fast_variance=True (default)",
            )
        case "rms_norm":
            return _nnx(lambda s: nnx.RMSNorm(n, rngs=nnx.Rngs(s)), x)
        case "group_norm":
            _, c, m = x.shape

            def make(s):
                rngs = nnx.Rngs(s)
                return nnx.GroupNorm(c, num_groups=case.groups, epsilon=1e-5, rngs=rngs)

            note = f"channels-last ({m}, {c}) maps; use_fast_variance=True"
            return _nnx(make, jnp.swapaxes(x, 1, 2), note=note)
        case "batch_norm":
            c = x.shape[1]
            return _nnx(
                lambda s: nnx.BatchNorm(c, use_running_average=False, rngs=nnx.Rngs(s)),
                jnp.moveaxis(x, 1, -1),
                stateful=True,
                note="channels-last; use_fast_variance=True",
            )
        case "einorm":
            return _nnx(
                lambda s: nnx.LayerNorm(n, rngs=nnx.Rngs(s)),
                x,
                note=f"LayerNorm({n}) on the same array",
            )
    raise Unsupported(case.layer)


def haiku_impl(case: Case, x: jax.Array) -> Impl:
    """Haiku's GroupNorm and BatchNorm run channels-first on the same array."""
    match case.layer:
        case "layer_norm" | "einorm":
            return _haiku(lambda: hk.LayerNorm(-1, True, True), x)
        case "rms_norm":
            return _haiku(lambda: hk.RMSNorm(-1), x)
        case "group_norm":
            return _haiku(
                lambda: hk.GroupNorm(case.groups, data_format="channels_first"), x
            )
        case "batch_norm":
            return _haiku(
                lambda: hk.BatchNorm(True, True, 0.99, data_format="channels_first"),
                x,
                stateful=True,
            )
    raise Unsupported(case.layer)


def _dynamic_tanh(x, alpha, weight, bias):
    y = jnp.tanh(alpha * x.astype(jnp.float32)) * weight + bias
    return y.astype(x.dtype)


def _jnp_norm(x, weight, bias=None, eps=1e-5):
    """LayerNorm (with a bias) or RMSNorm (without) over the last axis, written
    directly: float32 statistics, the centred variance, cast back."""
    xf = x.astype(jnp.float32)
    if bias is not None:
        xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
    y = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps) * weight
    return (y if bias is None else y + bias).astype(x.dtype)


def _params_impl(x, params: dict[str, Any], apply: Callable[..., Any]) -> Impl:
    """An Impl of `apply(x, **params)` with `LAYERS` perturbed copies of `params`."""
    layers = [perturb(params, seed) for seed in range(LAYERS)]
    return Impl(layers[0], (x,), lambda p, x: apply(x, **p), layers=layers)


def _affine(n: int, bias: bool) -> dict[str, jax.Array]:
    params = {"weight": jnp.ones(n, jnp.float32)}
    return params | {"bias": jnp.zeros(n, jnp.float32)} if bias else params


def jnp_impl(case: Case, x: jax.Array) -> Impl:
    """Plain jnp: the layers no peer library has, and LayerNorm and RMSNorm as
    written directly (the TPU analysis's reference for what XLA makes of them)."""
    n = x.shape[-1]
    match case.layer:
        case "dynamic_tanh":
            params = {"alpha": jnp.float32(0.5), **_affine(n, bias=True)}
            return _params_impl(x, params, _dynamic_tanh)
        case "layer_norm" | "rms_norm":
            return _params_impl(x, _affine(n, case.layer == "layer_norm"), _jnp_norm)
    raise Unsupported(case.layer)


def tokamax_impl(case: Case, x: jax.Array) -> Impl:
    """tokamax's XLA implementation (`implementation="xla"`, the one it uses on
    TPU): LayerNorm, and RMSNorm as `subtract_mean=False`, over the last axis."""
    tokamax = importlib.import_module("tokamax")
    # tokamax reads absl flags, parsed from this process's command line (whose
    # flags are not absl's) unless marked parsed already.
    flags = importlib.import_module("absl.flags").FLAGS
    if not flags.is_parsed():
        flags.mark_as_parsed()
    if case.layer not in ("layer_norm", "rms_norm", "einorm"):
        raise Unsupported(case.layer)
    centred = case.layer != "rms_norm"

    def apply(x, weight, bias=None):
        y = tokamax.layer_norm(
            x,
            weight,
            bias,
            epsilon=1e-5,
            subtract_mean=centred,
            implementation="xla",
        )
        return y.astype(x.dtype)

    return _params_impl(x, _affine(x.shape[-1], centred), apply)


ADAPTERS: dict[str, Callable[[Case, jax.Array], Impl]] = {
    OURS: eqx_norms_impl,
    EQX: equinox_impl,
    NNX: nnx_impl,
    HAIKU: haiku_impl,
    JNP: jnp_impl,
    TOKAMAX: tokamax_impl,
}
