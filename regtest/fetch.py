"""Find or fetch a runnable `bitcoind` and `bitcoin-cli` (standard library only).

Order: `$BITCOIND` (and `$BITCOIN_CLI`, else its sibling), then `PATH`, then a cached copy of
Debian sid's `bitcoin-knots`, fetched on first use with a private apt state (the machine's own
apt configuration is never touched) and run through sid's own dynamic loader.

    python3 regtest/fetch.py          # prints the bitcoind path, fetching it if needed

`unpack_from_debian` does the same for any other package a test needs (systemd-analyze).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SUITE = "sid"
ROOT_PACKAGE = "bitcoin-knots"
SKIPPED_DEPENDENCIES = {"libc-gconv-modules-extra"}  # iconv modules: bitcoind needs none
LIBDIR = "usr/lib/x86_64-linux-gnu"
LOADER = f"{LIBDIR}/ld-linux-x86-64.so.2"


class FetchError(RuntimeError):
    """bitcoind could not be found or fetched; the message says why and what to do."""


@dataclass(frozen=True)
class Binaries:
    """Paths of a runnable bitcoind and bitcoin-cli, and the version bitcoind reports."""

    bitcoind: Path
    bitcoin_cli: Path
    version: str


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bitcoind-paychan"


_held: dict[str, tuple[threading.RLock, list[int]]] = {}
_held_lock = threading.Lock()


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold a lock every process of this user shares (parallel test workers, a demo beside
    them), for a set-up step that must run once at a time: apt-get, filling a cache folder.
    Re-entrant within a process. Check again for what the step provides once it is held."""
    with _held_lock:
        local, depth = _held.setdefault(name, (threading.RLock(), [0]))
    with local:
        if depth[0]:
            depth[0] += 1
            try:
                yield
            finally:
                depth[0] -= 1
            return
        path = cache_root() / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            depth[0] = 1
            try:
                yield
            finally:
                depth[0] = 0
                fcntl.flock(handle, fcntl.LOCK_UN)


def apt_install(packages: tuple[str, ...]) -> None:
    """Install Debian `packages` with the machine's own apt (as root; hold
    `machine_lock("apt")`, as apt-get refuses a second run at once); FetchError on failure."""
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise FetchError(f"{' '.join(command)} failed: {done.stderr.strip()[-600:]}")


def find_bitcoind(fetch: bool = True, log: bool = True) -> Binaries:
    """Return a runnable bitcoind, fetching Knots from Debian sid if none is given or cached."""
    explicit = os.environ.get("BITCOIND")
    if explicit:
        bitcoind = Path(explicit)
        cli = Path(os.environ.get("BITCOIN_CLI") or bitcoind.with_name("bitcoin-cli"))
        return _checked(bitcoind, cli, "$BITCOIND")
    on_path = shutil.which("bitcoind")
    if on_path:
        found = shutil.which("bitcoin-cli")
        sibling = Path(found) if found else Path(on_path).with_name("bitcoin-cli")
        return _checked(Path(on_path), sibling, "PATH")
    cached = _cached()
    if cached:
        return cached
    if not fetch:
        raise FetchError(
            "no bitcoind: set $BITCOIND, put bitcoind on PATH, or run regtest/fetch.py"
        )
    with machine_lock("fetch-knots"):
        return _cached() or _fetch(log)


def _checked(bitcoind: Path, cli: Path, source: str) -> Binaries:
    for path in (bitcoind, cli):
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FetchError(f"{path} (from {source}) is not an executable file")
    return Binaries(bitcoind, cli, _version(bitcoind))


def _version(bitcoind: Path) -> str:
    try:
        out = subprocess.run(
            [str(bitcoind), "-version"], capture_output=True, text=True, timeout=30
        )
    except OSError as exc:
        raise FetchError(f"{bitcoind} cannot be started: {exc}") from exc
    first = (out.stdout or "").splitlines()[:1]
    if out.returncode != 0 or not first:
        detail = (out.stderr or out.stdout).strip()
        missing = re.findall(r"(lib[\w.+-]+\.so[\w.]*): cannot open", detail)
        hint = f" (missing shared library {', '.join(missing)})" if missing else ""
        raise FetchError(f"{bitcoind} -version failed{hint}: {detail[:400]}")
    return first[0].strip()


def _cached() -> Binaries | None:
    marker = cache_root() / "knots" / "current.json"
    try:
        info = json.loads(marker.read_text())
        binaries = Binaries(Path(info["bitcoind"]), Path(info["bitcoin_cli"]), info["version"])
    except (OSError, ValueError, KeyError):
        return None
    if binaries.bitcoind.is_file() and binaries.bitcoin_cli.is_file():
        return binaries
    return None


