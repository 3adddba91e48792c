"""Ingest's rows on disk: entries and the "seen" sets live in a temporary SQLite file.

Ingest must see every row before it writes the first patient (rows are grouped by patient and
checked for duplicates across the whole table). Held in Python, that costs ~1-10 kB per image:
gigabytes for SLICE-3D's 401,059 rows. Here each entry is a pickled row of a table with a
bounded page cache, and grouping is an ORDER BY that SQLite sorts on disk, so ingest's memory
does not grow with the table (the manifest's skip and warning lists aside).

States of an entry: 1 typed (passed the row checks), 2 located (its image was found).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..core.paths import scratch_file

CACHE_KIB = 1024  # SQLite page cache per connection (the rest of the store stays on disk)
BATCH = 2000  # entries read or updated per statement


class RowStore:
    """A temporary SQLite file (deleted on close) holding entries and named key -> value maps."""

    def __init__(self, folder: str | Path | None = None) -> None:
        handle, self.path = scratch_file(folder, "ingest", ".db")  # named with this pid
        os.close(handle)
        self.db = None
        try:
            self.db = self._connect()
            self.db.executescript(
                """
                CREATE TABLE entries (seq INTEGER PRIMARY KEY, state INTEGER, patient_id TEXT,
                                      lesion_id TEXT, data BLOB);
                CREATE TABLE seen (name TEXT, key TEXT, value, PRIMARY KEY (name, key))
                    WITHOUT ROWID;
                """
            )
        except BaseException:  # a full disk already: the file goes with the error
            self.close()
            raise
        self._seq = 0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # A scratch file: no journal, no fsync; sorts spill to disk, not memory.
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            f"cache_size = -{CACHE_KIB}",
            "temp_store = FILE",
        ):
            db.execute(f"PRAGMA {pragma}")
        return db

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error, AttributeError):
            self.db.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    # ---- "seen" maps: first value wins -------------------------------------------------

    def first(self, name: str, key: str, value) -> object | None:
        """The value stored under `key` before, or None after storing `value` there."""
        row = self.db.execute(
            "SELECT value FROM seen WHERE name = ? AND key = ?", (name, key)
        ).fetchone()
        if row is not None:
            return row[0]
        self.db.execute("INSERT INTO seen VALUES (?, ?, ?)", (name, key, value))
        return None

    def count(self, name: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM seen WHERE name = ?", (name,)).fetchone()[0]

    # ---- entries ---------------------------------------------------------------------------

    def begin(self) -> None:
        self.db.execute("BEGIN")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def add(self, entry) -> None:
        """Append an entry (state 1) in table order."""
        self._seq += 1
        self.db.execute(
            "INSERT INTO entries VALUES (?, 1, ?, ?, ?)",
            (self._seq, entry.patient_id, entry.lesion_id, pickle.dumps(entry, protocol=5)),
        )

    def entries(self, state: int) -> Iterator[tuple[int, object]]:
        """(seq, entry) of every entry in `state`, in table order, read in batches (updates
        between batches are safe)."""
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT seq, data FROM entries WHERE seq > ? AND state = ? ORDER BY seq LIMIT ?",
                (last, state, BATCH),
            ).fetchall()
            if not rows:
                return
            for seq, data in rows:
                yield seq, pickle.loads(data)
            last = rows[-1][0]

    def drop(self, seqs: list[int]) -> None:
        """Entries that are skipped leave the store's later stages (state 0)."""
        self.db.executemany("UPDATE entries SET state = 0 WHERE seq = ?", ((s,) for s in seqs))

    def promote(self, updates: list[tuple[int, object]]) -> None:
        """(seq, entry) pairs move to state 2 with their new contents (a located ref)."""
        self.db.executemany(
            "UPDATE entries SET state = 2, data = ? WHERE seq = ?",
            ((pickle.dumps(e, protocol=5), seq) for seq, e in updates),
        )

    def conflicting_lesions(self, state: int) -> dict[str, list[str]]:
        """Lesion ids that appear under several patients -> those patients (sorted)."""
        rows = self.db.execute(
            "SELECT lesion_id FROM entries WHERE state = ? GROUP BY lesion_id "
            "HAVING COUNT(DISTINCT patient_id) > 1",
            (state,),
        ).fetchall()
        return {
            lesion: sorted(
                p
                for (p,) in self.db.execute(
                    "SELECT DISTINCT patient_id FROM entries WHERE state = ? AND lesion_id = ?",
                    (state, lesion),
                )
            )
            for (lesion,) in rows
        }

    def lesion_rows(self, state: int, lesions: list[str]) -> list[tuple[int, object]]:
        """(seq, entry) of the entries of these lesions, in table order."""
        out = []
        for lesion in lesions:
            out += self.db.execute(
                "SELECT seq, data FROM entries WHERE state = ? AND lesion_id = ?", (state, lesion)
            ).fetchall()
        return [(seq, pickle.loads(data)) for seq, data in sorted(out)]

    def patients(self) -> list[tuple[str, int]]:
        """(patient id, located entries) sorted by id, as Python sorts str (SQLite compares
        UTF-8 bytes: the same order as code points)."""
        self.db.execute("CREATE INDEX IF NOT EXISTS by_patient ON entries (state, patient_id, seq)")
        return self.db.execute(
            "SELECT patient_id, COUNT(*) FROM entries WHERE state = 2 "
            "GROUP BY patient_id ORDER BY patient_id"
        ).fetchall()

    def grouped(self) -> Iterator[object]:
        """Located entries by patient id, then table order, on a connection of their own (the
        pool's task thread reads one such stream while the writer reads another)."""
        db = self._connect()
        try:
            for (data,) in db.execute(
                "SELECT data FROM entries WHERE state = 2 ORDER BY patient_id, seq"
            ):
                yield pickle.loads(data)
        finally:
            db.close()


class DiskSet:
    """A set of strings in its own temporary SQLite file (its own file: the row store's readers
    must never wait on its writes)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        handle, self.path = scratch_file(folder, "set", ".db")
        os.close(handle)
        self.db = None
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            for pragma in (
                "journal_mode = OFF",
                "synchronous = OFF",
                f"cache_size = -{CACHE_KIB}",
            ):
                self.db.execute(f"PRAGMA {pragma}")
            self.db.execute("CREATE TABLE s (key TEXT PRIMARY KEY) WITHOUT ROWID")
            self.db.execute("BEGIN")  # one transaction: nothing here must survive the process
        except BaseException:  # a full disk already: the file goes with the error
            self.close()
            raise
        self.size = 0

    def add(self, key: str) -> bool:
        """Add `key`; whether it was new."""
        new = self.db.execute("INSERT OR IGNORE INTO s VALUES (?)", (key,)).rowcount == 1
        self.size += new
        return new

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error, AttributeError):
            self.db.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
