"""The README's operator's quick start works as written (on a throwaway HOME)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

from regtest.fetch import cache_root

ROOT = Path(__file__).resolve().parents[1]


def quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- quickstart -->\s*```sh\n(.*?)```\s*<!-- /quickstart -->", readme,
                      re.DOTALL)
    assert match, "the README lost its quick start block"
    return match.group(1)


def test_operators_quick_start_runs_as_written(tmp_path: Path) -> None:
    # A fresh HOME, but the bitcoind cache of this machine (fetched once already).
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(cache_root().parent)}
    script = "set -euo pipefail\n" + quickstart()
    shell = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        out, err = shell.communicate(timeout=600)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
        _stop_leftovers(tmp_path)
    assert shell.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "50/50 payments" in err
    assert "regtest" in out  # getinfo
    assert re.search(r"client\s+[0-9a-f]{64}\s+open\s+1000000\s+51000", out), out  # whole
    assert "settlement_txid" in out
    assert out.count("coffee") >= 100  # 50 payments, as each side saw them


def _stop_leftovers(home: Path) -> None:
    """If the script failed half-way, its bitcoind must not outlive the test."""
    pidfile = home / ".bitcoin" / "regtest" / "bitcoind.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
