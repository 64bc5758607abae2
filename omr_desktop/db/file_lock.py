"""An exclusive lock on a file, held across processes (POSIX and Windows)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import TracebackType


class LockTimeoutError(TimeoutError):
    """Another process held the lock for longer than the timeout."""


class FileLock:
    """Hold an exclusive OS lock on ``path`` inside a ``with`` block.

    The operating system drops the lock when the process dies, so a crash
    never leaves it behind (the file itself stays and is harmless).
    """

    def __init__(self, path: Path, timeout_s: float = 60.0) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self._timeout_s
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                os.close(fd)
                raise LockTimeoutError(
                    f"Timed out after {self._timeout_s:.0f} s waiting for the lock "
                    f"{self._path}: another OMR Desktop process is starting or "
                    "stopping the embedded database. Try again in a minute."
                )
            time.sleep(0.1)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
