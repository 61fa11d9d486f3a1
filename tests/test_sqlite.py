"""The SQLite plumbing shared by the memory bank and the runs database, on real files."""

from __future__ import annotations

import sqlite3

import pytest

from memfactory.errors import MemFactoryError
from memfactory.sqlite import MEMORY, connect, disk_hint, immediate, sqlite_errors


def test_connect_switches_a_file_to_wal_and_leaves_memory_alone(tmp_path):
    conn = connect(tmp_path / "a.db", timeout=1.0)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1000
    assert conn.isolation_level is None  # autocommit: transactions are ours
    again = connect(tmp_path / "a.db", timeout=1.0)  # already WAL: no switch needed
    assert again.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connect(MEMORY, timeout=1.0).execute("PRAGMA journal_mode").fetchone()[0] == "memory"


def test_immediate_commits_or_rolls_back_everything(tmp_path):
    conn = connect(tmp_path / "t.db", timeout=1.0)
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    with immediate(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError), immediate(conn):
        conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("INSERT INTO t VALUES (1)")
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)] and not conn.in_transaction


def test_immediate_takes_the_write_lock_up_front(tmp_path):
    holder = connect(tmp_path / "l.db", timeout=1.0)
    waiter = connect(tmp_path / "l.db", timeout=0.1)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with (
            pytest.raises(MemFactoryError) as caught,
            sqlite_errors("test file", "write", timeout=0.1, locked_hint="Wait."),
            immediate(waiter),
        ):
            pass
    finally:
        holder.execute("ROLLBACK")
    assert str(caught.value) == (
        "test file is locked by another connection; gave up after waiting 0.1s to write. Nothing was written. Wait."
    )


def test_errors_name_the_file_the_action_and_the_cause(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database " * 100)
    unreadable = r"bank junk\.db is unreadable .* while trying to open: not a readable SQLite"
    with pytest.raises(MemFactoryError, match=unreadable), sqlite_errors("bank junk.db", "open", timeout=1.0):
        connect(junk, timeout=1.0)
    conn = connect(tmp_path / "i.db", timeout=1.0)
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    duplicate = r"^db: cannot insert: UNIQUE constraint failed: t\.x; nothing was written$"
    with pytest.raises(MemFactoryError, match=duplicate), sqlite_errors("db", "insert", timeout=1.0):
        conn.execute("INSERT INTO t VALUES (1)")
    denied = r"^db: cannot make its folder: .*denied"
    with pytest.raises(MemFactoryError, match=denied), sqlite_errors("db", "make its folder", timeout=1.0):
        raise PermissionError("permission denied")


def test_disk_hint_says_full_and_read_only_plainly(tmp_path):
    assert disk_hint("database or disk is full").startswith("no space left on device")
    assert disk_hint("attempt to write a readonly database").startswith("read-only file system or file")
    assert disk_hint("unable to open database file", tmp_path / "x.db") == "unable to open database file"  # writable
    assert disk_hint("no such table: t") == "no such table: t"
