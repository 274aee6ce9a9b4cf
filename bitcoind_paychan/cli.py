"""The `paychan` command: the daemon, the regtest demo, and a bitcoin-cli-like client of the
daemon's control API.

Exit status: 0 success; 1 the daemon answered with an error (its code is in the message, and
in `--json` errors), or another failure; 2 usage or configuration error (a parameter the
daemon found malformed, code -8, included); 3 the daemon cannot
be reached (not running, no or wrong cookie, no answer in time); 130 interrupted; 141 the
reader of the output went away (as a process killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from bitcoind_paychan import __version__
from bitcoind_paychan.channel.kinds import registry as kinds
from bitcoind_paychan.channel.records import ChannelStatus
from bitcoind_paychan.errors import ConfigError, PaychanError, SystemChangeRefused

EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED, EXIT_PIPE = 1, 2, 3, 130, 141
USAGE_ERROR = -1000  # the code of a usage or configuration error in `--json` errors
MISC_ERROR = -1  # any other local failure
INVALID_PARAMETER = -8  # the daemon's code for a malformed parameter: a usage error
CHANNEL_HELP = ("contract txid (or a unique prefix), or a server's name: its one open channel "
                "(several open: refused, use a txid)")


class UsageError(Exception):
    """The command line is wrong; `usage` is the (sub)command's usage line."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (main prints it, as JSON with --json) and suggests
    the closest command or option for a typo."""

    def error(self, message: str) -> NoReturn:
        hint = _suggestion(self, message)
        command = re.match(r"argument COMMAND: invalid choice: ('[^']*')", message)
        if command:  # argparse lists every command here; --help does that better
            message = f"unknown command {command.group(1)}"
            hint = hint or f"; `{self.prog} --help` lists the commands"
        raise UsageError(message + hint, self.format_usage().strip())


def _suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        return _did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
    return ""


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of `parser` and its subcommands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def _check_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Refuse an unknown --option first: argparse would take the word after it for the
    command (`--confg FILE getinfo` → "unknown command FILE")."""
    known = _options(parser)
    for word in argv:
        if word == "--":
            return
        option = word.partition("=")[0]
        if option.startswith("--") and option not in known:
            raise UsageError(f"unknown option {option!r}{_did_you_mean(option, sorted(known))}",
                             parser.format_usage().strip())


