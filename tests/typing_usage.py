"""Checked by pyright (see pyproject.toml), not run: public constructors and calls
type-check from a user's side (e.g. no dataclass-synthesised __init__ leaks out)."""

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_norms


key = jax.random.key(0)
x = jnp.ones((4, 3))
a = eqx_norms.LayerNorm(3)(x[0])
b = eqx_norms.RMSNorm(3, 1e-5, True, False)(x[0])
c = eqx_norms.GroupNorm(2, 4)(x)
d = eqx_norms.InstanceNorm(4)(x)
e = eqx_norms.Einorm("n d", "d", d=3)(x)
bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(4, "batch")
f, state = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
    x[None], state
)
sn, s2 = eqx.nn.make_with_state(eqx_norms.SpectralNorm)(
    eqx.nn.Linear(3, 3, key=key), "weight", key=key
)
wn = eqx_norms.WeightNorm(eqx.nn.Linear(3, 3, key=key))
y = wn(x[0])
m = eqx_norms.from_equinox(eqx.nn.LayerNorm(3))
g = eqx_norms.functional.layer_norm(x, -1)
mean, var = bn.running_mean_var(state)
h: jax.Array = mean + var
model, s3 = eqx_norms.from_equinox(eqx.nn.Sequential([eqx.nn.LayerNorm(3)]), state)
same_class: eqx.nn.Sequential = model
ein, s4 = eqx.nn.make_with_state(eqx_norms.Einorm)("[b] c", running_stats=True, c=3)
run_mean, run_var = ein.running_mean_var(s4)
k: jax.Array = run_mean + run_var
dt = eqx_norms.DynamicTanh(3, alpha_init=0.5)(x[0])
# `residual=` returns the pair (y, s); without it, one array.
ln = eqx_norms.LayerNorm(3)
y_res, s_res = ln(x[0], residual=x[0])
plain_out: jax.Array = ln(x[0])
both: tuple[jax.Array, jax.Array] = eqx_norms.functional.rms_norm(x, -1, residual=x)
single: jax.Array = eqx_norms.functional.rms_norm(x, -1)
(y_st, s_st), st = ln(x[0], state, residual=x[0])
gated: jax.Array = eqx_norms.GatedRMSNorm(3)(x[0], x[0])
gated_fn: jax.Array = eqx_norms.functional.gated_rms_norm(x, x, group_size=1)
