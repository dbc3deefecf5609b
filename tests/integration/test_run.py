"""``edray run`` end to end, through the real CLI, its grid of arms killed mid-way and run again.

One run of ``tests/fixtures/run_tiny.yaml`` on the session's tiny world and CI student, in a subprocess
with its own private Ray (``RAY_ADDRESS`` unset). Its arms and the base's evaluation run as Ray Tune
trials; the run is SIGKILLed, driver and every Ray process of its cluster together, as soon as one
trial has finished and the main arm's training (in its trial's process) has written a checkpoint; the
same command is then run again. The test checks that the second run

- succeeds and commits every stage (``_SUCCESS`` + manifest), with no temporary folders left behind;
- does not redo the stages or the trials that had finished before the kill (their manifests,
  ``_SUCCESS`` markers and arm records are untouched);
- resumes training from the checkpoint instead of starting over: the optimizer steps recorded before the
  kill are carried over unchanged (their measured wall times included), the rest are trained once;
- writes selections, training curves, predictions, scores and ``arms.parquet`` without duplicated rows
  (every arm exactly once), and a report that covers both arms.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from edray.rundir import MANIFEST, SUCCESS
from edray.schemas import (
    EVAL_PREDICTIONS,
    EVAL_SCORES,
    REPORT_HTML,
    SCORE_ALL,
    SELECTION,
    TRAIN_ADAPTER,
    TRAIN_METRICS,
    WORLD_EVAL_DIR,
    WORLD_GENERAL_SUITE,
    WORLD_POOL_DIR,
)

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "run_tiny.yaml"
MAIN_ARM, OTHER_ARM = "error_driven", "random"
RUN_TIMEOUT_S = 600
# Many more passes over the (64-row) selection than the config's single epoch, so that the kill lands
# while the main arm is still stepping, after another trial (the base's evaluation) has finished.
EPOCHS = 40

# Stages that finish before the main arm trains, relative to the run folder.
EARLY_STAGES = ["index", "round_0/diagnose", "round_0/select"]
# Every committed stage of a one-round, two-arm run.
ALL_STAGES = EARLY_STAGES + [
    "round_0/train",
    "round_0/evaluate_arm",
    "round_0/evaluate_base",
    f"arms/{OTHER_ARM}/round_0/select",
    f"arms/{OTHER_ARM}/round_0/train",
    f"arms/{OTHER_ARM}/round_0/evaluate_arm",
    "round_0/evaluate",
]
# The trials' records: the base's evaluation and each arm's.
RECORDS = ["round_0/base.json", "round_0/arm.json", f"arms/{OTHER_ARM}/round_0/arm.json"]
# Progress lines: index, diagnose, the arms' trials, the collected evaluation, the report.
PROGRESS_STAGES = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_pids(marker: str) -> list[int]:
    """Processes of the run's private Ray cluster and its driver: all carry ``marker`` (a ``NAME=value``
    entry unique to the run) in the environment they inherited from the driver. Ray workers run in process
    groups of their own, so the driver's process group alone does not name them."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() + b"\0" in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone, or another user's process
            continue
    return pids


def _describe(pids: list[int]) -> str:
    out = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
            out.append(f"{pid}: {cmdline.decode(errors='replace')}")
        except OSError:
            out.append(f"{pid}: (gone)")
    return "\n".join(out)