def _positive(text: str) -> int:
    """argparse type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {value}")
    return value


# -- commands that run here ------------------------------------------------------------------


def _bitcoind(args: argparse.Namespace) -> int:
    from bitcoind_paychan.regtest.fetch import find_bitcoind

    binaries = find_bitcoind()
    if args.json:
        print(json.dumps({"bitcoind": str(binaries.bitcoind),
                          "bitcoin_cli": str(binaries.bitcoin_cli),
                          "version": binaries.version}, indent=2))
    else:
        print(f"{binaries.bitcoind}\n{binaries.bitcoin_cli}\n{binaries.version}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bitcoind_paychan import demo

    return demo.main(args.version, args.payments, args.amount, args.json, args.store,
                     args.allow_system_changes)


def _daemon(args: argparse.Namespace) -> int:
    from bitcoind_paychan.daemon.config import find_config, load_config
    from bitcoind_paychan.daemon.daemon import run_daemon

    return run_daemon(load_config(find_config(args.config), check_files=True))


def _gateway(args: argparse.Namespace) -> int:
    from bitcoind_paychan.daemon.config import find_config, load_config
    from bitcoind_paychan.daemon.daemon import run_daemon

    return run_daemon(load_config(find_config(args.config), check_files=True,
                                  gateway_only=True))


def _fetch(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from bitcoind_paychan.daemon.config import find_config, load_config
    from bitcoind_paychan.gateway.fetch import Fetch, fetch, header_pair
    from bitcoind_paychan.node import AsyncBitcoind, Bitcoind
    from bitcoind_paychan.node.ports import NodePorts
    from bitcoind_paychan.store import SQLiteStore

    config = load_config(find_config(args.config), check_files=True)
    usage = "usage: paychan fetch [-X METHOD] [-H 'Name: value'] [-d DATA] [-o FILE] URL"
    try:
        headers = [header_pair(h) for h in args.header]
    except ValueError as exc:
        raise UsageError(f"-H: {exc}", usage) from None
    data = args.data
    body = None if data is None else (Path(data[1:]).read_bytes() if data.startswith("@")
                                      else data.encode())
    store_path = Path(args.store) if args.store else _fetch_store(config.store.path,
                                                                  config.network)
    store_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = SQLiteStore(store_path)
    job = Fetch(args.url, args.request or ("POST" if body is not None else "GET"), headers,
                body, Path(args.output) if args.output else None, args.include, args.value,
                args.max_request, args.max_total)
    wallet = NodePorts.of(AsyncBitcoind(Bitcoind(config.node_config())))
    try:
        return asyncio.run(fetch(wallet, store, job))
    finally:
        store.close()


def _fetch_store(daemon_store: Any, network: str) -> Any:
    """`paychan fetch`'s own store: fetch-NETWORK.db beside the daemon's SQLite file, else in
    ~/.local/share/paychan."""
    from pathlib import Path

    folder = daemon_store.parent if daemon_store is not None else \
        Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "paychan"
    return folder / f"fetch-{network}.db"


def _completion(args: argparse.Namespace) -> int:
    from bitcoind_paychan.completion import script

    text = script(parser(), args.shell)
    print(json.dumps({"shell": args.shell, "script": text}) if args.json else text, end="\n"
          if args.json else "")
    return 0


# -- control API commands ------------------------------------------------------------------


def _control(args: argparse.Namespace) -> Any:
    from bitcoind_paychan.daemon.config import find_config, load_control_config
    from bitcoind_paychan.daemon.rpcclient import ControlClient

    # Only the control section: the CLI needs no database password nor bitcoind's cookie.
    control = load_control_config(find_config(args.config))
    client = ControlClient(f"http://{control.listen}", control.cookie_file,
                           timeout=args.timeout)
    if args.wait:
        _wait_for_daemon(client, args.wait)
    return client


def _wait_for_daemon(client: Any, seconds: float) -> None:
    """Like bitcoin-cli -rpcwait: wait for the daemon to answer (or to write its cookie)."""
    from bitcoind_paychan.daemon.rpcclient import NO_COOKIE, NOT_RUNNING
    from bitcoind_paychan.errors import ControlError

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
    """One payment, or `--repeat N` of them: progress on a terminal only (`\r` lines), and
    on Ctrl-C a newline and a summary of what was paid before exiting with 130."""
    client = _control(args)
    result: Any = None
    made, started = 0, time.perf_counter()
    progress = args.repeat > 1 and not args.json and sys.stderr.isatty()
    try:
        while made < args.repeat:
            result = client.call("pay", args.target, args.amount, args.info)
            made += 1
            if progress:  # this run's payments, not the channel's
                rate = made / (time.perf_counter() - started)
                print(f"\r{made}/{args.repeat} payments, {made * args.amount} sat paid, "
                      f"{rate:.0f}/s", end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        if progress:
            print(file=sys.stderr)
        print(f"interrupted: {made} of {args.repeat} payments of {args.amount} sat made "
              f"({made * args.amount} sat; the one in flight may have been made too: "
              "`paychan listpayments` shows what was stored)", file=sys.stderr)
        raise
    if progress:
        print(file=sys.stderr)
    if args.repeat > 1:
        result = result | {"repeat": args.repeat}
    show("pay", result, args.json)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from bitcoind_paychan.daemon.cookie import ControlCookie
    from bitcoind_paychan.daemon.dashboard import login_link

    client = _control(args)
    client.call("getinfo")  # the daemon runs: the link holds its current cookie
    link = login_link(client.url, ControlCookie.read(client.cookie_path))
    print(json.dumps({"url": link}) if args.json else link)
    return 0


def _close(args: argparse.Namespace) -> int:
    """Settle a channel; say that we wait for the server only when we ask it (an open
    channel: a closing or closed one is reported as it is)."""
    client = _control(args)
    shown = {} if args.json else client.call("getchannel", args.channel)
    if shown.get("status") == "open":
        print("asking the server to settle and waiting for the settlement…"
              if shown["role"] == "client" else "settling the channel now…", file=sys.stderr)
    show("close", client.call("close", args.channel), args.json)
    return 0


# -- output ------------------------------------------------------------------------------------


def show(method: str, result: Any, as_json: bool) -> None:
    """JSON for programs; tables and key: value lines for people. Txids are always whole."""
    if as_json:
        print(json.dumps(result, indent=2))
    elif method == "stop":
        print("paychan daemon stopping")
    elif method == "listchannels":
        print(_table(result, [("role", "role"), ("contract", "contract_txid"),
                              ("status", "status"), ("value", "value"), ("paid", "paid"),
                              ("payments", "payments"), ("deadline", "deadline"),
                              ("conf", "contract_confirmations"),
                              ("closing", "closing_txid")]))
    elif method == "listpayments":
        print(_table(result, [("stored", "stored_at"), ("role", "role"),
                              ("contract", "contract_txid"), ("seq", "seq"), ("amount", "amount"),
                              ("change after", "change_after"), ("info", "info")]))
    elif method == "pay":
        print(_paid(result))
    elif isinstance(result, dict):
        rows = list(_rows(result))
        width = max((len(k) for k, _ in rows), default=0)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    else:
        print(_cell("", result))


def _rows(result: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """key: value lines; a mapping of mappings (getinfo's channels per role, getchannel's
    server side) as `key sub` lines; getchannel's generations one line each."""
    for key, value in result.items():
        if key == "generations" and isinstance(value, list):
            for g in value:
                yield (f"{prefix}generation {g['generation']}",
                       f"{g['contract_txid']} ({g['value']} sat, re-anchored by "
                       f"{g['reanchor_txid']}, {g['payout']} sat paid out)")
        elif isinstance(value, dict) and value and (
                prefix == "" and (key == "server" or all(isinstance(v, dict)
                                                         for v in value.values()))):
            yield from _rows(value, f"{prefix}{key} ")
        else:
            yield f"{prefix}{key}", _cell(key, value)


