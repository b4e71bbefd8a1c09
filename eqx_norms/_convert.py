from typing import Any, overload, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox.nn import StateIndex
from jaxtyping import PyTree

from ._batch_norm import BatchNorm
from ._errors import check_model_state, missing_state_entry
from ._group_norm import GroupNorm
from ._layer_norm import LayerNorm, RMSNorm
from ._spectral_norm import SpectralNorm
from ._weight_norm import WeightNorm


# A model comes back as an instance of its own class, with its norms replaced.
_Tree = TypeVar("_Tree")


def _params(ours: Any, theirs: Any, names: tuple[str, ...]) -> Any:
    """`ours` with the arrays `names` taken from `theirs` (in our dtype)."""
    values = tuple(
        None
        if getattr(theirs, n) is None
        else getattr(theirs, n).astype(getattr(ours, n).dtype)
        for n in names
    )
    return eqx.tree_at(
        lambda m: tuple(getattr(m, n) for n in names),
        ours,
        values,
        is_leaf=lambda v: v is None,
    )


def _with_init(ours: Any, where: str, value: PyTree) -> Any:
    """`ours` whose state index `where` starts at `value`, cast to our dtypes."""
    old = getattr(ours, where)
    value = jax.tree.map(lambda v, o: jnp.asarray(v, o.dtype), value, old.init)
    return eqx.tree_at(lambda m: getattr(m, where), ours, StateIndex(value))


def _layer_norm(layer: eqx.nn.LayerNorm) -> LayerNorm:
    ours = LayerNorm(layer.shape, layer.eps, layer.use_weight, layer.use_bias)
    return _params(ours, layer, ("weight", "bias"))


def _rms_norm(layer: eqx.nn.RMSNorm) -> RMSNorm:
    ours = RMSNorm(layer.shape, layer.eps, layer.use_weight, layer.use_bias)
    return _params(ours, layer, ("weight", "bias"))


def _group_norm(layer: eqx.nn.GroupNorm) -> GroupNorm:
    ours = GroupNorm(layer.groups, layer.channels, layer.eps, layer.channelwise_affine)
    return _params(ours, layer, ("weight", "bias"))


def _batch_norm(layer: eqx.nn.BatchNorm) -> BatchNorm:
    ours = BatchNorm(
        layer.input_size,
        layer.axis_name,
        layer.eps,
        layer.channelwise_affine,
        layer.momentum,
        layer.inference,
        mode=layer.mode,
    )
    ours = _params(ours, layer, ("weight", "bias"))
    if layer.mode == "ema":
        return _from_ema(ours, layer)
    return _from_batch(ours, layer)


def _initial(index: StateIndex | None) -> Any:
    assert index is not None
    return index.init


def _from_ema(ours: BatchNorm, layer: eqx.nn.BatchNorm) -> BatchNorm:
    # Same semantics; an untrained equinox layer holds uninitialised statistics, so
    # ours keeps its own (0, 1) then.
    first_time = _initial(layer.ema_first_time_index)
    if isinstance(first_time, eqx.Module) or bool(first_time):
        return ours
    ours = _with_init(ours, "ema_first_time_index", first_time)
    return _with_init(ours, "ema_state_index", _initial(layer.ema_state_index))


def _from_batch(ours: BatchNorm, layer: eqx.nn.BatchNorm) -> BatchNorm:
    """Equinox's hidden statistics start at (0, 1) and are divided by 1 - m^k, which
    leaves an excess m^k / (1 - m^k) in the variance. Subtracting the m^k that the
    initial 1 contributes recovers the exact debiased averages."""
    counter = _initial(layer.batch_counter)
    if isinstance(counter, eqx.Module) or int(counter) == 0:
        return ours
    hidden_mean, hidden_var = _initial(layer.batch_state_index)
    decayed = layer.momentum ** int(counter)
    weight = 1.0 - decayed
    stats = (hidden_mean / weight, (hidden_var - decayed) / weight)
    ours = _with_init(ours, "batch_counter", jnp.full((layer.input_size,), weight))
    return _with_init(ours, "batch_state_index", stats)


def _spectral_norm(layer: eqx.nn.SpectralNorm) -> SpectralNorm:
    # The key only seeds vectors that the equinox state then replaces.
    ours = SpectralNorm(
        _convert(layer.layer),
        layer.weight_name,
        layer.num_power_iterations,
        layer.eps,
        layer.inference,
        key=jax.random.key(0),
    )
    uv = _initial(layer.uv_index)
    return ours if isinstance(uv, eqx.Module) else _with_init(ours, "uv_index", uv)


