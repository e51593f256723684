"""The local leaderboard: one SQLite file that any number of scorers can write at once.

SQLite serialises writers with its own lock (we wait up to a minute for it), so two scorers that
finish together both land. A test set is known by its content (a hash of its ground-truth files),
not its folder: a folder rewritten with other frames is another test set, and its runs are ranked
apart. After each committed write the whole board is exported to CSV while holding the write lock,
so the CSV on disk shows exactly the latest committed board (never a row that was rolled back).
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from rawdenoise.errors import InputError
from rawdenoise.files import atomic_path, unwritable_reason

COLUMNS = [
    "contest", "testset", "name", "score", "psnr", "ssim", "images", "model", "params", "weights_bytes", "source",
    "scored_at", "gt_folder",
]  # fmt: skip

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
    gt_folder TEXT,
    PRIMARY KEY (contest, testset, name)
)
"""


@dataclass
class Entry:
    """One run on one test set: runs are ranked only against runs scored on the same ground truth."""

    contest: str
    testset: str  # ground_truth_key(): the ground truth's content
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
    gt_folder: str | None = None  # where the ground truth was when scored, for people to read


def ground_truth_key(gt_files: Iterable[Path]) -> str:
    """What a test set is: the names and bytes of its ground-truth files (16 hex digits of SHA-256)."""
    digest = hashlib.sha256()
    for path in sorted(gt_files, key=lambda p: p.name):
        file_hash = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                file_hash.update(block)
        digest.update(f"{path.name}\0{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest()[:16]


@contextmanager
def _connection(db: Path) -> Iterator[sqlite3.Connection]:
    """An open board; SQLite's failures (read-only, locked past the timeout, not a database) become
    InputErrors naming the file."""
    conn = None
    try:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(db, timeout=60, isolation_level=None)
        except OSError as err:
            raise InputError(f"{db}: cannot open the leaderboard ({unwritable_reason(db, err)})") from None
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "gt_folder" not in columns:  # rows keyed by folder path, not content: keep them aside
            _set_aside(conn, "runs_keyed_by_folder")
        yield conn
    except sqlite3.Error as err:
        raise InputError(f"{db}: the leaderboard database cannot be used ({err})") from None
    finally:
        if conn is not None:
            conn.close()


def _set_aside(conn: sqlite3.Connection, name: str) -> None:
    taken = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    k = 1
    while (aside := name if k == 1 else f"{name}_{k}") in taken:
        k += 1
    conn.execute(f"ALTER TABLE runs RENAME TO {aside}")
    conn.execute(_SCHEMA)


def record(db: str | Path, entry: Entry, csv_path: str | Path | None = None) -> None:
    """Insert or replace (same contest, test set and name) one run; then re-export the board to CSV."""
    db = Path(db)
    if csv_path is not None and Path(csv_path).resolve() == db.resolve():
        raise InputError(f"{db}: the board's CSV export would overwrite the database itself; give the database another name")
    entry.scored_at = entry.scored_at or datetime.now(timezone.utc).isoformat(timespec="seconds")
    row = asdict(entry)
    with _connection(db) as conn:
        with _transaction(conn):  # BEGIN IMMEDIATE takes the write lock now: concurrent scorers queue here
            conn.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [row[c] for c in COLUMNS],
            )
        if csv_path is not None:
            with _transaction(conn):  # holds the lock so exports land in commit order; writes nothing
                _export(conn, Path(csv_path))


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def ranked(db: str | Path, contest: str | None = None, testset: str | None = None) -> list[Entry]:
    """Best score first; ties go to the earlier run. Filter by contest and test set when given."""
    db = Path(db)
    if not db.is_file():
        return []
    filters = [(c, v) for c, v in (("contest", contest), ("testset", testset)) if v]
    where = ("WHERE " + " AND ".join(f"{c} = ?" for c, _ in filters)) if filters else ""
    with _connection(db) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM runs {where} ORDER BY score DESC, scored_at ASC", [v for _, v in filters]
        ).fetchall()
    return [Entry(**dict(zip(COLUMNS, r))) for r in rows]


def _export(conn: sqlite3.Connection, csv_path: Path) -> None:
    import pandas as pd

    frame = pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM runs ORDER BY contest, testset, score DESC", conn)
    ranks = frame.groupby(["contest", "testset"])["score"].rank(ascending=False, method="min")
    frame.insert(3, "rank", ranks.astype(int))
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