def _paid(result: dict[str, Any]) -> str:
    """What the payment (or the run of `--repeat` payments) was, and the channel's total."""
    repeat = result.get("repeat", 1)
    what = (f"paid {result['amount']} sat" if repeat == 1 else
            f"paid {repeat} × {result['amount']} sat = {repeat * result['amount']} sat")
    info = f" ({result['info']})" if result.get("info") else ""
    answer = f"; the server answered {result['ack_info']!r}" if result.get("ack_info") else ""
    return (f"{what}{info} through channel {result['contract_txid']}{answer}\n"
            f"channel total: {result['paid']} of {result['value']} sat paid in "
            f"{result['payment']} payments (the opening one included), "
            f"{result['remaining']} sat left")


def _cell(key: str, value: Any) -> str:
    """One value as people read it: no Python reprs."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in ("deadline", "expiry", "opened_at", "closed_at", "before") and isinstance(value, int):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if key == "stored_at" and isinstance(value, int):  # payments: to the second
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        return ", ".join(_cell("", v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(k, v)}" for k, v in value.items()) or "-"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(key, row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _) in
              enumerate(columns)]
    lines = ["  ".join(t.ljust(w) for (t, _), w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fail(code: int, message: str, as_json: bool, status: int, usage: str = "") -> int:
    """Report an error on stderr (JSON `{code, message}` with --json); returns `status`.
    People see the code of the daemon's errors only (status 1)."""
    if as_json:
        print(json.dumps({"code": code, "message": message}), file=sys.stderr)
        return status
    if usage:
        print(usage, file=sys.stderr)
    print(f"error: {message}" + (f" (code {code})" if status == EXIT_ERROR and code != MISC_ERROR
                                 else ""), file=sys.stderr)
    return status


