"""``notebooks/walkthrough.ipynb`` runs top to bottom (nbclient, a real Jupyter kernel).

The notebook's parameters cell is pointed at the session's tiny world and pretrained CI student, so the
run does index → diagnose → select → train → evaluate → report without pretraining; every code cell must
finish without an error and the run folder must hold each stage's ``_SUCCESS`` and the report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
STAGES = ["index", "round_0/diagnose", "round_0/select", "round_0/train", "round_0/evaluate"]


def test_walkthrough_notebook_runs_top_to_bottom(world_dir: Path, pretrained_student_dir: Path, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert "WORLD_DIR = None" in params.source and "STUDENT_DIR = None" in params.source
    work = tmp_path / "work"
    params.source += f"\nWORLD_DIR = {str(world_dir)!r}\nSTUDENT_DIR = {str(pretrained_student_dir)!r}\nWORK_DIR = {str(work)!r}\n"

    # The kernel is this interpreter (its venv), started in the notebook's own folder.
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=NATIVE_KERNEL_NAME, resources={"metadata": {"path": str(tmp_path)}},
        startup_timeout=120,
    )
    assert Path(sys.executable).exists()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"notebook cell failed:\n{str(exc)[-4000:]}")

    run_dir = work / "run"
    for stage in STAGES:
        assert (run_dir / stage / "_SUCCESS").is_file(), stage
    assert (run_dir / "report" / "report.html").is_file()
    # The cells show what each stage wrote: no code cell ended without output except the last one.
    code = [c for c in nb.cells if c.cell_type == "code"]
    silent = [i for i, c in enumerate(code[:-1]) if not c.get("outputs") and i > 1]
    assert not silent, f"code cells {silent} produced no output"
    text = "\n".join(o.get("text", "") for c in code for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "rows indexed" in text and "capability gaps" in text
