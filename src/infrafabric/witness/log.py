"""The witness log: an append-only RFC 9162 Merkle tree in its own SQLite file.

* ``entries`` holds each entry's bytes and leaf hash; ``nodes`` holds the hash of every
  complete subtree above the leaves, written once when its last leaf arrives. An append
  therefore writes one row per entry plus one per completed subtree (one on average), and
  any root or proof reads O(log n) rows, never the log.
* The right edge of the tree (the perfect subtrees that make up the current size, at
  most one per level) is kept in memory, so an append reads nothing.
* ``append`` takes a batch of entries and a cursor (how far the source of the entries
  has been read) and commits both in one transaction: after a crash the log and the
  cursor agree, so a feeder that restarts from the cursor neither loses nor repeats an
  entry.
* A file of its own: appending never holds the board's write lock.
* Looking an entry up by its leaf hash (a proof by hash) uses ``leaf_runs``: the leaf
  hashes of each run of ``LEAF_RUN`` entries, sorted, written once when the run is
  complete. An index on ``entries (leaf)`` would put each new hash at a random place in
  one big B-tree, and SQLite writes every page a transaction touches to the WAL (then
  again at the checkpoint): at 300,000 entries that index made an append of 20 entries
  write 15 KB per entry, against about 2.5 KB without it in rounds of 100 (and 44
  against 12 to 15 us of CPU per entry). A run goes to the end of its table instead, about 50 bytes
  an entry. A lookup seeks once per run (about 250 at 1,000,000 entries) and scans the
  last, incomplete run.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Final, Literal, Protocol

from infrafabric.errors import StoreError
from infrafabric.storage.sqlite import locked_connection
from infrafabric.witness.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_hash,
)

__all__ = ["LEAF_RUN", "LogDamaged", "MerkleLog", "WitnessLog", "fold_edge", "load_edge"]

#: Entries per sorted run of leaf hashes (``leaf_runs``); a lookup by hash scans at most
#: this many entries that no run holds yet.
LEAF_RUN: Final = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    idx   INTEGER PRIMARY KEY,
    leaf  BLOB NOT NULL,
    entry BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS leaf_runs (
    run  INTEGER NOT NULL,
    leaf BLOB NOT NULL,
    idx  INTEGER NOT NULL,
    PRIMARY KEY (run, leaf, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    source   TEXT PRIMARY KEY,
    position INTEGER NOT NULL
) WITHOUT ROWID;
"""


class LogDamaged(StoreError):
    """The log's own data is inconsistent (a subtree it must hold is missing: the file
    was damaged or edited by hand). Unlike an unavailable store, asking again will not
    help: ``ifab witness verify`` says where the damage is."""


class MerkleLog(Protocol):
    """What the feeder, the server and an audit use of a witness log: this SQLite file,
    or the log a fabric keeps on Redis (:mod:`infrafabric.witness.redis_log`)."""

    damaged: str

    @property
    def size(self) -> int: ...

    def append(
        self, entries: Sequence[bytes], *, source: str | None = None, position: int = 0
    ) -> range: ...

    def refresh(self) -> int: ...

    def save_checkpoint(self, size: int, note: str) -> None: ...

    def cursor(self, source: str) -> int: ...

    def root(self, size: int | None = None) -> bytes: ...

    def perfect(self, level: int, index: int) -> bytes: ...

    def entries(self, start: int, end: int) -> list[tuple[int, bytes, bytes]]: ...

    def index_of(self, leaf: bytes) -> int | None: ...

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]: ...

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]: ...

    def checkpoints(self, limit: int = 1) -> list[tuple[int, str]]: ...

    def checkpoint_at(self, size: int) -> str | None: ...

    def stored_nodes(self) -> list[tuple[int, int, bytes]]: ...

    def entries_outside(self, size: int) -> tuple[tuple[int, int], tuple[int, int]]: ...

    def close(self) -> None: ...


