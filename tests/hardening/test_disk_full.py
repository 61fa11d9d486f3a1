"""A full disk or a read-only workspace: the previous checkpoint / bank content survives, and the
user reads one clear line, not a traceback.

The file systems are real: a size-limited tmpfs mounted for the test (needs root or
CAP_SYS_ADMIN; without it those tests are skipped with that reason), filled to the last byte
while a real trainer is held in the middle of a checkpoint write (``MEMFACTORY_TEST_CHECKPOINT_PAUSE``)
or remounted read-only between runs. Running as root, ``chmod`` would not stop a write, so
read-only is a read-only remount. The runs database lives outside the small file system, as it
would on a separate volume, so the run's failed status and error can be read back.

Where no tmpfs can be mounted, ``test_checkpoint_write_past_a_file_size_limit_...`` still runs
the same failure path: the trainer runs under RLIMIT_FSIZE (SIGXFSZ ignored), so writing the
weights file fails with EFBIG exactly where a full disk fails with ENOSPC.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hardening_util import jsonl_steps, missing_files, spawn, train_command, train_env, wait_for

from memfactory.errors import MemFactoryError
from memfactory.memory.embed import get_embedder
from memfactory.memory.store import MemoryStore
from memfactory.tracking.runs import RunsDB
from memfactory.trainer.checkpoint import PAUSE_ENV, checkpoint_name, list_checkpoints


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs at ``tmp_path/fs`` (unmounted afterwards), or a skip saying why not."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command here to make a size-limited tmpfs")
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until the file system has no byte left; returns it."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        block = b"\0" * (1 << 16)
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                block = block[: len(block) // 2]
                if not block:
                    break
    finally:
        os.close(fd)
    return filler


def remount(folder: Path, mode: str) -> None:
    done = _mount("-o", f"remount,{mode}", str(folder))
    assert done.returncode == 0, done.stderr


def train_args(fs: Path, db: Path, steps: int) -> list[str]:
    return ["--set", f"trainer.steps={steps}", "--set", f"logging.runs_dir={fs / 'runs'}",
            "--set", f"logging.runs_db={db}"]


def error_line(stderr: str) -> str:
    """What the user reads: the CLI's one ``error:`` line (model-loading progress bars aside)."""
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_checkpoint_write_on_a_full_disk_keeps_the_previous_one_and_resume_works(small_fs: Path, tmp_path: Path):
    db_path = tmp_path / "memfactory.db"
    run_dir = small_fs / "runs" / "full"
    checkpoints = run_dir / "checkpoints"
    # hold the save of step 4 after its weights are written, fill the disk, let it go on
    proc = spawn(tmp_path, *train_args(small_fs, db_path, 6), "--run-id", "full",
                 env={PAUSE_ENV: "4:5"}, stderr=subprocess.PIPE)

    def half_written() -> bool:
        return checkpoints.is_dir() and any(p.name.startswith(".step-000004.tmp-") for p in checkpoints.iterdir())

    wait_for(half_written, proc=proc)
    filler = fill(small_fs)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    line = error_line(err)
    assert line == (f"error: cannot write checkpoint {checkpoints / checkpoint_name(4)}: no space left on device; "
                    f"the previous checkpoint {checkpoint_name(3)} is intact")
    record = RunsDB(db_path).require("full")
    assert record.status == "failed" and "no space left on device" in record.error
    # the failed save left nothing behind; the earlier ones are complete
    assert [p.name for p in list_checkpoints(run_dir)] == [checkpoint_name(2), checkpoint_name(3)]
    assert sorted(p.name for p in checkpoints.iterdir()) == [checkpoint_name(2), checkpoint_name(3)]
    assert all(missing_files(p) == [] for p in list_checkpoints(run_dir))

    filler.unlink()  # space is back: resume from step 3 to the end
    resumed = spawn(tmp_path, *train_args(small_fs, db_path, 6), "--resume", "full", stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert f"resumed from {checkpoints / checkpoint_name(3)} (step 3)" in (run_dir / "stdout.log").read_text()
    assert jsonl_steps(run_dir / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]
    record = RunsDB(db_path).require("full")
    assert (record.status, record.step, record.error) == ("finished", 6, None)


def test_read_only_workspace_refuses_with_one_line_and_keeps_the_checkpoints(small_fs: Path, tmp_path: Path):
    db_path = tmp_path / "memfactory.db"
    run_dir = small_fs / "runs" / "ro"
    first = spawn(tmp_path, *train_args(small_fs, db_path, 3), "--run-id", "ro")
    assert first.wait(timeout=300) == 0
    before = {p.name: (p / "model" / "model.safetensors").read_bytes() for p in list_checkpoints(run_dir)}
    assert sorted(before) == [checkpoint_name(2), checkpoint_name(3)]

    remount(small_fs, "ro")
    try:
        refused = spawn(tmp_path, *train_args(small_fs, db_path, 5), "--resume", "ro", stderr=subprocess.PIPE)
        _, err = refused.communicate(timeout=300)
        assert refused.returncode == 2
        assert error_line(err) == f"error: cannot write to run folder {run_dir}: read-only file system"
    finally:
        remount(small_fs, "rw")
    after = {p.name: (p / "model" / "model.safetensors").read_bytes() for p in list_checkpoints(run_dir)}
    assert after == before
    assert RunsDB(db_path).require("ro").status == "finished"  # the refused resume never started

    resumed = spawn(tmp_path, *train_args(small_fs, db_path, 5), "--resume", "ro", stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert jsonl_steps(run_dir / "metrics.jsonl") == [1, 2, 3, 4, 5]
    assert RunsDB(db_path).require("ro").status == "finished"


def _bank_state(store: MemoryStore) -> tuple[list[tuple], list[tuple]]:
    items = [(m.id, m.scope, m.text, m.key, m.updated_at) for m in store.all()]
    history = [(h.id, h.memory_id, h.op, h.new_value) for h in store.history()]
    return items, history


def test_memory_bank_write_on_a_full_disk_rolls_back_and_says_so(small_fs: Path):
    path = small_fs / "bank.db"
    embedder = get_embedder("hashing")
    store = MemoryStore(path, embedder=embedder)
    ids = store.add_many([f"fact number {i} about the weather in town {i % 7}" for i in range(40)])
    store.update(ids[0], "fact number 0 was corrected")
    store.delete(ids[1])
    before = _bank_state(store)
    filler = fill(small_fs)

    big = [f"a long memory {i}: " + "lorem ipsum dolor sit amet " * 40 for i in range(400)]
    with pytest.raises(MemFactoryError) as caught:
        store.add_many(big)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "no space left on device" in message
    result = store.apply(
        [{"op": "ADD", "text": t} for t in big] + [{"op": "UPDATE", "id": ids[2], "text": "changed"},
                                                   {"op": "DELETE", "id": ids[3]}],
        raise_on_error=False,
    )
    assert not result.ok and "no space left on device" in result.error and result.changed == 0
    assert _bank_state(store) == before  # both failed transactions rolled back
    assert [h.item.id for h in store.search("weather in town 3", k=3)]  # still searchable
    store.close()

    reopened = MemoryStore(path, embedder=embedder)  # what a new process would see
    assert _bank_state(reopened) == before
    filler.unlink()
    reopened.add("space is back")
    assert reopened.count() == len(before[0]) + 1
    reopened.close()


def test_memory_bank_on_a_read_only_file_system_is_refused_with_one_line(small_fs: Path):
    path = small_fs / "bank.db"
    embedder = get_embedder("hashing")
    with MemoryStore(path, embedder=embedder) as store:
        store.add_many([f"fact {i}" for i in range(10)])
        before = _bank_state(store)
    remount(small_fs, "ro")
    try:
        with pytest.raises(MemFactoryError) as caught:
            MemoryStore(path, embedder=embedder)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and "read-only" in message
    finally:
        remount(small_fs, "rw")
    with MemoryStore(path, embedder=embedder) as store:
        assert _bank_state(store) == before


# exec the command with a file size limit; SIGXFSZ ignored (inherited by exec), so a write past the
# limit fails with EFBIG instead of killing the process
LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
           "os.execv(sys.argv[2], sys.argv[2:])")


def test_checkpoint_write_past_a_file_size_limit_keeps_the_previous_one(tmp_path: Path):
    """No root needed: the weights file (~800 kB) cannot be written under a 400 kB file size limit."""
    runs = tmp_path / "runs"
    first = spawn(tmp_path, "--set", "trainer.steps=2", "--runs-dir", str(runs), "--run-id", "fsize")
    assert first.wait(timeout=300) == 0
    checkpoints = runs / "fsize" / "checkpoints"
    weights = (checkpoints / checkpoint_name(2) / "model" / "model.safetensors").read_bytes()

    limited = subprocess.Popen(
        [sys.executable, "-c", LIMITED, "400000",
         *train_command("--set", "trainer.steps=4", "--runs-dir", str(runs), "--resume", "fsize")],
        cwd=tmp_path, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    _, err = limited.communicate(timeout=300)
    assert limited.returncode == 2
    assert error_line(err) == (
        f"error: cannot write checkpoint {checkpoints / checkpoint_name(3)}: no space left on device "
        f"(file size limit); the previous checkpoint {checkpoint_name(2)} is intact"
    )
    assert sorted(p.name for p in checkpoints.iterdir()) == [checkpoint_name(1), checkpoint_name(2)]
    assert (checkpoints / checkpoint_name(2) / "model" / "model.safetensors").read_bytes() == weights
    assert RunsDB(runs / "memfactory.db").require("fsize").status == "failed"

    resumed = spawn(tmp_path, "--set", "trainer.steps=4", "--runs-dir", str(runs), "--resume", "fsize",
                    stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert f"resumed from {checkpoints / checkpoint_name(2)} (step 2)" in (runs / "fsize" / "stdout.log").read_text()
    assert jsonl_steps(runs / "fsize" / "metrics.jsonl") == [1, 2, 3, 4]
    assert RunsDB(runs / "memfactory.db").require("fsize").status == "finished"