def _wait_cluster_gone(marker: str, timeout_s: float = 60.0) -> list[int]:
    """Wait until no process of the run's cluster is left; return the survivors (empty when none)."""
    deadline = time.monotonic() + timeout_s
    while True:
        # zombies still show in /proc until their parent reaps them; they hold no resources
        alive = [p for p in _cluster_pids(marker) if not _is_zombie(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, n: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-n:]


def _checkpoints(ckpt_root: Path) -> list[Path]:
    """The in-process runner's committed checkpoints (folders renamed into place whole)."""
    return sorted(p for p in ckpt_root.glob("train-*/checkpoint_*") if (p / "state.json").is_file())


def _stage_stamp(stage: Path) -> tuple[str, int]:
    return (stage / MANIFEST).read_text(), (stage / SUCCESS).stat().st_mtime_ns


@pytest.fixture(scope="module")
def run_env():
    """Environment of the CLI subprocesses: a private Ray temp folder (short path: Ray's sockets live
    there) that also marks every process of the run's cluster, and a free Serve port."""
    ray_tmp = tempfile.mkdtemp(prefix="edray-run-")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        {
            "RAY_TMPDIR": ray_tmp,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_V2_ENABLED": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "400",  # the CLI's console wraps at the terminal width; keep its lines whole
            # Ray Train's controller records reported checkpoints when it polls its workers (every 2 s by
            # default); polling faster lets the test see the first checkpoint while training goes on.
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
        }
    )
    marker = f"RAY_TMPDIR={ray_tmp}"
    yield env, marker, _free_port()
    # after a failure, whatever is left of a run's cluster: stopped before its folder is removed
    _kill_all(_cluster_pids(marker))
    _wait_cluster_gone(marker, timeout_s=30)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_run_killed_mid_train_resumes_without_redoing_finished_stages(
    world_dir: Path, pretrained_student_dir: Path, tmp_path: Path, run_env
) -> None:
    env, marker, port = run_env
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "edray", "run",
        "--config", str(CONFIG),
        "--run-dir", str(run_dir),
        "--set", f"world_dir={world_dir}",
        "--set", f"student={pretrained_student_dir}",
        "--set", f"serve.port={port}",
        "--set", f"train.epochs={EPOCHS}",
    ]  # fmt: skip
    cfg = yaml.safe_load(CONFIG.read_text())
    budget, batch_size, epochs = cfg["select"]["budget"], cfg["train"]["batch_size"], EPOCHS
    ckpt_root = run_dir / "round_0" / "train_checkpoints"

    # --- first run: kill driver and cluster once a trial has finished and the main arm has a checkpoint -
    log1 = tmp_path / "first.log"
    t0 = time.monotonic()
    with log1.open("wb") as out:
        first = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if first.poll() is not None:
                pytest.fail(f"the run ended (rc {first.returncode}) before the kill:\n{_tail(log1)}")
            if time.monotonic() - t0 > RUN_TIMEOUT_S:
                pytest.fail(f"no finished trial and training checkpoint after {RUN_TIMEOUT_S} s:\n{_tail(log1)}")
            finished = [r for r in RECORDS if (run_dir / r).is_file()]
            if finished and _checkpoints(ckpt_root):
                break
            time.sleep(0.02)
        cluster = _cluster_pids(marker)
        cluster_desc = _describe(cluster)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    killed_at = time.monotonic() - t0
    # The cluster goes with its driver: nothing of it may keep running (or keep files open) in the background.
    survivors = _wait_cluster_gone(marker)
    if survivors:
        described = _describe(survivors)
        _kill_all(survivors)
        pytest.fail(f"processes of the killed run's Ray cluster survived the kill:\n{described}")

    assert first.returncode == -signal.SIGKILL
    # the survivor check above saw the cluster: the driver, Ray's own services and the trials' processes
    assert first.pid in cluster and "ray::ImplicitFunc" in cluster_desc, cluster_desc
    assert not (run_dir / "round_0" / "train" / SUCCESS).exists(), "the kill came after the train stage committed"
    committed = [s for s in ALL_STAGES if (run_dir / s / SUCCESS).is_file()]
    assert set(EARLY_STAGES) <= set(committed)
    before = {s: _stage_stamp(run_dir / s) for s in committed}
    finished = {r: (run_dir / r).read_text() for r in RECORDS if (run_dir / r).is_file()}
    # the checkpoint the second run must resume from: the latest one committed by the time of the kill
    states = {c: json.loads((c / "state.json").read_text()) for c in _checkpoints(ckpt_root)}
    resume_from = max(states, key=lambda c: states[c]["step"])
    resumed_step = states[resume_from]["step"]
    resumed_rows = pd.read_parquet(resume_from / TRAIN_METRICS)
    assert resumed_step >= 1 and list(resumed_rows["step"]) == list(range(1, resumed_step + 1))

    # --- second run: the same command -----------------------------------------------------------------
    log2 = tmp_path / "second.log"
    t1 = time.monotonic()
    with log2.open("wb") as out:
        second = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = second.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
    rerun_s = time.monotonic() - t1
    output = log2.read_text(errors="replace")
    assert rc == 0, f"the second run failed (rc {rc}):\n{_tail(log2, 8000)}"
    assert f"run finished: {run_dir}" in output, _tail(log2)
    print(f"first run killed after {killed_at:.0f} s at step {resumed_step}; second run took {rerun_s:.0f} s")
    # A clean exit takes the private cluster down too.
    survivors = _wait_cluster_gone(marker)
    _kill_all(survivors)
    assert not survivors, f"the finished run left Ray processes behind:\n{_describe(survivors)}"

    # Progress counts every stage once: the last stage line reads [n/n].
    counters = re.findall(r"\[(\d+)/(\d+)\] \S.* done in", output)
    assert counters and counters[-1][0] == counters[-1][1] == str(PROGRESS_STAGES)

    # --- every stage committed, nothing half-written left behind --------------------------------------
    for stage in ALL_STAGES:
        manifest = json.loads((run_dir / stage / MANIFEST).read_text())
        assert (run_dir / stage / SUCCESS).is_file(), stage
        assert manifest["fingerprint"], stage
        # wall_s is the stage's whole work, from the runner's start: it covers what the stage timed inside.
        assert manifest["wall_s"] == pytest.approx(manifest["finished_at"] - manifest["started_at"], abs=0.01), stage
        assert manifest["wall_s"] >= manifest["metrics"].get("wall_s", 0.0) - 0.01, stage  # both rounded
    leftovers = [p for p in run_dir.rglob(".tmp-*")]
    assert not leftovers, f"temporary folders left in the run: {leftovers}"
    assert not list(ckpt_root.glob("train-*")), "the train stage kept its resumable checkpoints after committing"

    # --- finished stages and trials were not redone --------------------------------------------------
    for stage in before:
        assert _stage_stamp(run_dir / stage) == before[stage], f"{stage} was redone after the kill"
    for record, text in finished.items():
        assert (run_dir / record).read_text() == text, f"the finished trial of {record} ran again"
    # every arm exactly once in the run's arms table, all finished
    arms = pd.read_parquet(run_dir / "arms.parquet")
    assert sorted(arms["arm"]) == sorted(["base", MAIN_ARM, OTHER_ARM]) and arms["arm"].is_unique
    assert set(arms["status"]) == {"ok"} and arms["node_id"].notna().all()
    assert set(arms.loc[arms["arm"] != "base", "runner"]) == {"in_process"}
    # The pipeline asked the stage runner whether the diagnosis was done, and so served no student for it.
    assert re.search(r"round 0: diagnose the student done in [0-9.]+ s: up to date", output), _tail(log2)

    # --- training resumed from the checkpoint, each remaining step trained once -------------------------
    for train_dir, select_dir in [
        (run_dir / "round_0" / "train", run_dir / "round_0" / "select"),
        (run_dir / "arms" / OTHER_ARM / "round_0" / "train", run_dir / "arms" / OTHER_ARM / "round_0" / "select"),
    ]:
        counts = json.loads((train_dir / MANIFEST).read_text())["counts"]
        selected = json.loads((select_dir / MANIFEST).read_text())["counts"]["selected"]
        assert counts["rows"] + counts["quarantined"] == selected
        steps = epochs * (counts["rows"] // batch_size)
        metrics = pd.read_parquet(train_dir / TRAIN_METRICS)
        assert list(metrics["step"]) == list(range(1, steps + 1)), train_dir
        assert counts["steps"] == steps and counts["samples_seen"] == steps * batch_size
        assert metrics["loss"].notna().all() and (metrics["loss"] > 0).all()
        assert (train_dir / TRAIN_ADAPTER / "adapter_config.json").is_file()
    main_metrics = pd.read_parquet(run_dir / "round_0" / "train" / TRAIN_METRICS)
    # Steps taken before the kill come from the checkpoint as they were (wall times included: a restart
    # from scratch would have measured them again); the steps after it were trained by the second run.
    pd.testing.assert_frame_equal(
        main_metrics.iloc[:resumed_step].reset_index(drop=True), resumed_rows[list(main_metrics.columns)]
    )
    assert resumed_step < len(main_metrics), "the kill came after the last optimizer step, not mid-train"

    # --- selections: the budget, unique ids, from the pool ----------------------------------------------
    pool_ids = set(pq.read_table(world_dir / WORLD_POOL_DIR, columns=["id"])["id"].to_pylist())
    for select_dir, strategy in [
        (run_dir / "round_0" / "select", MAIN_ARM),
        (run_dir / "arms" / OTHER_ARM / "round_0" / "select", OTHER_ARM),
    ]:
        sel = pd.read_parquet(select_dir / SELECTION)
        assert len(sel) == budget and sel["id"].is_unique, select_dir
        assert set(sel["id"]) <= pool_ids
        assert set(sel["strategy"]) == {strategy}

    # --- evaluation: every model on every row once, scores consistent with the predictions ------------
    evaluate = run_dir / "round_0" / "evaluate"
    n_target = pq.read_metadata(world_dir / WORLD_EVAL_DIR / cfg["task"] / "test.parquet").num_rows
    n_general = pq.read_metadata(world_dir / WORLD_EVAL_DIR / WORLD_GENERAL_SUITE / "test.parquet").num_rows
    preds = pd.read_parquet(evaluate / EVAL_PREDICTIONS)
    scores = pd.read_parquet(evaluate / EVAL_SCORES)
    models = {"base", MAIN_ARM, OTHER_ARM}
    assert set(preds["model"]) == models
    assert not preds.duplicated(["model", "suite", "id"]).any()
    assert preds.groupby(["model", "suite"]).size().to_dict() == {
        (m, s): n for m in models for s, n in [("target", n_target), ("general", n_general)]
    }
    assert json.loads((evaluate / MANIFEST).read_text())["counts"]["predictions"] == len(preds)
    overall = scores[(scores["task"] == SCORE_ALL) & (scores["skill"] == SCORE_ALL)].set_index(["model", "suite"])
    accuracy = preds.groupby(["model", "suite"])["correct"].mean()
    assert set(overall.index) == set(accuracy.index)
    for key, acc in accuracy.items():
        assert overall.loc[key, "accuracy"] == pytest.approx(acc)
        assert overall.loc[key, "n"] == (n_target if key[1] == "target" else n_general)

    # --- the report covers both arms ---------------------------------------------------------------------
    html = (run_dir / "report" / REPORT_HTML).read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    for name in (MAIN_ARM, OTHER_ARM, cfg["task"]):
        assert name in html, f"the report never mentions {name}"
    assert "Arms (trials)" in html and "in_process" in html
    # the skills world's checks ran on the finished run: printed, kept, and in the report
    checks = json.loads((run_dir / "checks" / "checks.json").read_text())
    assert [c["check"] for c in checks] == ["a", "b", "c", "d", "e"]
    assert re.search(r"\d of 5 checks passed", output) and "World checks" in html
