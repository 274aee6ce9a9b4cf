"""Programs some tests drive, found or installed from Debian's packages on first use.

- `debian_tree()`: a Debian sid package unpacked into the cache (no root needed; the machine's
  apt is not touched), once: the harness's `unpack_from_debian`.
- `promtool()`: Prometheus' rule tester. On PATH, else Debian's `promtool` package (split out of
  `prometheus` in sid) from `debian_tree()`.
- `chromium()`: a headless Chromium. On PATH (`chromium-headless-shell`, `chromium`), else, as
  root, Debian's `chromium-headless-shell` is installed with apt-get (CI runs as root); without
  root and without Chromium the test fails and says which package to install.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from regtest.fetch import FetchError, apt_install, cache_root, machine_lock, unpack_from_debian

CHROMIUM_PACKAGES = ("chromium-headless-shell", "fonts-dejavu-core")
CHROMIUM_NAMES = ("chromium-headless-shell", "chromium")


def debian_tree(package: str, cache: str, program: str) -> Path:
    """The newest tree in the cache's `cache` folder that holds `program` (a path inside it),
    else Debian sid's `package` unpacked there."""
    def cached() -> Path | None:
        trees = sorted(cache_root().glob(f"{cache}/*/{program}"))
        return trees[-1].parents[len(Path(program).parts) - 1] if trees else None

    with machine_lock(f"fetch-{cache}"):  # a parallel test worker may be filling it now
        return cached() or unpack_from_debian(package, cache, log=False)[0]


def promtool() -> Path:
    on_path = shutil.which("promtool")
    if on_path:
        return Path(on_path)
    return debian_tree("promtool", "prometheus", "usr/bin/promtool") / "usr/bin/promtool"


def chromium() -> Path:
    found = _chromium_on_path()
    if found:
        return found
    if os.geteuid() != 0:
        raise FetchError("no headless Chromium: install Debian's "
                         f"{' '.join(CHROMIUM_PACKAGES)} (apt-get install, as root)")
    with machine_lock("apt"):  # one apt-get at a time, whichever test worker asks
        if _chromium_on_path() is None:
            apt_install(CHROMIUM_PACKAGES)
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