# -- the parser ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="paychan", description=__doc__.split("\n\n")[0],
                 epilog="Configuration: --config FILE, else $PAYCHAN_CONF, else "
                        "~/.config/paychan/paychan.yaml, else /etc/paychan/paychan.yaml, "
                        "else regtest defaults. Exit status: 0 ok, 1 error (the daemon's "
                        "code in the message), 2 usage, 3 daemon unreachable.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument("--config", metavar="FILE", help="the daemon's YAML configuration")
    top.add_argument("--json", action="store_true", help="print JSON (errors too)")
    top.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                     help="control call timeout (300)")
    top.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                     help="wait up to SECONDS for the daemon to start answering")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str
                ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        # Also accepted after the command (`paychan daemon --config FILE`).
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print JSON (errors too)")
        return sub

    command("bitcoind", _bitcoind, "find or fetch a regtest bitcoind; print paths")
    demo = command("demo", _demo,
                   "regtest demo: open a channel, stream payments, close, settle, summarize")
    demo.add_argument("--version", type=int, choices=kinds.VERSIONS,
                      default=kinds.DEFAULT_VERSION, help=f"channel version ({kinds.describe()})")
    demo.add_argument("--payments", type=_positive, default=100, help="how many payments (100)")
    demo.add_argument("--amount", type=_positive, default=1_000, help="sat per payment (1000)")
    demo.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                      help="the server's store: an SQLite file (default), or a database on a "
                      "throwaway PostgreSQL server (see --allow-system-changes)")
    demo.add_argument("--allow-system-changes", action="store_true",
                      help="with --store postgresql as root: allow installing Debian's "
                      "postgresql package and creating the system user paychan-pg if missing "
                      "(kept afterwards; the demo says which first). Without it the demo "
                      "refuses and changes nothing (exit 2)")
    command("daemon", _daemon, "run the server and/or client roles (see --config)")
    command("gateway", _gateway, "run the daemon as a paid HTTP gateway only: the gateway: "
            "section's routes and the server role its channels need (the client role off)")
    command("getinfo", _call("getinfo"),
            "the daemon's version, network, node state, height, channels")
    listing = command("listchannels", _call("listchannels", "state", "all"),
                      "channels, by state")
    states = [s.value for s in ChannelStatus]
    listing.add_argument("state", nargs="?", choices=states, help=", ".join(states))
    listing.add_argument("--all", action="store_true",
                         help="also the forgotten ones (closed and buried): the history")
    command("getchannel", _call("getchannel", "channel"), "one channel").add_argument(
        "channel", help="contract txid (or a unique prefix), or a server's name: its open "
                        "channel")
    opening = command("open", _call("open", "server", "amount", "new"),
                      "open a channel (or resume the open one of that value)")
    opening.add_argument("server", help="a configured server's name, or host:port")
    opening.add_argument("amount", type=_positive, help="channel value in sat")
    opening.add_argument("--new", action="store_true",
                         help="open another channel even if one to that server is open")
    paying = command("pay", _pay, "pay through a channel (opened or resumed as needed)")
    paying.add_argument("target", help="a contract txid (or a unique prefix): that channel, "
                        "reconnected if need be; or a server's name or host:port: its one open "
                        "channel, a new one if none (several open: refused, use a txid)")
    paying.add_argument("amount", type=_positive, help="sat")
    paying.add_argument("info", nargs="?", help="text sent along with the payment")
    paying.add_argument("--repeat", type=_positive, default=1, metavar="N",
                        help="stream N payments (≥ 1; progress on a terminal)")
    command("close", _close, "settle a channel").add_argument(
        "channel", help="contract txid (or a unique prefix), or a server's name: its one open "
                        "channel (several open: refused, use a txid)")
    paying.epilog = "Prints what was paid and the channel's total; --json for the fields."
    # Re-anchoring a live channel (issue 23): its payments go on meanwhile.
    topping = command("topup", _call("topup", "channel", "amount"),
                      "add sat from the wallet to a live channel (client; re-anchoring)")
    topping.add_argument("channel", help=CHANNEL_HELP)
    topping.add_argument("amount", type=_positive, help="sat (within client.max_deposit)")
    renewing = command("renew", _call("renew", "channel", "window"),
                       "move a live channel's expiry later (re-anchoring)")
    renewing.add_argument("channel", help=CHANNEL_HELP)
    renewing.add_argument("--window", type=_positive, metavar="SECONDS",
                          help="from now (default: client.time_window; on a server, "
                               "server.min_time_window)")
    command("payout", _call("payout", "channel"),
            "pay the server what a live channel's client acknowledged, the channel going on "
            "(server; re-anchoring)").add_argument("channel", help=CHANNEL_HELP)
    payments = command("listpayments", _call("listpayments", "channel", "limit", "since"),
                       "payments made and received, newest first")
    payments.add_argument("channel", nargs="?", help="contract txid (or a unique prefix)")
    payments.add_argument("--limit", type=_positive, metavar="N", help="the newest N only")
    payments.add_argument("--since", metavar="DATE", help="those stored at or after DATE: "
                          "YYYY-MM-DD, YYYY-MM-DDTHH:MM (UTC) or Unix seconds")
    pruning = command("prunehistory", _call("prunehistory", "before"),
                      "delete the history of channels closed before a date")
    pruning.add_argument("--before", required=True, metavar="DATE",
                         help="YYYY-MM-DD, YYYY-MM-DDTHH:MM (UTC) or Unix seconds")
    fetching = command("fetch", _fetch, "fetch a URL, paying a paychan 402 through a channel "
                       "with its gateway (opened or resumed on first use)")
    fetching.add_argument("url", help="http(s) URL")
    fetching.add_argument("-X", "--request", metavar="METHOD", help="GET, or POST with -d")
    fetching.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                          help="a request header (repeatable)")
    fetching.add_argument("-d", "--data", metavar="DATA", help="the request body (@FILE: a "
                          "file's bytes)")
    fetching.add_argument("-o", "--output", metavar="FILE", help="write the body there, not "
                          "to stdout")
    fetching.add_argument("-i", "--include", action="store_true",
                          help="the answer's status line and headers to stderr")
    fetching.add_argument("--max-request", type=_positive, metavar="SAT",
                          help="refuse an offer whose request costs more (a stream's top-ups "
                          "included)")
    fetching.add_argument("--max-total", type=_positive, metavar="SAT",
                          help="pay at most this much in all")
    fetching.add_argument("--value", type=_positive, default=1_000_000, metavar="SAT",
                          help="sat to lock in a new channel (1000000)")
    fetching.add_argument("--store", metavar="FILE", help="the SQLite store of fetch's "
                          "channels (fetch-NETWORK.db beside the daemon's store)")
    fetching.epilog = ("Exit status 0 for an answer under 400, 1 otherwise or when a price "
                       "is over a cap. Coins: the configured bitcoind wallet.")
    command("dashboard", _dashboard,
            "print a link that opens the live dashboard in a browser on this machine")
    command("stop", _call("stop"), "stop the daemon gracefully")
    command("completion", _completion, "print a shell completion script").add_argument(
        "shell", choices=("bash", "zsh"), help="eval \"$(paychan completion bash)\"")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    from bitcoind_paychan.daemon.rpcclient import LOCAL_CODES
    from bitcoind_paychan.errors import ControlError

    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        top = parser()
        _check_options(top, argv)
        args = top.parse_args(argv)
        return int(args.run(args))
    except UsageError as exc:
        return fail(USAGE_ERROR, str(exc), as_json, EXIT_USAGE, exc.usage)
    except ControlError as exc:
        status = (EXIT_UNREACHABLE if exc.code in LOCAL_CODES else
                  EXIT_USAGE if exc.code == INVALID_PARAMETER else EXIT_ERROR)
        return fail(exc.code, exc.message, as_json, status)
    except (ConfigError, SystemChangeRefused) as exc:
        return fail(USAGE_ERROR, str(exc), as_json, EXIT_USAGE)
    except PaychanError as exc:
        return fail(MISC_ERROR, str(exc), as_json, EXIT_ERROR)
    except BrokenPipeError:
        # The reader went away (`paychan ... | head`): no traceback, and no second error when
        # Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
