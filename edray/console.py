"""What a user sees while edray runs: edray's own lines on the console, everything else in a log file.

Ray, Ray Data, Ray Train, Serve and vLLM write a great deal, much of it from C++ (glog lines such as
``core_worker.cc``), from child processes that inherit the process's file descriptors, or from worker
processes whose output Ray forwards to the driver. Filtering Python loggers cannot catch those, so
:func:`log_session` points file descriptors 1 and 2 at ``<log_dir>/<name>.log`` for the duration of a
command and keeps edray's own consoles on duplicates of the original ones. ``--verbose`` leaves the
descriptors alone.

Use :data:`console` for progress, warnings and errors (stderr) and :data:`out` for results (stdout).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.logging import RichHandler

# soft_wrap: a path or a summary line is never broken across lines, so it can be copied or grepped.
console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

# Warnings from edray's own loggers matter to the user; everything else is for the log file.
_HANDLER = RichHandler(console=console, show_time=False, show_path=False, markup=False, level=logging.WARNING)
_HANDLER.setFormatter(logging.Formatter("%(message)s"))


def _install_warning_handler() -> None:
    edray_log = logging.getLogger("edray")
    if _HANDLER not in edray_log.handlers:
        edray_log.addHandler(_HANDLER)
    edray_log.setLevel(logging.INFO)


@contextmanager
def log_session(log_dir: str | os.PathLike[str] | None, name: str, verbose: bool = False) -> Iterator[Path | None]:
    """Route the process's stdout/stderr (and so Ray's and every child's) to ``<log_dir>/<name>.log``.

    Args:
        log_dir: the log folder (created); None or ``verbose`` keeps output on the terminal.
        name: the log file's stem (a stage or command name).
        verbose: keep everything on the terminal.

    Yields:
        The log file's path, or None when nothing is redirected.
    """
    _install_warning_handler()
    if verbose or log_dir is None:
        yield None
        return
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    user_files: dict[int, IO[str]] = {fd: os.fdopen(os.dup(saved[fd]), "w", buffering=1) for fd in (1, 2)}
    # The consoles' own file attributes (None: follow sys.stdout / sys.stderr, which pytest swaps).
    before = {"out": out._file, "console": console._file}
    log_file = open(path, "ab", buffering=0)
    log_file.write(f"\n===== edray {name}: {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    out.file, console.file = user_files[1], user_files[2]
    root = logging.getLogger()
    file_handler = logging.StreamHandler(sys.stderr)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    try:
        yield path
    finally:
        from edray.resources import release_ray

        release_ray()
        root.removeHandler(file_handler)
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
        out.file, console.file = before["out"], before["console"]
        for f in user_files.values():
            f.close()
        log_file.close()


@contextmanager
def stage_line(label: str, index: int | None = None, total: int | None = None) -> Iterator[dict[str, Any]]:
    """One line when a stage starts and one when it ends, with its wall time and what it reports.

    Yields:
        A dict the stage may fill with ``summary`` (a short text such as ``2,000 rows, 64 rows/s``).
    """
    tag = f"[bold cyan][{index}/{total}][/bold cyan] " if index is not None and total else ""
    console.print(f"{tag}{label} ...")
    info: dict[str, Any] = {}
    started = time.time()
    yield info
    summary = f": {info['summary']}" if info.get("summary") else ""
    console.print(f"{tag}{label} [green]done[/green] in {time.time() - started:.1f} s{summary}")


class RowProgress:
    """A progress bar for rows moving through a stage: count, rate and ETA when the total is known.

    Draws only on a terminal; elsewhere (CI, pipes) it stays silent and the stage's closing line carries
    the numbers.
    """

    def __init__(self, description: str, total: int | None = None, unit: str = "rows") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
        from rich.progress import TimeElapsedColumn, TimeRemainingColumn

        self.unit = unit
        self.done = 0
        self.started = time.time()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._task = self._progress.add_task(description, total=total, rate="")

    def __enter__(self) -> "RowProgress":
        self._progress.start()
        return self

    def advance(self, n: int) -> None:
        self.done += n
        self._progress.update(self._task, advance=n, rate=f"{self.rate:,.0f} {self.unit}/s")

    @property
    def rate(self) -> float:
        return self.done / max(time.time() - self.started, 1e-9)

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()
