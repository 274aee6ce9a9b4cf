"""The `paychan` command."""

from __future__ import annotations

import argparse
import sys

from bitcoind_paychan import __version__
from bitcoind_paychan.errors import PaychanError


def _bitcoind(args: argparse.Namespace) -> int:
    from regtest.fetch import find_bitcoind

    binaries = find_bitcoind()
    print(f"{binaries.bitcoind}\n{binaries.bitcoin_cli}\n{binaries.version}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="paychan", description=__doc__)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("bitcoind", help="find or fetch a regtest bitcoind; print paths")
    fetch.set_defaults(run=_bitcoind)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PaychanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