class WitnessLog:
    """An append-only Merkle log in one SQLite file (created if missing, mode 0600)."""

    def __init__(
        self, path: Path | str, *, synchronous: Literal["FULL", "NORMAL"] = "FULL"
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch(mode=0o600)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # Every value as its stored bytes: an entry edited by hand into TEXT (perhaps
            # not even UTF-8) must reach an audit as bytes that fail their leaf hash, not
            # make reading it fail. The text columns are decoded where they are read.
            self._db.text_factory = bytes
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            self._size = _stored_size(self._db)
            self._index_leaves()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the witness log {self.path}: {exc}") from exc
        #: Why the log cannot grow (a subtree is missing: the file was damaged or edited);
        #: it can still be read and audited.
        self.damaged = ""
        try:
            self._edge = self._load_edge(self._size)
        except StoreError as exc:
            self._edge, self.damaged = [], str(exc)

    # -- writing --------------------------------------------------------------------------

    def append(
        self, entries: Sequence[bytes], *, source: str | None = None, position: int = 0
    ) -> range:
        """Append ``entries`` in one transaction and return their indexes. With ``source``,
        record ``position`` as how far that source has been witnessed, atomically."""
        if self.damaged:
            raise StoreError(f"the witness log cannot grow: {self.damaged}")
        with self._transaction() as db:
            first = self._size
            edge = list(self._edge)
            leaves = []
            nodes = []
            for offset, entry in enumerate(entries):
                index = first + offset
                leaf = leaf_hash(entry)
                leaves.append((index, leaf, entry))
                edge.append((0, index, leaf))
                # Two complete subtrees of the same height side by side make one more.
                while len(edge) >= 2 and edge[-1][0] == edge[-2][0]:
                    level, right_index, right = edge.pop()
                    _, _, left = edge.pop()
                    parent = (level + 1, right_index >> 1, node_hash(left, right))
                    nodes.append(parent)
                    edge.append(parent)
            db.executemany("INSERT INTO entries (idx, leaf, entry) VALUES (?, ?, ?)", leaves)
            db.executemany("INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
            if (first + len(entries)) // LEAF_RUN > first // LEAF_RUN:
                _sort_runs(db, first + len(entries))
            if source is not None:
                db.execute(
                    "INSERT INTO cursors (source, position) VALUES (?, ?)"
                    " ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                    (source, position),
                )
        self._size, self._edge = first + len(entries), edge
        return range(first, first + len(entries))

    def refresh(self) -> int:
        """Catch up with appends made by another process (a reader of a log that a
        feeder process writes); returns the size."""
        with self._read() as db:  # the lock is held throughout: an append cannot interleave
            size = _stored_size(db)
            if size > self._size:  # only ever forward
                try:
                    self._edge, self._size = self._load_edge(size), size
                except StoreError as exc:
                    self._edge, self._size, self.damaged = [], size, str(exc)
            return self._size

    def save_checkpoint(self, size: int, note: str) -> None:
        """Keep a signed checkpoint (its note text) for tree size ``size``.

        Durably even under ``synchronous=NORMAL``: a checkpoint is published (the server
        hands it out), so a power cut must not take it back. Syncing the WAL at this
        commit also syncs every append before it (the WAL is written in order), so each
        stored checkpoint survives together with the entries it signs; the appends
        between checkpoints stay cheap."""
        durable = self._synchronous != "FULL"
        with self._lock:
            if durable:  # (outside a transaction: SQLite refuses the pragma inside one)
                self._set_synchronous("FULL")
            try:
                with self._transaction() as db:
                    db.execute(
                        "INSERT INTO checkpoints (size, note) VALUES (?, ?)"
                        " ON CONFLICT (size) DO UPDATE SET note = excluded.note",
                        (size, note),
                    )
            finally:
                if durable and not self._db.in_transaction:
                    # (after a failed COMMIT _transaction rolled back; were it still
                    # open, the pragma would fail and hide the real error)
                    self._set_synchronous(self._synchronous)

    # -- reading --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def cursor(self, source: str) -> int:
        """How far ``source`` has been witnessed (0: not at all)."""
        with self._read() as db:
            row = db.execute("SELECT position FROM cursors WHERE source = ?", (source,)).fetchone()
        return 0 if row is None else int(row[0])

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree of the first ``size`` entries (default: all)."""
        size = self._size if size is None else size
        self._check_size(size)
        if size == self._size:
            return fold_edge(self._edge)
        with self._read():
            return range_hash(0, size, self)

    def perfect(self, level: int, index: int) -> bytes:
        """:class:`~infrafabric.witness.merkle.Nodes`: a complete subtree's hash."""
        with self._read() as db:
            if level == 0:
                row = db.execute("SELECT leaf FROM entries WHERE idx = ?", (index,)).fetchone()
            else:
                row = db.execute(
                    "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)
                ).fetchone()
        if row is None:
            raise LogDamaged(f"the witness log lacks subtree {level}/{index}")
        return _blob(row[0])

    def entries(self, start: int, end: int) -> list[tuple[int, bytes, bytes]]:
        """Entries ``[start, end)`` as ``(index, leaf hash, entry bytes)``."""
        with self._read() as db:
            rows = db.execute(
                "SELECT idx, leaf, entry FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            ).fetchall()
        return [(int(row[0]), _blob(row[1]), _blob(row[2])) for row in rows]

    def index_of(self, leaf: bytes) -> int | None:
        """The first index whose leaf hash is ``leaf``, or ``None``: a seek in each
        sorted run, in order, then a scan of the entries after the last run. A run's
        answer counts only if the entry there still has that hash (the runs are not
        part of the tree: a file edited by hand must not make a proof of another entry)."""
        with self._read() as db:
            runs = _runs(db)
            for run in range(runs):
                row = db.execute(
                    "SELECT min(r.idx) FROM leaf_runs AS r JOIN entries AS e ON e.idx = r.idx"
                    " WHERE r.run = ? AND r.leaf = ? AND e.leaf = r.leaf",
                    (run, leaf),
                ).fetchone()
                if row[0] is not None:
                    return int(row[0])
            row = db.execute(
                "SELECT min(idx) FROM entries WHERE idx >= ? AND leaf = ?",
                (runs * LEAF_RUN, leaf),
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self._size if size is None else size
        self._check_size(size)
        with self._read():
            return inclusion_proof(index, size, self)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        new_size = self._size if new_size is None else new_size
        self._check_size(new_size)
        with self._read():
            return consistency_proof(old_size, new_size, self)

    def checkpoints(self, limit: int = 1) -> list[tuple[int, str]]:
        """The latest ``limit`` signed checkpoints ``(size, note)``, newest first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT ?", (limit,)
            ).fetchall()
        return [(int(row[0]), _text(row[1])) for row in rows]

    def stored_nodes(self) -> list[tuple[int, int, bytes]]:
        """Every stored subtree hash above the leaves ``(level, index, hash)`` (an audit)."""
        with self._read() as db:
            rows = db.execute("SELECT level, idx, hash FROM nodes ORDER BY level, idx").fetchall()
        return [(int(row[0]), int(row[1]), _blob(row[2])) for row in rows]

    def entries_outside(self, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The entry rows that are not entries ``[0, size)`` of the log (an audit; only a
        file damaged or edited by hand has any): ``(how many, the highest index)`` of the
        rows below 0 and ``(how many, the lowest index)`` of those at ``size`` or after
        (``(0, 0)`` where there are none)."""
        with self._read() as db:
            below = db.execute("SELECT count(*), max(idx) FROM entries WHERE idx < 0").fetchone()
            above = db.execute(
                "SELECT count(*), min(idx) FROM entries WHERE idx >= ?", (size,)
            ).fetchone()
        return (int(below[0]), int(below[1] or 0)), (int(above[0]), int(above[1] or 0))

    def checkpoint_at(self, size: int) -> str | None:
        with self._read() as db:
            row = db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else _text(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- internals ------------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise ValueError(f"the log has {self._size} entries, not {size}")

    def _set_synchronous(self, mode: str) -> None:
        with self._read() as db:
            db.execute(f"PRAGMA synchronous={mode}")

    def _load_edge(self, size: int) -> list[tuple[int, int, bytes]]:
        return load_edge(size, self.perfect)

    def _index_leaves(self) -> None:
        """Bring ``leaf_runs`` up to the entries, writing only when something is
        missing (a log from before the runs, which had an index on ``entries (leaf)``
        instead, or one an older version appended to): opening to read writes nothing."""
        db = self._db

        def behind() -> bool:
            old_index = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'entries_by_leaf'"
            ).fetchone()
            return old_index is not None or _runs(db) < self._size // LEAF_RUN

        if behind():
            try:
                with self._transaction() as db:
                    if behind():  # another process may have done it meanwhile
                        db.execute("DROP INDEX IF EXISTS entries_by_leaf")
                        _sort_runs(db, self._size)
            except StoreError:
                # A file this process may only read (an audit of a copy), say. Nothing
                # depends on it: the stored runs are always a prefix, and a lookup
                # scans every entry after them.
                pass

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:  # a COMMIT that failed leaves it open
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: {exc}") from exc

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return locked_connection(self._lock, self._db, self.path)


def _blob(value: object) -> bytes:
    """A BLOB column's bytes. A value edited by hand may be TEXT (bytes here, with the
    connection's ``text_factory``) or a number: SQLite's own text form of it then, as
    ``CAST(... AS BLOB)`` gives."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return str(value).encode()


def _text(value: object) -> str:
    """A TEXT column (read as bytes); bytes that are not UTF-8 come back replaced, and
    then fail whatever check the text was for (a checkpoint's signature)."""
    return _blob(value).decode("utf-8", "replace")


def _stored_size(db: sqlite3.Connection) -> int:
    """The size of the log in ``db``: one past its highest entry, where the next append
    goes. Not the number of rows: in a file damaged or edited by hand an entry missing
    from the middle, or a stray row at a negative index, must not move the end of the
    tree (the stored subtrees, the next index) and so stop the log for good; an audit
    reports both."""
    row = db.execute("SELECT max(idx) FROM entries").fetchone()
    return 0 if row is None or row[0] is None else max(0, int(row[0]) + 1)


def _runs(db: sqlite3.Connection) -> int:
    """How many runs of leaf hashes are stored (they are written in order)."""
    row = db.execute("SELECT max(run) FROM leaf_runs").fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def _sort_runs(db: sqlite3.Connection, size: int) -> None:
    """Store, sorted, the leaf hashes of every complete run of the first ``size``
    entries not stored yet (inside the caller's transaction)."""
    for run in range(_runs(db), size // LEAF_RUN):
        db.execute(
            "INSERT INTO leaf_runs (run, leaf, idx) SELECT ?, leaf, idx FROM entries"
            " WHERE idx >= ? AND idx < ? ORDER BY leaf, idx",
            (run, run * LEAF_RUN, (run + 1) * LEAF_RUN),
        )


def load_edge(size: int, perfect: Callable[[int, int], bytes]) -> list[tuple[int, int, bytes]]:
    """The perfect subtrees that make up a tree of ``size`` leaves, left to right, as
    ``(level, index, hash)``, read with ``perfect(level, index)``."""
    edge = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            edge.append((level, start >> level, perfect(level, start >> level)))
            start += 1 << level
    return edge


def fold_edge(edge: Sequence[tuple[int, int, bytes]]) -> bytes:
    """The root from the right edge: H(p0, H(p1, ... pk)), the RFC tree of that size."""
    if not edge:
        return EMPTY_ROOT
    acc = edge[-1][2]
    for _, _, left in reversed(edge[:-1]):
        acc = node_hash(left, acc)
    return acc
