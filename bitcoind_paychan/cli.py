"""The `paychan` command: the daemon, the regtest demo, and a bitcoin-cli-like client of the
daemon's control API."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from bitcoind_paychan import __version__
from bitcoind_paychan.errors import PaychanError


def _bitcoind(args: argparse.Namespace) -> int:
    from bitcoind_paychan.regtest.fetch import find_bitcoind

    binaries = find_bitcoind()
    print(f"{binaries.bitcoind}\n{binaries.bitcoin_cli}\n{binaries.version}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bitcoind_paychan import demo

    return demo.main(args.version, args.payments, args.amount, args.json)


def _daemon(args: argparse.Namespace) -> int:
    from bitcoind_paychan.daemon.config import load_config
    from bitcoind_paychan.daemon.daemon import run_daemon

    return run_daemon(load_config(args.config, check_files=True))


# -- control API commands ------------------------------------------------------------------


def _control(args: argparse.Namespace) -> Any:
    from bitcoind_paychan.daemon.config import load_config
    from bitcoind_paychan.daemon.rpcclient import ControlClient

    config = load_config(args.config)
    client = ControlClient(f"http://{config.control.listen}", config.control.cookie_file,
                           timeout=args.timeout)
    if args.wait:
        _wait_for_daemon(client, args.wait)
    return client


def _wait_for_daemon(client: Any, seconds: float) -> None:
    """Like bitcoin-cli -rpcwait: wait for the daemon to answer (or to write its cookie)."""
    from bitcoind_paychan.daemon.rpcclient import NO_COOKIE, NOT_RUNNING, ControlError

    deadline = time.monotonic() + seconds
    while True:
        try:
            client.call("getinfo")
            return
        except ControlError as exc:
            if exc.code not in (NOT_RUNNING, NO_COOKIE) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _call(method: str, *params: Any) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        values = [getattr(args, p) if isinstance(p, str) else p for p in params]
        result = _control(args).call(method, *values)
        show(method, result, args.json)
        return 0

    return run


def _pay(args: argparse.Namespace) -> int:
    client = _control(args)
    result: Any = None
    started = time.perf_counter()
    for i in range(args.repeat):
        result = client.call("pay", args.target, args.amount, args.info)
        if args.repeat > 1 and not args.json:
            rate = (i + 1) / (time.perf_counter() - started)
            print(f"\r{i + 1}/{args.repeat} payments, {result['paid']} sat paid, "
                  f"{rate:.0f}/s", end="", file=sys.stderr, flush=True)
    if args.repeat > 1 and not args.json:
        print(file=sys.stderr)
    show("pay", result, args.json)
    return 0


def _close(args: argparse.Namespace) -> int:
    if not args.json:
        print("asking the server to settle and waiting for the settlement…", file=sys.stderr)
    return _call("close", "channel")(args)


def show(method: str, result: Any, as_json: bool) -> None:
    """JSON for programs; tables and key: value lines for people."""
    if as_json:
        print(json.dumps(result, indent=2))
    elif method == "listchannels":
        print(_table(result, [("role", "role"), ("contract", "contract_txid"),
                              ("status", "status"), ("value", "value"), ("paid", "paid"),
                              ("payments", "payments"), ("deadline", "deadline"),
                              ("conf", "contract_confirmations"),
                              ("closing", "closing_txid")]))
    elif method == "listpayments":
        print(_table(result, [("role", "role"), ("contract", "contract_txid"),
                              ("seq", "seq"), ("amount", "amount"),
                              ("change after", "change_after"), ("info", "info")]))
    elif isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        for key, value in result.items():
            print(f"{key:<{width}}  {_cell(key, value)}")
    else:
        print(result)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("deadline", "expiry") and isinstance(value, int):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if key.endswith("txid") and isinstance(value, str) and len(value) == 64:
        return value[:16] + "…"
    return str(value) if not isinstance(value, dict) else json.dumps(value)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(key, row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _) in
              enumerate(columns)]
    lines = ["  ".join(t.ljust(w) for (t, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="paychan", description=__doc__)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument("--config", help="the daemon's YAML configuration (default: regtest)")
    top.add_argument("--json", action="store_true", help="print JSON")
    top.add_argument("--timeout", type=float, default=300.0, help="control call timeout (s)")
    top.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                     help="wait up to SECONDS for the daemon to start answering")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str
                ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(run=run)
        # Also accepted after the command (`paychan daemon --config FILE`).
        sub.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print JSON")
        return sub

    command("bitcoind", _bitcoind, "find or fetch a regtest bitcoind; print paths")
    demo = command("demo", _demo,
                   "regtest demo: open a channel, stream payments, close, settle, summarize")
    demo.add_argument("--version", type=int, choices=(1, 2, 3), default=3,
                      help="channel version (3: P2WSH CLTV, the default; 2: bitcoinj's CLTV; "
                      "1: bitcoinj's 2013 multisig+refund)")
    demo.add_argument("--payments", type=int, default=100, help="how many payments (100)")
    demo.add_argument("--amount", type=int, default=1_000, help="sat per payment (1000)")
    command("daemon", _daemon, "run the server and/or client roles (see --config)")
    command("getinfo", _call("getinfo"), "the daemon's version, network, height, channels")
    listing = command("listchannels", _call("listchannels", "state"), "channels, by state")
    listing.add_argument("state", nargs="?", help="open, closing, settled, refunded, failed")
    command("getchannel", _call("getchannel", "channel"), "one channel").add_argument(
        "channel", help="contract txid (or a unique prefix)")
    opening = command("open", _call("open", "server", "amount"), "open a channel")
    opening.add_argument("server", help="a configured server's name, or host:port")
    opening.add_argument("amount", type=int, help="channel value in sat")
    paying = command("pay", _pay, "pay through a channel (opened or resumed as needed)")
    paying.add_argument("target", help="a server's name or host:port, or a contract txid")
    paying.add_argument("amount", type=int, help="sat")
    paying.add_argument("info", nargs="?", help="text sent along with the payment")
    paying.add_argument("--repeat", type=int, default=1, help="stream this many payments")
    command("close", _close, "settle a channel").add_argument(
        "channel", help="contract txid (or a unique prefix), or a server's name")
    payments = command("listpayments", _call("listpayments", "channel"), "payments made")
    payments.add_argument("channel", nargs="?")
    command("stop", _call("stop"), "stop the daemon gracefully")
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
