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


def _demo(args: argparse.Namespace) -> int:
    from bitcoind_paychan import demo

    return demo.main(args.version, args.payments, args.amount, args.json)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="paychan", description=__doc__)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("bitcoind", help="find or fetch a regtest bitcoind; print paths")
    fetch.set_defaults(run=_bitcoind)
    demo = commands.add_parser(
        "demo", help="regtest demo: open a channel, stream payments, close, settle, summarize")
    demo.add_argument("--version", type=int, choices=(1, 2, 3), default=3,
                      help="channel version (3: P2WSH CLTV, the default; 2: bitcoinj's CLTV; "
                      "1: bitcoinj's 2013 multisig+refund)")
    demo.add_argument("--payments", type=int, default=100, help="how many payments (100)")
    demo.add_argument("--amount", type=int, default=1_000, help="sat per payment (1000)")
    demo.add_argument("--json", action="store_true", help="print one JSON object last")
    demo.set_defaults(run=_demo)
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
