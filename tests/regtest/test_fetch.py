"""Finding bitcoind: explicit path first, then PATH, then the cached or fetched Knots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from regtest import fetch
from regtest.fetch import FetchError, find_bitcoind


@pytest.fixture
def found() -> fetch.Binaries:
    return find_bitcoind()


def test_found_binary_reports_its_version(found: fetch.Binaries) -> None:
    assert "version v" in found.version
    assert os.access(found.bitcoind, os.X_OK) and os.access(found.bitcoin_cli, os.X_OK)


def test_explicit_bitcoind_wins(found: fetch.Binaries, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITCOIND", str(found.bitcoind))
    monkeypatch.setenv("BITCOIN_CLI", str(found.bitcoin_cli))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_bitcoind(fetch=False) == found


def test_explicit_bitcoind_that_is_not_a_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BITCOIND", str(tmp_path / "bitcoind"))
    with pytest.raises(FetchError, match=r"from \$BITCOIND\) is not an executable file"):
        find_bitcoind()


def test_second_lookup_uses_the_cache_without_the_registry(
    found: fetch.Binaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BITCOIND", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("PAYCHAN_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # unusable
    if found.bitcoind.parent.parent.parent != fetch.cache_root() / "knots":
        pytest.fail("this test expects the fetched Knots in the cache (run without $BITCOIND)")
    assert find_bitcoind(fetch=False) == fetch._cached()


def test_unreachable_registry_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BITCOIND", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PAYCHAN_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    with pytest.raises(FetchError, match="is Debian's package registry reachable"):
        find_bitcoind()


def test_missing_library_is_named(found: fetch.Binaries, tmp_path: Path) -> None:
    tree = Path(found.bitcoind).parent.parent
    if not (tree / fetch.LOADER).exists():
        pytest.fail("this test needs the fetched Knots tree (run without $BITCOIND)")
    libdir = tmp_path / fetch.LIBDIR
    libdir.mkdir(parents=True)
    for lib in (tree / fetch.LIBDIR).iterdir():
        if not lib.name.startswith("libzmq"):
            (libdir / lib.name).symlink_to(lib)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/bitcoind").symlink_to(tree / "usr/bin/bitcoind")
    launcher = tmp_path / "bitcoind"
    fetch._write_launcher(launcher, tmp_path, "bitcoind")
    with pytest.raises(FetchError, match=r"missing shared library libzmq\.so\.5"):
        fetch._version(launcher)
    shutil.rmtree(tmp_path / "usr")


_TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "w") as handle:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("held")
    else:
        print("free")
"""


def test_a_machine_lock_is_held_against_other_processes_and_reentrant_in_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lock_file = tmp_path / "bitcoind-paychan" / "locks" / "apt.lock"

    def other_process_sees() -> str:
        done = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(lock_file)],
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    with fetch.machine_lock("apt"):
        assert other_process_sees() == "held"
        with fetch.machine_lock("apt"):  # the same process again: no deadlock
            assert other_process_sees() == "held"
        assert other_process_sees() == "held"  # the inner exit does not release it
    assert other_process_sees() == "free"
