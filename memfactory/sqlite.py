"""The SQLite plumbing shared by the memory bank and the runs database.

Both files are used by several processes at once (a trainer writes while the UI reads; GRPO
rollouts write banks in parallel), so both follow the same rules, kept here once:

* ``connect``: autocommit connection (we open transactions ourselves), busy timeout, and the
  switch to WAL (readers never block the writer) retried until the timeout: SQLite answers
  "database is locked" at once, without waiting, when two processes switch a fresh file to WAL
  together. ``synchronous=NORMAL`` stays consistent after a crash in WAL mode and skips an fsync
  per commit.
* ``sqlite_errors``: every SQLite failure becomes one readable MemFactoryError that names the file,
  what was being done and what to do (locked, full or read-only disk, not a SQLite file).
* ``immediate``: a ``BEGIN IMMEDIATE`` transaction, which takes the write lock up front so the busy
  timeout covers the whole write; it commits, or rolls back on any error (a failed commit too).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memfactory.errors import MemFactoryError

MEMORY = ":memory:"


def connect(path: str | Path, *, timeout: float, check_same_thread: bool = True) -> sqlite3.Connection:
    """An autocommit connection to ``path`` in WAL mode (``":memory:"`` stays in memory).

    Raises ``sqlite3`` errors as they are: callers wrap the call in :func:`sqlite_errors`.
    """
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if str(path) != MEMORY:
            mode = switch_to_wal(conn, timeout)
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(f"could not switch to WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def switch_to_wal(conn: sqlite3.Connection, timeout: float) -> str:
    """``PRAGMA journal_mode=wal`` unless the file is in WAL already, retried while another
    process does the same; returns the journal mode the file ends up in."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
            if mode.lower() == "wal":
                return mode
            return str(conn.execute("PRAGMA journal_mode=wal").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def sqlite_errors(
    subject: str, action: str, *, path: str | Path | None = None, timeout: float, locked_hint: str = ""
) -> Iterator[None]:
    """Turn SQLite (and file system) failures into one MemFactoryError line.

    ``subject`` names the file for the user ("memory bank /x/bank.db"), ``action`` what was being
    done ("add 3 memories"); ``path`` lets a "cannot open" on a read-only file system be said
    plainly; ``locked_hint`` is the advice added when another writer held the lock too long.
    """
    try:
        yield
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            hint = f" {locked_hint}" if locked_hint else ""
            raise MemFactoryError(
                f"{subject} is locked by another connection; gave up after waiting {timeout:g}s to {action}. "
                f"Nothing was written.{hint}"
            ) from exc
        raise MemFactoryError(f"{subject}: cannot {action}: {disk_hint(str(exc), path)}") from exc
    except sqlite3.IntegrityError as exc:
        raise MemFactoryError(f"{subject}: cannot {action}: {exc}; nothing was written") from exc
    except sqlite3.DatabaseError as exc:
        raise MemFactoryError(
            f"{subject} is unreadable ({exc}) while trying to {action}: not a readable SQLite file written by "
            "MemFactory; move it away to start a new one"
        ) from exc
    except OSError as exc:
        raise MemFactoryError(f"{subject}: cannot {action}: {exc}") from exc


def disk_hint(message: str, path: str | Path | None = None) -> str:
    """SQLite's words for a full or read-only disk, said plainly (the failed write rolled back)."""
    if "disk is full" in message:
        return f"no space left on device ({message}); nothing was written, the file is as it was"
    read_only = "readonly" in message or "read-only" in message
    if path is not None and str(path) != MEMORY and not read_only and "unable to open" in message:
        try:
            read_only = bool(os.statvfs(Path(path).parent).f_flag & os.ST_RDONLY)
        except OSError:
            pass
    if read_only:
        return f"read-only file system or file ({message}); nothing was written, the file is as it was"
    return message


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction: everything inside commits together or not at all."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc)
    return "locked" in message or "busy" in message


__all__ = ["MEMORY", "connect", "disk_hint", "immediate", "sqlite_errors", "switch_to_wal"]
