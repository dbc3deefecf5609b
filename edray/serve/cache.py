"""The model client's persistent response cache: one sqlite file, safe across processes and Ray workers."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any


class ResponseCache:
    """A persistent map from request key to response body, in one sqlite file (WAL mode).

    Safe across processes and Ray workers on one node: each operation opens its own short
    transaction, and sqlite's WAL lets readers run beside the one writer.

    Args:
        folder: created if missing; the file is ``responses.sqlite`` inside it.
    """

    FILE = "responses.sqlite"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / self.FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, body TEXT, created REAL)"
            )

    def _connect(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
            self._local.pid = os.getpid()
        return con

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached body for ``key``, or None."""
        row = self._connect().execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, body: dict[str, Any]) -> None:
        """Store a body (the first writer of a key wins; later writes of the same key are ignored)."""
        self._connect().execute(
            "INSERT OR IGNORE INTO responses (key, model, body, created) VALUES (?, ?, ?, ?)",
            (key, model, json.dumps(body, separators=(",", ":")), time.time()),
        )

    def delete(self, key: str) -> None:
        """Forget one key."""
        self._connect().execute("DELETE FROM responses WHERE key = ?", (key,))

    def __len__(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0])
