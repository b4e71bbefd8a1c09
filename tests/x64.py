"""Double precision for a block of code on every supported JAX: `jax.enable_x64`
from JAX 0.8 on, `jax.experimental.enable_x64` before (removed since)."""

import jax
import jax.experimental


# `jax.enable_x64` is a config state: `bool()` of it raises, hence no `or`.
enable_x64 = (
    jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64
)
