"""Programs some tests drive, found or installed from Debian's packages on first use.

- `promtool()`: Prometheus' rule tester. On PATH, else cached, else Debian's `promtool` package
  (split out of `prometheus` in sid) is downloaded with a private apt state (no root needed; the
  machine's apt is not touched) and its Go binary kept in ~/.cache/bitcoind-paychan/prometheus/.
- `chromium()`: a headless Chromium. On PATH (`chromium-headless-shell`, `chromium`), else, as
  root, Debian's `chromium-headless-shell` is installed with apt-get (CI runs as root); without
  root and without Chromium the test fails and says which package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from regtest.fetch import FetchError, _Apt, cache_root

CHROMIUM_PACKAGES = ("chromium-headless-shell", "fonts-dejavu-core")
CHROMIUM_NAMES = ("chromium-headless-shell", "chromium")


def promtool() -> Path:
    on_path = shutil.which("promtool")
    if on_path:
        return Path(on_path)
    root = cache_root() / "prometheus"
    cached = root / "promtool"
    if cached.is_file():
        return cached
    root.mkdir(parents=True, exist_ok=True)
    apt = _Apt(root / "apt")
    apt.run("apt-get", "update")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        apt.run("apt-get", "download", "promtool", cwd=Path(tmp))
        (deb,) = Path(tmp).glob("promtool_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "tree")], check=True)
        shutil.copy2(Path(tmp) / "tree/usr/bin/promtool", cached.with_suffix(".tmp"))
        cached.with_suffix(".tmp").rename(cached)
    return cached


def chromium() -> Path:
    found = _chromium_on_path()
    if found:
        return found
    if os.geteuid() != 0:
        raise FetchError("no headless Chromium: install Debian's "
                         f"{' '.join(CHROMIUM_PACKAGES)} (apt-get install, as root)")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                     *CHROMIUM_PACKAGES]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise FetchError(f"{' '.join(command)} failed: {done.stderr.strip()[-600:]}")
    found = _chromium_on_path()
    if not found:
        raise FetchError(f"{CHROMIUM_PACKAGES[0]} installed, but no Chromium on PATH")
    return found


def _chromium_on_path() -> Path | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None
