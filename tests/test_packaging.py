"""The built wheel is the whole product: installed (not editable) into a clean venv, every
module imports, and `paychan --version`, `paychan daemon` and `paychan demo` run from it,
with nothing of the checkout on the path and no top-level `regtest` in site-packages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bitcoind_paychan import __version__
from regtest.node import RegtestNode, free_port, regtest_nodes

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bitcoind_paychan"
NOT_SOURCES = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "*_cache",
                                     "__pycache__")


class Installed:
    """The wheel built from a copy of the checkout, installed into a venv of its own."""

    def __init__(self, tmp: Path) -> None:
        source, dist = tmp / "source", tmp / "dist"
        # A copy, so that no stale build/ of the checkout can slip into the wheel.
        shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCES)
        self.run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                 "--no-build-isolation", "--wheel-dir", str(dist), str(source), cwd=tmp)
        (self.wheel,) = dist.glob("*.whl")
        self.venv = tmp / "venv"
        self.run(sys.executable, "-m", "venv", "--without-pip", str(self.venv), cwd=tmp)
        # The dev venv's pip installs into the clean one (its cache serves the dependencies).
        self.run(sys.executable, "-m", "pip", "--python", str(self.python), "install",
                 "--quiet", "--disable-pip-version-check", str(self.wheel), cwd=tmp)
        self.cwd = tmp

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        done = subprocess.run(args, cwd=cwd or self.cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def paychan(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "paychan"), *args)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    yield Installed(tmp_path_factory.mktemp("wheel"))


def source_packages() -> set[str]:
    """Every directory of the checkout's package that holds Python code, as a dotted name."""
    found = set()
    for directory, _, files in os.walk(PACKAGE, followlinks=True):
        if any(name.endswith(".py") for name in files) and "__pycache__" not in directory:
            relative = Path(directory).relative_to(PACKAGE)
            found.add(".".join(("bitcoind_paychan", *relative.parts)))
    return found


def test_the_wheel_holds_every_package_and_nothing_else(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    packages = {name.rsplit("/", 1)[0].replace("/", ".") for name in names
                if name.endswith("/__init__.py")}
    assert packages == source_packages()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"bitcoind_paychan", f"bitcoind_paychan-{__version__}.dist-info"}
    assert "bitcoind_paychan/py.typed" in names
    assert "bitcoind_paychan/wire/paychan_pb2.py" in names


def test_every_module_imports_from_the_installed_wheel(installed: Installed) -> None:
    script = (
        "import importlib, importlib.util, pkgutil, bitcoind_paychan\n"
        "names = [m.name for m in pkgutil.walk_packages(bitcoind_paychan.__path__,"
        " 'bitcoind_paychan.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "assert importlib.util.find_spec('regtest') is None, 'a top-level regtest'\n"
        "print(bitcoind_paychan.__file__); print(len(names))\n"
    )
    out = installed.run(str(installed.python), "-c", script).stdout.split()
    assert out[0].startswith(str(installed.venv))  # not the checkout
    assert int(out[1]) > 50


def test_paychan_version_and_demo_run_from_the_wheel(installed: Installed) -> None:
    assert installed.paychan("--version").stdout.strip() == f"paychan {__version__}"
    done = installed.paychan("demo", "--payments", "2", "--json")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["payments"] == 2 and result["settlement_confirmations"] == 1


def test_paychan_daemon_runs_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    with regtest_nodes(1) as (node,):
        config = write_config(node, tmp_path)
        daemon = subprocess.Popen([str(installed.venv / "bin" / "paychan"), "daemon",
                                   "--config", str(config)], cwd=tmp_path,
                                  stderr=subprocess.DEVNULL)
        try:
            info = json.loads(installed.paychan("--config", str(config), "--wait", "60",
                                                "--json", "getinfo").stdout)
            assert info["network"] == "regtest"
            installed.paychan("--config", str(config), "stop")
            assert daemon.wait(60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()


def write_config(node: RegtestNode, tmp: Path) -> Path:
    config = tmp / "paychan.yaml"
    config.write_text(yaml.safe_dump({
        "network": "regtest",
        "bitcoind": {"url": node.rpc_url, "cookie_file": str(node.cookie_path)},
        "server": {"enabled": True, "listen": f"127.0.0.1:{free_port()}"},
        "store": {"path": str(tmp / "channels.db")},
        "control": {"listen": f"127.0.0.1:{free_port()}", "cookie_file": str(tmp / "cookie")},
        "logging": {"file": str(tmp / "daemon.log")},
    }))
    return config
