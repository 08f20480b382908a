"""An exclusive lock file that names its holder: one writer per rationale cache, one sweep per folder.

Hand-written on ``fcntl.flock`` rather than the ``filelock`` package, because the refusal must name the process
that holds the lock (its pid and host, written into the file), which ``filelock`` does not record. A flock belongs to
the open file, so the OS drops it when its process dies: a lock file left by a SIGKILL is stale, not held, and the
next process takes it over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names the lock file and that process."""


def lock_holder(path: str | Path) -> str:
    """Who holds ``path``, as written by :func:`exclusive_lock`: ``pid 123 on host h since 2026-01-01 10:00:00``."""
    for _ in range(20):  # the holder writes its line right after taking the lock: give it a moment
        try:
            holder = json.loads(Path(path).read_text() or "null")
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict) and "pid" in holder:
            return f"pid {holder['pid']} on host {holder.get('host', '?')} since {holder.get('since', '?')}"
        time.sleep(0.01)
    return "an unknown process"


@contextmanager
def exclusive_lock(path: str | Path, refusal: str) -> Iterator[None]:
    """Hold ``path`` (created if missing) for the ``with`` block, or raise :class:`LockHeldError` at once.

    ``refusal`` begins the error, which goes on ``(lock PATH held by pid P on host H since T)``. The file is removed
    when the block ends, normally or by an exception (Ctrl-C included), while still locked.
    """
    import fcntl

    path = Path(path)
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise LockHeldError(f"{refusal} (lock {path} held by {lock_holder(path)})") from None
        try:  # the file we locked may have been removed by a holder that just ended: lock the current one instead
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked, so no other process can hold this file meanwhile
        handle.close()
