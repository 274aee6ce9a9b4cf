"""contrib/: the systemd unit passes `systemd-analyze verify` and is hardened; the example
configurations point where that unit and bitcoind's own unit put things."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitcoind_paychan.daemon.config import load_config
from regtest import fetch

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "contrib"
UNIT = CONTRIB / "paychan.service"


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def systemd_analyze(search_path: bool = True) -> tuple[list[str], dict[str, str]]:
    """The command that runs systemd-analyze, and its environment: the machine's own, else
    Debian sid's systemd unpacked once into the cache (with its units, which verify needs)."""
    found = shutil.which("systemd-analyze") if search_path else None
    if found:
        return [found], {}
    trees = sorted(fetch.cache_root().glob("systemd/*/usr/bin/systemd-analyze"))
    tree = trees[-1].parents[2] if trees else fetch.unpack_from_debian("systemd", "systemd")[0]
    libraries = f"{tree / fetch.LIBDIR}:{tree / fetch.LIBDIR / 'systemd'}"
    command = [str(tree / fetch.LOADER), "--library-path", libraries,
               str(tree / "usr/bin/systemd-analyze")]
    return command, {"SYSTEMD_UNIT_PATH": str(tree / "usr/lib/systemd/system")}


@pytest.mark.parametrize("machines_own", [True, False], ids=["machines-own", "debian-sid"])
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path, machines_own: bool) -> None:
    unit = UNIT.read_text()
    program = directives(unit)["ExecStart"][0].split()[0]
    # verify also checks that ExecStart's program exists: here, the paychan of this venv.
    installed = Path(sys.executable).with_name("paychan")
    copy = tmp_path / UNIT.name
    copy.write_text(unit.replace(f"ExecStart={program} ", f"ExecStart={installed} "))
    assert copy.read_text() != unit
    command, env = systemd_analyze(search_path=machines_own)
    done = subprocess.run([*command, "verify", str(copy)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_unit_is_hardened_and_needs_no_bitcoind_unit() -> None:
    found = directives(UNIT.read_text())
    assert "Requires" not in found  # a bitcoind.service may not exist: Wants/After only
    assert "bitcoind.service" in found["Wants"][0] and "bitcoind.service" in found["After"][0]
    for key, value in [("ProtectProc", "invisible"), ("ProcSubset", "pid"), ("RemoveIPC", "yes"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "true"),
                       ("NoNewPrivileges", "true"), ("UMask", "0077"), ("User", "paychan")]:
        assert found[key] == [value], key
    assert found["ReadOnlyPaths"] == ["/etc/paychan -/var/lib/bitcoind"]  # bitcoind's: optional


@pytest.mark.parametrize(("name", "cookie"), [
    ("mainnet", "/var/lib/bitcoind/.cookie"), ("signet", "/var/lib/bitcoind/signet/.cookie")])
def test_examples_read_bitcoinds_cookie_where_bitcoind_writes_it(name: str, cookie: str) -> None:
    # Not ~/.bitcoin/...: `~` would be the paychan user's home, not bitcoind's datadir.
    assert load_config(CONTRIB / f"paychan.{name}.yaml").bitcoind.cookie_file == Path(cookie)


def test_the_mainnet_example_fits_the_unit() -> None:
    unit = directives(UNIT.read_text())
    config = load_config(CONTRIB / "paychan.mainnet.yaml")
    state = Path("/var/lib") / unit["StateDirectory"][0]
    runtime = Path("/run") / unit["RuntimeDirectory"][0]
    assert config.store.path.is_relative_to(state)
    assert config.control.cookie_file.parent == runtime
    assert unit["RuntimeDirectoryMode"] == ["0750"] and config.control.cookie_mode == 0o640
    assert unit["StateDirectoryMode"] == ["0700"]  # the store: the daemon's user only
    assert re.search(r"--config /etc/paychan/paychan\.yaml$", unit["ExecStart"][0])
