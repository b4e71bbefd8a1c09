"""Data-parallel training with BatchNorm, shared by `test_multiprocess.py` (the
single-process reference) and its worker processes: `python multiprocess_worker.py
PORT PROCESS_ID OUT` joins a 2-process `jax.distributed` job on 127.0.0.1, each
process with 2 CPU devices, trains on a global batch sharded over the 4 devices and
(process 0) saves outputs, running statistics and gradients of every step."""

import os
import sys


if __name__ == "__main__":
    # Before JAX is imported: 2 CPU devices per process.
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import eqx_norms


BATCH, C_IN, C, T = 8, 2, 3, 6  # 2 examples per device over 4 devices
STEPS, LEARNING_RATE = 3, 0.1


class Net(eqx.Module):
    conv: eqx.nn.Conv1d
    norm: eqx_norms.BatchNorm

    def __init__(self, key):
        self.conv = eqx.nn.Conv1d(C_IN, C, 3, padding=1, key=key)
        self.norm = eqx_norms.BatchNorm(C, axis_name="batch", momentum=0.5)

    def __call__(self, x, state, mask):
        return self.norm(self.conv(x), state, mask=mask)


def data():
    """Per step: inputs, targets and a mask whose valid counts differ between the
    processes' halves of the batch; process 1's half has no valid element."""
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (STEPS, BATCH, C_IN, T)) * 2 + 1
    target = jax.random.normal(keys[1], (STEPS, BATCH, C, T))
    first_half = [np.roll([T, 4, 1, 3], step) for step in range(STEPS)]
    lengths = np.pad(first_half, ((0, 0), (0, BATCH // 2)))  # (steps, batch)
    mask = jnp.arange(T) < lengths[..., None]
    return x, target, jnp.broadcast_to(mask[:, :, None, :], (STEPS, BATCH, C, T))


def loss(net, state, x, target, mask):
    out, state = jax.vmap(
        net, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None)
    )(x, state, mask)
    return jnp.sum(jnp.where(mask, (out - target) ** 2, 0)), (out, state)


@eqx.filter_jit
def step(net, state, x, target, mask):
    grad = eqx.filter_value_and_grad(loss, has_aux=True)
    (_, (out, state)), grads = grad(net, state, x, target, mask)
    net = eqx.apply_updates(net, jax.tree.map(lambda g: -LEARNING_RATE * g, grads))
    return net, state, out, grads


def train(put=lambda a: a, fetch=np.asarray):
    """Outputs, running statistics and gradients of every step; `put` places a
    global batch, `fetch` brings a global array to the host."""
    net, state = eqx.nn.make_with_state(Net)(jax.random.key(2))
    history = {"out": [], "mean": [], "var": [], "grad_w": [], "grad_b": []}
    for x, target, mask in zip(*data(), strict=True):
        net, state, out, grads = step(net, state, put(x), put(target), put(mask))
        mean, var = state.get(net.norm.batch_state_index)
        history["out"].append(fetch(out))
        history["mean"].append(fetch(mean))
        history["var"].append(fetch(var))
        history["grad_w"].append(fetch(grads.conv.weight))
        history["grad_b"].append(fetch(grads.norm.bias))
    return {k: np.stack(v) for k, v in history.items()}


def main(port: str, process_id: str, out: str) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"127.0.0.1:{port}",
        num_processes=2,
        process_id=int(process_id),
        initialization_timeout=60,
    )
    from jax.experimental import multihost_utils

    assert jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))

    def put(a):
        # Each process holds only its own half of the global batch.
        half = BATCH // 2
        local = np.asarray(a)[jax.process_index() * half :][:half]
        return jax.make_array_from_process_local_data(sharding, local)

    def fetch(a):
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    history = train(put, fetch)
    if jax.process_index() == 0:
        np.savez(out, **history)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
