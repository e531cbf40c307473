"""The result store of a run: one SQLite database (WAL) beside the per-episode trajectory files.

An episode counts as done once its row is committed, and the row is written only after its trajectory file is
complete; so a `kill -9` at any moment loses at most the episodes in flight, and a rerun plays exactly those.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS episodes (
    env_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    success INTEGER NOT NULL,
    error TEXT,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (env_id, seed)
);
"""


class Store:
    """Thread-safe; one writer per run directory (the process driving the run)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives process kills; fsync per commit not
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- run metadata ------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str)))

    # -- episodes ----------------------------------------------------------------------------------
    def add(self, env_id: str, seed: int, metrics: dict[str, Any], path: str) -> None:
        """Record a finished episode; replaces an earlier errored attempt at the same (env, seed)."""
        row = (env_id, seed, int(bool(metrics["success"])), metrics.get("error"), path, json.dumps(metrics))
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?)", (*row, time.time()))

    def done(self) -> set[tuple[str, int]]:
        """Episodes that need no rerun. Errored ones (a crashed browser, a dead model server) are played again."""
        with self._lock:
            rows = self._db.execute("SELECT env_id, seed FROM episodes WHERE error IS NULL").fetchall()
        return {(e, s) for e, s in rows}

    def rows(self) -> list[dict[str, Any]]:
        """Every recorded episode, flat: env_id, seed, path and the metrics of `pistar.metrics.episode_metrics`."""
        with self._lock:
            rows = self._db.execute("SELECT env_id, seed, path, metrics FROM episodes ORDER BY env_id, seed").fetchall()
        return [{"env_id": e, "seed": s, "path": p, **json.loads(m)} for e, s, p, m in rows]

    def integrity(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]
