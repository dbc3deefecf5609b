"""The quiet console: a command's own lines reach the terminal; everything written to file descriptors 1
and 2 (C++ logs, child processes, other libraries) goes to the log file, unless --verbose."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging, os, subprocess, sys
    from edray.console import console, log_session, out
    verbose = sys.argv[2] == "verbose"
    with log_session(sys.argv[1], "stage", verbose) as path:
        os.write(2, b"core_worker.cc:2465: noisy C++ line\\n")
        print("library print on stdout")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child process line\\\\n')"], check=True)
        logging.getLogger("ray.data").warning("ray data operator log")
        logging.getLogger("edray.index").warning("edray warning that matters")
        console.print("[1/3] index done")
        out.print("index written to runs/x/index")
    print("after the session")
    """
)


def _run(tmp_path: Path, mode: str) -> tuple[str, str, str]:
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(logs), mode], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    log = (logs / "stage.log").read_text() if (logs / "stage.log").exists() else ""
    return proc.stdout, proc.stderr, log


def test_quiet_session_keeps_only_edrays_lines_on_the_terminal(tmp_path):
    stdout, stderr, log = _run(tmp_path, "quiet")
    assert stdout.splitlines() == ["index written to runs/x/index", "after the session"]
    assert "[1/3] index done" in stderr and "edray warning that matters" in stderr
    for noise in ("core_worker.cc", "library print", "child process line", "ray data operator log"):
        assert noise not in stdout + stderr
        assert noise in log


def test_verbose_session_shows_everything_and_writes_no_log(tmp_path):
    stdout, stderr, log = _run(tmp_path, "verbose")
    assert "library print on stdout" in stdout and "index written" in stdout
    assert "core_worker.cc" in stderr and "child process line" in stderr and "[1/3] index done" in stderr
    assert log == ""
