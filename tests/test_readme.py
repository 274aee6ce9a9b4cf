"""The README's operator's quick start works as written: twice in a row in one HOME, while
other processes hold regtest's default ports, and it leaves nothing running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from regtest.fetch import cache_root
from regtest.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORTS = (18443, 18444, 4242, 4243)  # regtest's RPC and P2P; the old quick start's


def quickstart() -> str:
    return sh_block(ROOT / "README.md", "quickstart")


def sh_block(readme: Path, name: str) -> str:
    """The shell block of `readme` between `<!-- name -->` and `<!-- /name -->`."""
    match = re.search(rf"<!-- {name} -->\s*```sh\n(.*?)```\s*<!-- /{name} -->",
                      readme.read_text(), re.DOTALL)
    assert match, f"{readme} lost its {name} block"
    return match.group(1)


@contextlib.contextmanager
def held(ports: tuple[int, ...]) -> Iterator[None]:
    """Listen on `ports` (those still free), as another node or daemon on this machine would."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            sock = stack.enter_context(socket.socket())
            with contextlib.suppress(OSError):  # already held by someone else: just as good
                sock.bind(("127.0.0.1", port))
                sock.listen()
        yield


def test_operators_quick_start_runs_twice_beside_other_nodes(tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    # A fresh HOME, but the bitcoind cache of this machine (fetched once already).
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp),
           "XDG_CACHE_HOME": str(cache_root().parent)}
    with held(DEFAULT_PORTS):
        for run in (1, 2):
            out, err = run_quickstart(env, tmp)
            assert "paid 50 × 1000 sat = 50000 sat (coffee)" in out, f"run {run}:\n{out}"
            assert "\r" not in err  # not a terminal: no progress line
            assert "regtest" in out  # getinfo
            assert re.search(r"client\s+[0-9a-f]{64}\s+open\s+1000000\s+51000", out), out  # whole
            assert "settlement_txid" in out
            assert out.count("coffee") >= 100  # 50 payments, as each side saw them
            assert "DEBUG" not in out + err  # the daemon logs to its file
    logs = sorted(tmp.glob("*/paychan.log"))
    assert len(logs) == 2 and all("DEBUG" in log.read_text() for log in logs)


def run_quickstart(env: dict[str, str], tmp: Path) -> tuple[str, str]:
    return run_block(quickstart(), env, tmp)


def run_block(block: str, env: dict[str, str], tmp: Path) -> tuple[str, str]:
    """Run a README's shell block as a script from the checkout's root; afterwards no process
    it started may be left running (bitcoinds under `tmp` are killed if it failed)."""
    script = "set -euo pipefail\n" + block
    shell = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        out, err = shell.communicate(timeout=600)
        assert shell.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        for pidfile in tmp.glob("*/regtest/bitcoind.pid"):  # bitcoind removes it as it exits
            wait_until(gone(pidfile), 120, what=f"bitcoind to stop ({pidfile})")
        assert not group_alive(shell.pid), "the quick start left a process running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        _stop_leftovers(tmp)
    return out, err


def gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists()


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_leftovers(tmp: Path) -> None:
    """If the script failed half-way, its bitcoind must not outlive the test."""
    for pidfile in tmp.glob("*/regtest/bitcoind.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
