"""The run-directory lock: a second writer is refused, a stale lock is taken over."""

import os
import socket
import subprocess
import sys

import pytest

from tinygpt.rundir import LOCK_NAME, RunDirectoryBusy, locked


@pytest.fixture()
def other_process():
    """A live process that is not this one (a sleeping Python)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


def finished_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, other_process):
    (tmp_path / LOCK_NAME).write_text(f"{other_process}\n{socket.gethostname()}\n")
    with pytest.raises(RunDirectoryBusy, match=f"in use by process {other_process} on"):
        with locked(tmp_path):
            pass
    assert (tmp_path / LOCK_NAME).read_text().startswith(str(other_process))  # left alone


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    (tmp_path / LOCK_NAME).write_text(f"{finished_pid()}\n{socket.gethostname()}\n")
    with locked(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().split("\n")[0] == str(os.getpid())
        with locked(tmp_path):  # nested in the same process: no deadlock
            pass
        assert (tmp_path / LOCK_NAME).exists()  # the inner block did not release it
    assert sorted(os.listdir(tmp_path)) == []  # released, no temporary files left


def test_a_lock_from_another_host_is_respected(tmp_path):
    (tmp_path / LOCK_NAME).write_text(f"{finished_pid()}\nsome-other-machine\n")
    with pytest.raises(RunDirectoryBusy, match="on some-other-machine"):
        with locked(tmp_path):
            pass
