"""Keeping the store's files private (they hold the client's private channel keys), and
owned by one process at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

from bitcoind_paychan.errors import StoreError

SIDECARS = ("-wal", "-shm")


def sidecars(path: str | Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in SIDECARS]


def create_private(path: Path) -> bool:
    """Create `path` empty with mode 0600 unless it exists; True if it was created."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as e:
        raise StoreError(f"cannot create the store {path}: {e.strerror}; check that the "
                         "directory exists and is writable") from e
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
    finally:
        os.close(fd)
    return True


def check_private(path: Path) -> None:
    """Refuse a store file that group or others may access: it holds private keys."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(f"cannot read the store {path}: {e.strerror}") from e
    if not stat.S_ISREG(mode):
        raise StoreError(f"the store {path} is not a regular file; give the path of a file")
    if os.name == "posix" and mode & 0o077:
        raise StoreError(
            f"refusing to open {path}: it holds private channel keys but group or others may "
            f"access it (mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}` and try again"
        )


def restrict(path: Path) -> None:
    """Make an existing -wal/-shm file 0600 (SQLite copies the main file's mode anyway)."""
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except FileNotFoundError:
        pass


def fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (best effort: not every OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StoreLock:
    """The exclusive lock that makes a process the owner of a store, like bitcoind's `.lock`:
    `flock` on `<store>.lock`, which names the holder's pid. The kernel releases it when the
    holder exits, however it exits; the file itself stays."""

    def __init__(self, store: Path) -> None:
        self.path = Path(f"{store}.lock")
        self._fd: int | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot create the lock file {self.path} of the store {store}: "
                             f"{e.strerror}; check that the directory exists and is writable"
                             ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            raise StoreError(
                f"the store {store} is in use by {holder} (it holds {self.path}); one process "
                "owns a store: stop that one first, or open the store read-only to look at it"
            ) from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def __del__(self) -> None:  # a store object dropped without close()
        self.release()

    def release(self) -> None:
        """Give the store up (harmless twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says."""
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    if not pid.isdigit():
        return "another process"
    if int(pid) == os.getpid():
        return f"this process (pid {pid}: another store object has it open)"
    return f"process {pid}"
