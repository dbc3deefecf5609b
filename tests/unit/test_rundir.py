"""The stage commit protocol: atomic commit, crash safety under SIGKILL, skip, force, fingerprints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edray.rundir import MANIFEST, SUCCESS, StageDir, fingerprint, new_run_dir

REPO = Path(__file__).resolve().parents[2]

# A minimal stage following the documented pattern. argv: run_dir input_file mode.
STAGE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import edray.rundir as rd

    run_dir, input_file, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    stage = rd.StageDir(run_dir, "select", round_index=0)
    config = {"budget": 10}
    fp = rd.fingerprint(config, inputs=[input_file])
    if stage.is_done(fp) and mode != "force":
        print("skipped")
        sys.exit(0)
    if mode == "kill-before-success":
        write = rd.write_atomic
        def stall(path, text):
            if path.name == rd.SUCCESS:
                (run_dir / "READY").write_text("1")
                time.sleep(600)
            write(path, text)
        rd.write_atomic = stall
    with stage.commit(config, fp, inputs=[input_file]) as tmp:
        with open(run_dir / "runs.log", "a") as log:
            log.write(mode + "\\n")
        (tmp / "selection.parquet").write_bytes(b"x" * 4096)
        stage.counts["selected"] = 10
        if mode == "kill-in-body":
            (run_dir / "READY").write_text("1")
            time.sleep(600)
    print("done")
    """
)


def run_stage(tmp_path: Path, mode: str, kill: bool = False) -> str:
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "READY").unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), str(tmp_path / "input.txt"), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if not kill:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return out.strip()
    deadline = time.time() + 120
    while not (run_dir / "READY").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "the stage never reached the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return "killed"


def runs(tmp_path: Path) -> list[str]:
    log = tmp_path / "run" / "runs.log"
    return log.read_text().split() if log.exists() else []


def visible(stage: StageDir) -> list[str]:
    """What a reader listing the round folder sees (hidden temporary folders excluded)."""
    parent = stage.path.parent
    return sorted(p.name for p in parent.iterdir() if not p.name.startswith(".")) if parent.is_dir() else []


@pytest.mark.parametrize("kill_point", ["kill-in-body", "kill-before-success"])
def test_sigkill_mid_commit_leaves_nothing_half_visible_then_rerun_skip_and_force(tmp_path, kill_point):
    (tmp_path / "input.txt").write_text("errors v1")
    stage = StageDir(tmp_path / "run", "select", round_index=0)

    assert run_stage(tmp_path, kill_point, kill=True) == "killed"
    assert not stage.is_done()
    with pytest.raises(FileNotFoundError):
        stage.manifest()
    if kill_point == "kill-in-body":
        assert visible(stage) == []  # the output exists only in a hidden temporary folder
        assert any(p.name.startswith(".tmp-select-") for p in stage.path.parent.iterdir())
    else:
        assert not (stage.path / SUCCESS).exists()  # renamed in place but never marked complete

    assert run_stage(tmp_path, "normal") == "done"  # the re-run completes
    assert stage.is_done()
    assert [p.name for p in stage.path.parent.iterdir() if p.name.startswith(".tmp-")] == []
    manifest = stage.manifest()
    assert manifest["counts"] == {"selected": 10} and manifest["stage"] == "select" and manifest["round"] == 0
    assert (stage.path / "selection.parquet").stat().st_size == 4096
    assert runs(tmp_path) == [kill_point, "normal"]

    assert run_stage(tmp_path, "normal") == "skipped"  # unchanged: skipped
    assert runs(tmp_path) == [kill_point, "normal"]

    finished = manifest["finished_at"]
    assert run_stage(tmp_path, "force") == "done"  # --force re-runs
    assert runs(tmp_path) == [kill_point, "normal", "force"]
    assert stage.manifest()["finished_at"] > finished

    (tmp_path / "input.txt").write_text("errors v2")  # a changed input re-runs too
    assert run_stage(tmp_path, "normal") == "done"
    assert runs(tmp_path)[-1] == "normal" and len(runs(tmp_path)) == 4


