"""``nextstep train --dask ADDRESS`` when a worker dies while LightGBM trains on it.

``lightgbm.dask`` pins one training task to each worker, and the workers talk to each other
over LightGBM's own sockets: Dask cannot move that task to another worker, so losing one ends
the job. The contract is that it ends as an input-style error — one line naming the lost worker,
exit code 2, no traceback — and never hangs waiting for a worker that will not come back.

The job runs as a real ``nextstep`` process against a real ``LocalCluster`` (two single-threaded
worker processes); the test kills one worker's process only once the scheduler reports a
LightGBM training task running on it, so the kill always lands mid-fit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features.catalog import load_catalog
from features.events import load_events, write_events
from simulation.simulate import write_simulation
from simulation.worlds import load_world

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dask")]

USERS = 1500
PARTS = 4
JOB_DEADLINE = 45.0  # seconds for the whole job, kill included (it takes ~10 s unhurt)
TRAIN_TASK = "_train_part"  # lightgbm.dask's per-worker training task (its key prefix)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A two-worker process ``LocalCluster`` whose scratch space is the test's folder; closed
    (workers and nannies stopped) in teardown whatever the test did to it."""
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "port 8787 in use" when another cluster runs
        c = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            local_directory=str(tmp_path / "dask-scratch"),
            silence_logs=logging.CRITICAL,
        )
    try:
        with Client(c) as client:
            yield c.scheduler_address, client
    finally:
        c.close()


def _write_log(folder: Path) -> tuple[Path, Path]:
    """A simulated log split into ``PARTS`` Parquet files (the directory ``--events`` reads)."""
    write_simulation(load_world("ladder"), USERS, 3, folder)
    catalog = load_catalog(folder / "catalog.yaml")
    frame = load_events(folder / "events.csv", catalog).frame
    parts = folder / "parts"
    parts.mkdir()
    bounds = np.linspace(0, len(frame), PARTS + 1).astype(int)
    for i in range(PARTS):
        write_events(frame.iloc[bounds[i] : bounds[i + 1]], parts / f"part-{i:03d}.parquet")
    return parts, folder / "catalog.yaml"


def _worker_training(client: Any) -> str | None:
    """The address of a worker the scheduler reports running a LightGBM training task on."""
    for worker, keys in client.processing().items():
        if any(str(k).startswith(TRAIN_TASK) for k in keys):
            return str(worker)
    return None


def test_losing_a_worker_mid_fit_is_a_clear_error(tmp_path: Path, cluster) -> None:
    address, client = cluster
    events, catalog = _write_log(tmp_path / "data")
    pids = client.run(os.getpid)  # worker address -> its process id
    env = {
        **os.environ,
        "NEXTSTEP_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}",
    }
    cmd = [sys.executable, "-m", "nextstep.cli.app", "train", "--events", str(events)]
    cmd += ["--catalog", str(catalog), "--dask", address]
    job = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + JOB_DEADLINE
        victim = None
        while victim is None and job.poll() is None and time.monotonic() < deadline:
            victim = _worker_training(client)
            if victim is None:
                time.sleep(0.01)
        assert victim is not None, "the job ended (or stalled) before LightGBM started training"
        os.kill(pids[victim], signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            out, err = job.communicate(timeout=max(1.0, deadline - t_kill))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job hung after its worker was killed (>{deadline - t_kill:.0f} s)")
    finally:
        if job.poll() is None:
            job.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.communicate(timeout=30)
    assert job.returncode == 2, (job.returncode, out, err)
    assert "Traceback" not in out + err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the Dask cluster lost worker {victim} "), err
    assert "while LightGBM was training" in last
