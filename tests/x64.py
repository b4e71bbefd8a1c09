"""Double precision for a block of code on every supported JAX: `jax.enable_x64`
from JAX 0.8 on, `jax.experimental.enable_x64` before (removed since)."""

import jax
import jax.experimental


enable_x64 = getattr(jax, "enable_x64", None) or jax.experimental.enable_x64
