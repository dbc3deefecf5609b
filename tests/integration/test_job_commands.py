"""The per-stage commands that jobs/*.yaml show, run one after another as a user would type them.

Each is the first header line of its job file (the local launch command), run as a standalone CLI process
from a fresh folder: world, pretrain, index, serve (in the background, stopped at the end), diagnose,
select, train, evaluate, then the report. Every process starts its own private Ray of 2 CPUs, not
oversubscribed, with the stages' default resource settings; ``--set`` only shrinks data sizes and steps
(and moves the endpoint off port 8000, which another program may hold). A stage that hangs fails the test
through the per-command timeout.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.test_jobs import header_commands

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"
EDRAY = [sys.executable, "-m", "edray"]

STUDENT = (
    "{image_size: 32, patch_size: 8, vision_hidden: 64, vision_layers: 1, vision_heads: 2, vision_ffn: 128, "
    "text_hidden: 64, text_layers: 2, text_heads: 2, text_ffn: 128, max_length: 256}"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(job: str) -> list[str]:
    argv = header_commands(JOBS / job)[0]
    assert argv[0] == "edray"
    return argv[1:]


def _run(cwd: Path, env: dict[str, str], args: list[str], timeout: float = 600) -> str:
    started = time.time()
    proc = subprocess.run(EDRAY + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`edray {' '.join(args)}` exited {proc.returncode} after {time.time() - started:.0f} s:\n{out[-4000:]}"
    return out


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"edray serve exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise AssertionError(f"edray serve was not ready at {url} within {timeout} s")


def test_job_commands_run_one_after_another_on_two_cpus(tmp_path):
    work = tmp_path / "demo"
    work.mkdir()
    (work / "jobs").symlink_to(JOBS)
    port = _free_port()
    env = dict(os.environ, EDRAY_RAY_CPUS="2", EDRAY_API_KEY=secrets.token_urlsafe(16), RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    outputs: dict[str, str] = {}

    outputs["world"] = _run(work, env, _command("world.yaml") + [
        "--set", "pool.pool_size=400", "--set", "eval.val_size=40", "--set", "eval.test_size=40",
        "--set", "eval.general_size=60", "--set", "eval.target_tasks=[spot_item]",
    ])
    outputs["pretrain"] = _run(work, env, _command("world_pretrain.yaml") + [
        "--set", f"student={STUDENT}", "--set", "num_rows=256", "--set", "steps=20", "--set", "batch_size=16",
        "--set", "warmup_steps=2", "--set", "corpus_size=200", "--set", "eval_size=0", "--set", "vision_steps=5",
    ])
    outputs["index"] = _run(work, env, _command("index.yaml"))

    serve = subprocess.Popen(
        EDRAY + _command("serve.yaml") + ["--set", f"port={port}"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ready", serve)
        url = f"http://127.0.0.1:{port}/v1"
        outputs["diagnose"] = _run(work, env, _command("diagnose.yaml") + [
            "--set", f"student.client.base_url={url}", "--set", f"teacher.base_url={url}", "--set", "limit=24",
            "--set", "student.max_tokens=64",
        ])
    finally:
        # Ctrl-C to edray serve itself (it shuts Serve down), then whatever of its Ray is left.
        serve.send_signal(signal.SIGINT)
        try:
            serve_out, _ = serve.communicate(timeout=90)
        finally:
            try:
                os.killpg(serve.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if serve.poll() is None:
                serve_out, _ = serve.communicate()
    outputs["serve"] = serve_out
    outputs["select"] = _run(work, env, _command("select.yaml") + ["--set", "budget=64"])
    outputs["train"] = _run(work, env, _command("train.yaml") + ["--set", "epochs=1", "--set", "batch_size=16"])
    outputs["evaluate"] = _run(work, env, _command("evaluate.yaml") + [
        "--set", "limit_target=24", "--set", "limit_general=24",
    ])
    outputs["report"] = _run(work, env, ["report", "--run-dir", "runs/demo"])

    run = work / "runs" / "demo"
    for stage in ("index", "round_0/diagnose", "round_0/select", "round_0/train", "round_0/evaluate"):
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert (run / stage / "_SUCCESS").exists(), stage
        assert manifest["wall_s"] > 0, stage
    index = json.loads((run / "index" / "manifest.json").read_text())
    assert index["counts"]["indexed"] == 400
    # Default sizes derived from the 2 CPUs: one embedder of 1 CPU beside read, validation and annotation.
    assert "embedder actors (embed.actors x embed.num_cpus): 1 x 1 CPU" in index["metrics"]["resources"]
    assert (run / "report" / "report.html").is_file()
    assert "serving student, world-teacher" in outputs["serve"]
    # Ray's own output went to the log folders, not the console.
    assert (run / "logs" / "index.log").stat().st_size > 0
    for name, text in outputs.items():
        assert "core_worker.cc" not in text and "Token authentication is enabled" not in text, name


def test_a_size_the_cluster_cannot_hold_fails_at_once_naming_the_fields(tmp_path):
    """Three 1-CPU embedders on a 2-CPU machine: refused before Ray starts, with the fields and numbers."""
    pool = tmp_path / "pool"
    pool.mkdir()
    env = dict(os.environ, EDRAY_RAY_CPUS="2")
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    proc = subprocess.run(
        EDRAY + ["index", "--run-dir", str(tmp_path / "run"), "--set", f"pool={pool}",
                 "--set", "embed.actors=3", "--set", "embed.num_cpus=1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.time() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert elapsed < 20, f"took {elapsed:.0f} s"
    message = proc.stderr
    assert "resource error: index cannot run on this cluster (2 CPU" in message
    assert "it needs 4 CPU at once and the cluster has 2" in message
    assert "embedder actors (embed.actors x embed.num_cpus): 3 x 1 CPU" in message
    assert not (tmp_path / "run" / "index").exists()
