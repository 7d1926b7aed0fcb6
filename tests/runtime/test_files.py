"""runtime.files: locks that processes sharing an artifacts folder take, and the stamp by which
a process notices that another one replaced a file."""

import subprocess
import sys
from pathlib import Path

from runtime.files import atomic_write_text, exclusive, file_stamp

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from runtime.files import exclusive
with exclusive({path!r}):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_held_lock_is_refused_without_waiting_and_free_once_released(tmp_path: Path):
    lock = tmp_path / "locks" / "x.lock"
    with exclusive(lock) as held:
        assert held
        with exclusive(lock, wait=False) as again:  # another open of the file: another holder
            assert not again
    with exclusive(lock, wait=False) as after:
        assert after


def test_a_lock_held_by_a_killed_process_is_free(tmp_path: Path):
    lock = tmp_path / "x.lock"
    root = str(Path(__file__).resolve().parents[2])
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=root, path=str(lock))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with exclusive(lock, wait=False) as taken:
            assert not taken
        holder.kill()
        holder.wait(timeout=30)
        with exclusive(lock, wait=False) as taken:  # the kernel let it go with the process
            assert taken
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_stamp_changes_whenever_the_file_is_replaced(tmp_path: Path):
    pointer = tmp_path / "current"
    assert file_stamp(pointer) is None
    atomic_write_text(pointer, "v1\n")
    first = file_stamp(pointer)
    assert first is not None and file_stamp(pointer) == first
    atomic_write_text(pointer, "v1\n")  # the same text again: a new file all the same
    assert file_stamp(pointer) != first
