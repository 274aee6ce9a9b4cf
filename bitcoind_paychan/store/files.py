"""Keeping the store's files private: they hold the client's private channel keys."""

from __future__ import annotations

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