def debian_mirror() -> str:
    """The Debian mirror this machine's own apt sources use (or $PAYCHAN_DEBIAN_MIRROR)."""
    override = os.environ.get("PAYCHAN_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(path.read_text())
        except OSError:
            continue
    for uri in re.findall(r"(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", "\n".join(texts)):
        if uri.startswith("http") and uri.rstrip("/").endswith("/debian"):
            return str(uri.rstrip("/"))
    raise FetchError(
        "no Debian mirror found in /etc/apt/sources.list(.d); set $PAYCHAN_DEBIAN_MIRROR "
        "to a Debian archive URL, or set $BITCOIND to an existing bitcoind"
    )


class _Apt:
    """apt-get/apt-cache with a private state under `root`, pointed at Debian sid."""

    def __init__(self, root: Path) -> None:
        for sub in ("lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        sources = root / "sources.list"
        signed = f"[signed-by={KEYRING}] " if KEYRING.exists() else ""
        sources.write_text(f"deb {signed}{debian_mirror()} {SUITE} main\n")
        self.options = [
            f"-oDir::Etc::SourceList={sources}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={root / 'lists'}",
            f"-oDir::Cache={root / 'cache'}",
            "-oDir::State::status=/dev/null",
            "-oDir::Etc::Preferences=/dev/null",
            "-oDir::Etc::PreferencesParts=/dev/null",
            "-oAPT::Architecture=amd64",
        ]

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        if not shutil.which(tool):
            raise FetchError(
                f"{tool} not found: this needs a Debian-like machine, or set $BITCOIND"
            )
        proc = subprocess.run(
            [tool, *self.options, *args], capture_output=True, text=True, cwd=cwd, timeout=600
        )
        if proc.returncode != 0:
            raise FetchError(
                f"{tool} {' '.join(args)} failed (is Debian's package registry reachable?): "
                f"{proc.stderr.strip()[-600:]}"
            )
        return proc.stdout

    def depends(self, package: str) -> list[str]:
        """Direct library dependencies of `package` (first alternative of each)."""
        show = self.run("apt-cache", "show", "--no-all-versions", package)
        lines = re.findall(r"^(?:Pre-)?Depends: (.*)$", show, re.MULTILINE)  # both, if both
        names = []
        for clause in ",".join(lines).split(","):
            name = clause.split("|")[0].split("(")[0].strip().split(":")[0]
            if name.startswith("lib") and name not in SKIPPED_DEPENDENCIES:
                names.append(name)
        return names


def _closure(apt: _Apt, package: str) -> list[str]:
    seen: list[str] = []
    todo = [package]
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.append(package)
        todo.extend(apt.depends(package))
    return seen


def unpack_from_debian(package: str, cache: str, log: bool = True,
                       prepare: Callable[[Path, Path], None] | None = None) -> tuple[Path, str]:
    """Debian sid's `package` and the libraries it needs, unpacked under the cache's `cache`
    folder (no root, the machine's apt untouched); `prepare(tree, target)` runs before the tree
    moves to `target`. Returns the target and the package's version."""
    with machine_lock(f"fetch-{cache}"):
        return _unpack_from_debian(package, cache, log, prepare)


def _unpack_from_debian(package: str, cache: str, log: bool,
                        prepare: Callable[[Path, Path], None] | None) -> tuple[Path, str]:
    root = cache_root() / cache
    root.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(f"[fetch] {msg}", file=sys.stderr, flush=True)) if log else _quiet
    apt = _Apt(root / "apt")
    say(f"resolving {package} in Debian {SUITE} (private apt state in {root / 'apt'})")
    apt.run("apt-get", "update")
    packages = _closure(apt, package)
    version = re.search(
        r"^Version: (\S+)",
        apt.run("apt-cache", "show", "--no-all-versions", package),
        re.MULTILINE,
    )
    label = version.group(1) if version else "unknown"
    target = root / label
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        debs = Path(tmp) / "debs"
        tree = Path(tmp) / "tree"
        debs.mkdir()
        say(f"downloading {len(packages)} packages: {' '.join(sorted(packages))}")
        apt.run("apt-get", "download", *packages, cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        if prepare is not None:
            prepare(tree, target)
        if target.exists():
            shutil.rmtree(target)
        tree.rename(target)
    say(f"ready: {package} {label} in {target}")
    return target, label


def _fetch(log: bool) -> Binaries:
    def launchers(tree: Path, target: Path) -> None:
        bin_dir = tree / "bin"
        bin_dir.mkdir()
        for name in ("bitcoind", "bitcoin-cli"):
            _write_launcher(bin_dir / name, target, name)

    target, label = unpack_from_debian(ROOT_PACKAGE, "knots", log, launchers)
    binaries = Binaries(target / "bin" / "bitcoind", target / "bin" / "bitcoin-cli", "")
    binaries = Binaries(binaries.bitcoind, binaries.bitcoin_cli, _version(binaries.bitcoind))
    marker = cache_root() / "knots" / "current.json"
    marker.write_text(
        json.dumps(
            {
                "bitcoind": str(binaries.bitcoind),
                "bitcoin_cli": str(binaries.bitcoin_cli),
                "version": binaries.version,
                "package_version": label,
            }
        )
    )
    return binaries


def _write_launcher(path: Path, tree: Path, name: str) -> None:
    program = tree / "usr/bin" / name
    path.write_text(
        f'#!/bin/sh\nexec "{tree / LOADER}" --library-path "{tree / LIBDIR}" "{program}" "$@"\n'
    )
    path.chmod(0o755)


def _quiet(msg: str) -> None:
    del msg


def main() -> int:
    try:
        binaries = find_bitcoind()
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(binaries.bitcoind)
    print(f"{binaries.version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
