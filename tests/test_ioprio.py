"""A process's I/O scheduling class, set and read back on a real child process (this
machine is Linux on x86_64, where the calls are known)."""

from __future__ import annotations

import subprocess

from infrafabric import ioprio


def test_a_process_is_put_in_an_io_class_and_back() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert ioprio.io_class(child.pid) == ioprio.DEFAULT
        assert ioprio.set_io_class(child.pid, ioprio.IDLE)
        assert ioprio.io_class(child.pid) == ioprio.IDLE
        assert ioprio.set_io_class(child.pid, ioprio.BEST_EFFORT)
        assert ioprio.io_class(child.pid) == ioprio.BEST_EFFORT
        assert ioprio.set_io_class(child.pid, ioprio.DEFAULT)
        assert ioprio.io_class(child.pid) == ioprio.DEFAULT
    finally:
        child.kill()
        child.wait()
    # a process that is gone: nothing done, nothing read, no exception
    assert not ioprio.set_io_class(child.pid, ioprio.IDLE)
    assert ioprio.io_class(child.pid) is None
