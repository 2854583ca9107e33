"""The notebooks run top to bottom on small data, and are kept in git without outputs.

Each notebook is executed with nbclient in a fresh kernel (the venv's Python), in a temporary
working directory, with ``NEXTSTEP_HOME`` and ``MLFLOW_TRACKING_URI`` pointing into
``tmp_path`` so nothing lands in the tree or in a real tracking store.
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01-explore-events.ipynb", "02-train-and-compare.ipynb")
TIMEOUT = 600  # seconds per cell: the machine may be busy


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a cell has outputs (strip them)"
            assert cell.execution_count is None, f"{name}: a cell has an execution count"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    home = tmp_path / "home"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("NEXTSTEP_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    kernel_tmp = tmp_path / "kernel-tmp"  # the kernel's TMPDIR: what it leaves shows up here
    kernel_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(kernel_tmp))
    monkeypatch.delenv("NEXTSTEP_DEMO_EVENTS", raising=False)
    monkeypatch.delenv("NEXTSTEP_DEMO_CATALOG", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        timeout=TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, when a cell fails
    errors = [
        out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
        if out.get("output_type") == "error"
    ]  # fmt: skip
    assert not errors
    # the notebook removes its temporary folders and charts when its kernel stops
    deadline = time.monotonic() + 30
    while any(kernel_tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(p.name for p in kernel_tmp.iterdir()) == []
    if name.startswith("02"):
        from mlflow import MlflowClient

        client_ml = MlflowClient(tracking_uri=uri)
        exp = client_ml.get_experiment_by_name("nextstep-compare")
        assert exp is not None
        runs = client_ml.search_runs([exp.experiment_id])
        assert len(runs) == 1 + 6  # the parent and one run per policy
