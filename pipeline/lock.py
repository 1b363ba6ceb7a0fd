"""One run per output directory.

A run (``gristmill run``, and the executor for in-process runs; reentrant within one process)
holds an exclusive ``fcntl`` lock on ``<output>/.gristmill.lock`` for as long as it runs.
The kernel drops the lock when the process ends, however it ends (exit, crash, SIGKILL), so a
crashed run never leaves the directory locked; the file itself stays, holding who ran last (pid,
host, start time) so that a refused second run can say who holds it.

Taking the lock also proves the output location is writable: an unwritable directory fails here,
before any work, with the path and the reason.

Output on object stores (``s3://``, ``gs://``) has no lock (no advisory locking there): runs on
one such prefix must be kept apart by the user.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from contextlib import contextmanager

LOCK_FILE = ".gristmill.lock"
_HELD: dict[str, int] = {}  # lock paths this process holds -> nesting depth (the CLI and the executor both take it)


class OutputError(RuntimeError):
    """The output directory cannot be used (locked by another run, not writable)."""


@contextmanager
def output_lock(output: str):
    """Hold the output directory for the duration of the block; raise OutputError if another run
    holds it or it cannot be written."""
    if "://" in output:
        yield
        return
    path = os.path.join(os.path.abspath(output), LOCK_FILE)
    if path in _HELD:  # already ours (taken by the caller): reentrant within one process
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputError(f"output {output}: cannot write there ({e.strerror or e}); "
                          "choose a writable --output") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OutputError(f"output {output}: cannot lock {path} ({e.strerror or e})") from None
            raise OutputError(f"output {output} is in use by another gristmill run ({_holder(fd)}); "
                              "wait for it to finish or choose another --output") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            os.fsync(fd)
        except OSError as e:  # a full disk shows up here, before any step runs
            raise OutputError(f"output {output}: cannot write {path} ({e.strerror or e})") from None
        _HELD[path] = 1
        try:
            yield
        finally:
            del _HELD[path]
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
