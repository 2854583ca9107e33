"""``--dask`` addresses: ``local`` / ``local:N`` start N workers, a bad N or an empty address is
refused before anything starts, and an unreachable scheduler is a clear error (exit code 2 from
the command line), not a traceback or a hang."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from features.errors import NextstepError
from training.dask_train import dask_client

pytestmark = pytest.mark.xdist_group("dask")


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("address", "message"),
    [("", "needs 'local'"), ("   ", "needs 'local'"), ("local:0", "N >= 1")],
)
def test_bad_addresses_are_refused_before_anything_starts(address: str, message: str) -> None:
    with pytest.raises(NextstepError, match=message), dask_client(address):
        pytest.fail("no client for a bad address")


@pytest.mark.slow
def test_local_n_starts_n_single_threaded_workers() -> None:
    with dask_client(" local:1 ") as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1
        assert [w["nthreads"] for w in workers.values()] == [1]
        assert client.submit(sum, [1, 2, 3]).result() == 6


@pytest.mark.slow
def test_an_unreachable_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    from nextstep.cli.app import app

    address = f"tcp://127.0.0.1:{_closed_port()}"  # the client gives up after 20 s
    events = tmp_path / "events.csv"
    events.write_text("user_id,ts,step,outcome\n", encoding="utf-8")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("steps: [{id: a, stage: convert, effort: 1}]\n", encoding="utf-8")
    r = CliRunner().invoke(
        app, ["train", "--events", str(events), "--catalog", str(catalog), "--dask", address]
    )
    assert r.exit_code == 2, r.output
    assert "cannot reach the Dask scheduler" in r.output and address in r.output
    assert "Traceback" not in r.output
