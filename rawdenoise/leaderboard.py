"""The local leaderboard: one SQLite file that any number of scorers can write at once.

SQLite serialises writers with its own lock (we wait up to a minute for it), so two scorers that
finish together both land. Each write also exports the whole board to CSV inside the same
transaction, so the CSV on disk always reflects the latest committed board.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from rawdenoise.files import atomic_path

COLUMNS = ["contest", "testset", "name", "score", "psnr", "ssim", "images", "model", "params", "weights_bytes", "source", "scored_at"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    contest TEXT NOT NULL,
    testset TEXT NOT NULL,
    name TEXT NOT NULL,
    score REAL NOT NULL,
    psnr REAL NOT NULL,
    ssim REAL NOT NULL,
    images INTEGER NOT NULL,
    model TEXT,
    params INTEGER,
    weights_bytes INTEGER,
    source TEXT,
    scored_at TEXT NOT NULL,
    PRIMARY KEY (contest, testset, name)
)
"""


@dataclass
class Entry:
    """One run on one test set: runs are ranked only against runs scored on the same ground truth."""

    contest: str
    testset: str  # the ground-truth folder, resolved
    name: str
    score: float
    psnr: float
    ssim: float
    images: int
    model: str | None = None
    params: int | None = None
    weights_bytes: int | None = None
    source: str | None = None
    scored_at: str = ""


def _connect(db: Path) -> sqlite3.Connection:
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 60000")
    conn.execute(_SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    if "testset" not in columns:  # a board from before runs were told apart by test set: keep it aside
        conn.execute("ALTER TABLE runs RENAME TO runs_without_testset")
        conn.execute(_SCHEMA)
    return conn


def record(db: str | Path, entry: Entry, csv_path: str | Path | None = None) -> None:
    """Insert or replace (same contest, test set and name) one run; optionally re-export the board to CSV."""
    db = Path(db)
    entry.scored_at = entry.scored_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    row = asdict(entry)
    conn = _connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: concurrent scorers queue here
        conn.execute(
            f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            [row[c] for c in COLUMNS],
        )
        if csv_path is not None:
            _export(conn, Path(csv_path))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def ranked(db: str | Path, contest: str | None = None, testset: str | None = None) -> list[Entry]:
    """Best score first; ties go to the earlier run. Filter by contest and test set when given."""
    db = Path(db)
    if not db.is_file():
        return []
    conn = _connect(db)
    try:
        filters = [(c, v) for c, v in (("contest", contest), ("testset", testset)) if v]
        where = ("WHERE " + " AND ".join(f"{c} = ?" for c, _ in filters)) if filters else ""
        args = [v for _, v in filters]
        rows = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM runs {where} ORDER BY score DESC, scored_at ASC", args
        ).fetchall()
    finally:
        conn.close()
    return [Entry(**dict(zip(COLUMNS, r))) for r in rows]


def _export(conn: sqlite3.Connection, csv_path: Path) -> None:
    import pandas as pd

    frame = pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM runs ORDER BY contest, testset, score DESC", conn)
    ranks = frame.groupby(["contest", "testset"])["score"].rank(ascending=False, method="min")
    frame.insert(3, "rank", ranks.astype(int))
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
