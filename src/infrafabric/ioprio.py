"""A process's Linux I/O scheduling class (``ioprio_set`` / ``ioprio_get``, see ioprio(7)).

Python's ``os`` module has no call for it, so the two system calls are made through
``ctypes``. Where they cannot be made (not Linux, a machine whose call numbers are not
known here, a sandbox refusing them) the functions say so and change nothing: the class
is a preference, never a requirement.

The block layer's ``mq-deadline`` and ``bfq`` schedulers keep requests of the idle
class back while others are waiting (``mq-deadline`` for at most 10 s), so a process
whose writes can wait (the witness) does not make a commit's flush queue behind them.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from typing import Final

__all__ = ["BEST_EFFORT", "DEFAULT", "IDLE", "io_class", "set_io_class"]

#: Classes (ioprio(7)): the default one (best effort at the level the CPU niceness
#: gives), best effort, and idle: served only when no other request waits.
DEFAULT: Final = 0
BEST_EFFORT: Final = 2
IDLE: Final = 3

#: (ioprio_set, ioprio_get) system call numbers by machine.
_CALLS: Final = {"x86_64": (251, 252), "aarch64": (30, 31)}
_WHO_PROCESS: Final = 1
_CLASS_SHIFT: Final = 13


def _calls() -> tuple[int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return _CALLS.get(platform.machine())


def set_io_class(pid: int, io_class_: int) -> bool:
    """Put process ``pid`` (0: this one) in I/O class ``io_class_`` (level 0); whether
    that was done."""
    calls = _calls()
    if calls is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(calls[0], _WHO_PROCESS, pid, io_class_ << _CLASS_SHIFT)) == 0


def io_class(pid: int) -> int | None:
    """The I/O class of process ``pid`` (0: this one), or ``None`` where it cannot be read."""
    calls = _calls()
    if calls is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    value = int(libc.syscall(calls[1], _WHO_PROCESS, pid))
    return None if value < 0 else value >> _CLASS_SHIFT
