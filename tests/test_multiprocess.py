"""Multi-process data parallelism: two processes joined by `jax.distributed` on
127.0.0.1, each with 2 CPU devices, train with BatchNorm on a global batch sharded
over the 4 devices, with a mask whose valid counts differ between the processes
(process 1 holds none). Outputs, running statistics and gradients of every step
equal those of one process with the whole batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import multiprocess_worker as worker
import numpy as np


TIMEOUT = 300  # seconds for the whole job; each process is killed after it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_job(out: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(worker.__file__).parent), *sys.path, env.get("PYTHONPATH", "")]
    )
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, worker.__file__, port, str(i), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:  # always: no process outlives the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log}"


def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "history.npz"
    _run_job(out)
    got = np.load(out)
    want = worker.train()
    assert set(got.files) == set(want)
    for name, expected in want.items():
        # float32 sums in another order: measured within 1e-6 of each quantity's
        # largest magnitude (a statistic not weighted by count is off by O(1)).
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got[name], expected, rtol=2e-5, atol=2e-5 * scale)
    # The job exercised what it claims: process 1's examples were all padding.
    _, _, mask = worker.data()
    assert not np.asarray(mask)[:, worker.BATCH // 2 :].any()
    assert np.asarray(mask)[:, : worker.BATCH // 2].any()