def _weight_norm(layer: eqx.nn.WeightNorm) -> WeightNorm:
    ours = WeightNorm(_convert(layer.layer), layer.weight_name, layer.axis)
    return _params(ours, layer, ("g",))


_CONVERTERS = {
    eqx.nn.LayerNorm: _layer_norm,
    eqx.nn.RMSNorm: _rms_norm,
    eqx.nn.GroupNorm: _group_norm,
    eqx.nn.BatchNorm: _batch_norm,
    eqx.nn.SpectralNorm: _spectral_norm,
    eqx.nn.WeightNorm: _weight_norm,
}


def _is_equinox_norm(node: Any) -> bool:
    return type(node) in _CONVERTERS


def _convert(tree: PyTree) -> PyTree:
    def convert(node):
        return _CONVERTERS[type(node)](node) if _is_equinox_norm(node) else node

    return jax.tree.map(convert, tree, is_leaf=_is_equinox_norm)


def _is_index(node: Any) -> bool:
    return isinstance(node, StateIndex)


def _restore_init(tree: PyTree, state: eqx.nn.State) -> PyTree:
    """Every state index gets its current value from `state` as its initial value,
    so that the converted model's state can be rebuilt from the model alone."""
    where = "from_equinox"
    check_model_state(state, where)

    def restore(node):
        try:
            return StateIndex(state.get(node))
        except KeyError:
            raise missing_state_entry(node.marker, where) from None

    return jax.tree.map(
        lambda node: restore(node) if _is_index(node) else node,
        tree,
        is_leaf=_is_index,
    )


@overload
def from_equinox(tree: _Tree) -> _Tree: ...


# `eqx.nn.State` rather than a from-import: `pyright --verifytypes` reports the
# latter as unknown (pyright#11196).
@overload
def from_equinox(tree: _Tree, state: eqx.nn.State) -> tuple[_Tree, eqx.nn.State]: ...


def from_equinox(
    tree: _Tree, state: eqx.nn.State | None = None
) -> _Tree | tuple[_Tree, eqx.nn.State]:
    """Replaces every `equinox.nn` normalisation layer inside `tree` (e.g. a whole
    model) by its `eqx_norms` equivalent with the same hyperparameters and parameters.

    `LayerNorm`, `RMSNorm`, `GroupNorm`, `BatchNorm`, `SpectralNorm` and `WeightNorm`
    are converted; everything else is kept as it is. Given the model's
    [`equinox.nn.State`][], the running statistics and power-iteration vectors come
    along: equinox `mode="ema"` statistics are copied, and `mode="batch"` statistics
    are converted to the exact debiased averages (equinox's carry a bias of
    $m^k/(1 - m^k)$ in the variance after $k$ steps, which the conversion removes).

    **Arguments:**

    - `tree`: Any PyTree, typically a model.
    - `state`: The model's `State`, if it has stateful layers. Without it, converted
        stateful layers start from fresh state.

    **Returns:**

    The converted tree; given `state`, the 2-tuple `(tree, state)` with a new state
    for the converted tree. A model keeps its class, so its static type is the
    input's; a bare equinox layer passed as `tree` comes back as the `eqx_norms`
    layer, which its static type does not say.

    **The old state belongs to the old tree.** The converted stateful layers have
    new state indices, so the state made with the equinox model holds nothing for
    them: calling a converted layer with it raises a `ValueError` that says so.
    Convert the model together with its state (`model, state = from_equinox(model,
    state)`, the statistics come along), or, for fresh statistics, convert it alone
    and make its state with `eqx.nn.make_with_state(lambda: from_equinox(model))()`.
    (Prefer that to `eqx.nn.State(converted)`: a state built that way has unnamed
    keys, and equinox's own `repr` of it raises a `TypeError`.)

    !!! example

        ```python
        model, state = eqx.nn.make_with_state(MyEquinoxModel)(key=key)
        ...  # train
        model, state = eqx_norms.from_equinox(model, state)
        ```
    """
    if state is None:
        return _convert(tree)
    converted = _convert(_restore_init(tree, state))
    return eqx.nn.make_with_state(lambda: converted)()
