"""Regenerate bitcoind_paychan/wire/paychan_pb2.py and .pyi from proto/paychan.proto.

Run with the project's virtualenv: `python proto/generate.py [--out DIR]`. The proto file is
mapped to the virtual path bitcoind_paychan/wire/paychan.proto so that the generated module
registers itself as `bitcoind_paychan.wire.paychan_pb2`. `--out` (default: the repository root)
receives bitcoind_paychan/wire/paychan_pb2.py(i); the test suite uses it to check freshness.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
VIRTUAL_DIR = "bitcoind_paychan/wire"
PROTO_NAME = "paychan.proto"


def _mypy_plugin() -> str:
    """Locate protoc-gen-mypy beside the running interpreter, else on PATH."""
    local = Path(sys.executable).parent / "protoc-gen-mypy"
    found = str(local) if local.exists() else shutil.which("protoc-gen-mypy")
    if not found:
        raise SystemExit("protoc-gen-mypy not found: pip install mypy-protobuf")
    return found


def generate(out_dir: Path) -> None:
    """Write bitcoind_paychan/wire/paychan_pb2.py and .pyi under `out_dir`."""
    (out_dir / VIRTUAL_DIR).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={VIRTUAL_DIR}={PROTO_DIR}",
        f"--plugin=protoc-gen-mypy={_mypy_plugin()}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"{VIRTUAL_DIR}/{PROTO_NAME}",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
