"""The committed generated code matches proto/paychan.proto and the current generator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("paychan_pb2.py", "paychan_pb2.pyi")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out / "bitcoind_paychan" / "wire"


@pytest.mark.parametrize("name", GENERATED)
def test_committed_code_is_fresh(regenerated: Path, name: str) -> None:
    committed = (ROOT / "bitcoind_paychan" / "wire" / name).read_bytes()
    fresh = (regenerated / name).read_bytes()
    assert committed == fresh, (
        f"bitcoind_paychan/wire/{name} is stale: run `python proto/generate.py` "
        "(with the dev virtualenv) and commit the result"
    )


def test_module_registers_under_package_path() -> None:
    from bitcoind_paychan.wire import pb

    assert pb.TwoWayChannelMessage.__module__ == "bitcoind_paychan.wire.paychan_pb2"
    assert pb.DESCRIPTOR.package == "paymentchannels"
    assert pb.TwoWayChannelMessage.DESCRIPTOR.full_name == "paymentchannels.TwoWayChannelMessage"