def test_exception_in_body_keeps_the_previous_output(tmp_path):
    stage = StageDir(tmp_path, "index")
    with stage.commit({"a": 1}, "fp1") as tmp:
        (tmp / "table.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with stage.commit({"a": 2}, "fp2") as tmp:
            (tmp / "table.txt").write_text("v2")
            raise RuntimeError("boom")
    assert stage.is_done("fp1") and not stage.is_done("fp2")
    assert (stage.path / "table.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_commit_replaces_previous_output_and_records_manifest(tmp_path):
    stage = StageDir(tmp_path, "diagnose", round_index=2)
    with stage.commit({"delta": 0.1}, "fpA", inputs=["x"]) as tmp:
        (tmp / "old.txt").write_text("old")
    stage.metrics["rows_per_s"] = 12.5
    with stage.commit({"delta": 0.2}, "fpB") as tmp:
        (tmp / "new.txt").write_text("new")
    assert stage.path == tmp_path / "round_2" / "diagnose"
    assert sorted(p.name for p in stage.path.iterdir()) == sorted(["new.txt", MANIFEST, SUCCESS])
    m = json.loads((stage.path / MANIFEST).read_text())
    assert m["fingerprint"] == "fpB" and m["config"] == {"delta": 0.2} and m["metrics"] == {"rows_per_s": 12.5}
    assert "python" in m["versions"] and m["wall_s"] >= 0


def test_clean_stale_matches_only_its_own_stage(tmp_path):
    for name in (".tmp-train-0123abcd", ".tmp-old-train-89abcdef", ".tmp-pretrain-0123abcd", ".tmp-train_x-0123abcd"):
        (tmp_path / name).mkdir()
    assert StageDir(tmp_path, "train").clean_stale() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-pretrain-0123abcd", ".tmp-train_x-0123abcd"]


def test_fingerprint_tracks_config_inputs_and_extra(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("a")
    base = fingerprint({"k": 1}, [f])
    assert base == fingerprint({"k": 1}, [f]) and len(base) == 32
    assert fingerprint({"k": 2}, [f]) != base
    assert fingerprint({"k": 1}, [f], extra={"seed": 1}) != base
    f.write_text("b")
    assert fingerprint({"k": 1}, [f]) != base
    assert fingerprint({"k": 1}, [tmp_path / "missing"]) != fingerprint({"k": 1}, [tmp_path / "missing2"])
    assert fingerprint({}, ["s3://bucket/x"]) == fingerprint({}, ["s3://bucket/x"])


def test_fingerprint_of_a_folder_ignores_temporary_folders_and_uses_stage_manifests(tmp_path):
    d = tmp_path / ".tmp-looks-hidden" / "data"  # a parent named like a temp folder must not matter
    d.mkdir(parents=True)
    (d / "a.txt").write_text("1")
    fp1 = fingerprint(None, [d])
    (d / ".tmp-select-0123abcd").mkdir()
    (d / ".tmp-select-0123abcd" / "junk").write_text("x")
    assert fingerprint(None, [d]) == fp1
    (d / "a.txt").write_text("2")
    assert fingerprint(None, [d]) != fp1
    stage = StageDir(tmp_path, "index")
    with stage.commit({}, "fp") as tmp:
        (tmp / "big.bin").write_bytes(b"0" * 10)
    fp_stage = fingerprint(None, [stage.path])
    (stage.path / "big.bin").write_bytes(b"1" * 10)  # committed stages are identified by their manifest
    assert fingerprint(None, [stage.path]) == fp_stage


def test_large_files_are_fingerprinted_by_size_mtime_and_ends(tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(b"a" * (3 << 20))
    fp = fingerprint(None, [f])
    with f.open("r+b") as h:
        h.seek((3 << 20) - 1)
        h.write(b"b")
    assert fingerprint(None, [f]) != fp
    assert fingerprint(None, [f], deep=True) != fingerprint(None, [f])


def test_new_run_dir(tmp_path):
    assert new_run_dir(tmp_path, "exp") == tmp_path / "exp" and (tmp_path / "exp").is_dir()
    assert new_run_dir(tmp_path).parent == tmp_path


# --- the stage runner ---------------------------------------------------------------------------------


def _stage(tmp_path: Path, config: dict | None = None) -> "Stage":
    from edray.rundir import Stage

    src = tmp_path / "input.txt"
    if not src.exists():
        src.write_text("rows")
    return Stage(StageDir(tmp_path / "run", "select", round_index=0), config or {"budget": 10}, inputs=[src])


def test_run_stage_skips_when_current_and_recomputes_on_force_or_change(tmp_path):
    from edray.rundir import run_stage

    calls: list[Path] = []

    def compute(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "out.txt").write_text(str(len(calls)))

    first = _stage(tmp_path)
    assert not first.done()
    path = run_stage(first, compute)
    assert first.done() and (path / "out.txt").read_text() == "1" and (path / SUCCESS).exists()
    # The pipeline asks a fresh Stage with the same identity, as it would in another process.
    again = _stage(tmp_path)
    assert again.done()
    run_stage(again, compute)
    assert len(calls) == 1
    run_stage(_stage(tmp_path), compute, force=True)
    assert len(calls) == 2
    changed = _stage(tmp_path, {"budget": 11})
    assert not changed.done()
    run_stage(changed, compute)
    assert len(calls) == 3 and (path / "out.txt").read_text() == "3"


def test_run_stage_wall_time_is_the_stages_own_work(tmp_path):
    """wall_s runs from the runner's start to the commit: within 10 % of the time around the call, and
    none of what the process did before (start-up, imports: the sleep here)."""
    from edray.rundir import run_stage

    time.sleep(0.6)  # the process's own start-up, before the stage is called
    t0 = time.perf_counter()
    path = run_stage(_stage(tmp_path), lambda tmp: time.sleep(0.8))
    around = time.perf_counter() - t0
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["wall_s"] >= 0.8
    assert abs(manifest["wall_s"] - around) <= 0.1 * around, (manifest["wall_s"], around)
    assert manifest["finished_at"] - manifest["started_at"] == pytest.approx(manifest["wall_s"], abs=0.002)


REFUSE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import ray
    from edray.resources import Demand, ResourceError, ResourcePlan
    from edray.rundir import Stage, StageDir, run_stage

    run_dir = Path(sys.argv[1])
    calls = []
    plan = ResourcePlan("select", [Demand("embedder actors", 3, 1.0, fields=("embed.actors", "embed.num_cpus"))])
    stage = Stage(StageDir(run_dir, "select", round_index=0), {"budget": 10})
    t0 = time.perf_counter()
    try:
        run_stage(stage, calls.append, plan=lambda shape: plan)
        message = None
    except ResourceError as exc:
        message = str(exc)
    print(json.dumps({"message": message, "seconds": time.perf_counter() - t0, "calls": len(calls),
                      "ray_started": ray.is_initialized(), "written": stage.dir.path.exists()}))
    """
)


def test_run_stage_refuses_a_plan_that_cannot_fit_before_any_work(tmp_path):
    """A plan larger than the private cluster fails before Ray starts or compute runs, naming the fields.

    In a fresh process (the test session's own Ray is not there), as a stage command runs.
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["EDRAY_RAY_CPUS"] = "2"
    proc = subprocess.run(
        [sys.executable, "-c", REFUSE_SCRIPT, str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["message"] is not None, result
    for text in ("embed.actors", "embed.num_cpus", "3 CPU at once and the cluster has 2"):
        assert text in result["message"]
    assert result["seconds"] < 5 and result["calls"] == 0
    assert not result["ray_started"] and not result["written"]
