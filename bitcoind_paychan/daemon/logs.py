"""Logging for the daemon: human or JSON lines, to stderr or a file reopened on SIGHUP.

A line about a channel carries its contract txid and peer (`bitcoind_paychan.logcontext`):
JSON lines as the fields `contract_txid` and `peer`, human lines as a stable prefix
`[channel=<txid> peer=<host:port>] ` before the message. Levels can be set per subsystem
(`logging.levels` in the configuration; names in SUBSYSTEMS).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from bitcoind_paychan.logcontext import ChannelFields

# logging.levels' keys: the loggers each subsystem's modules log to.
SUBSYSTEMS = {
    "server": "bitcoind_paychan.service.server",
    "client": "bitcoind_paychan.service.client",
    "watcher": "bitcoind_paychan.service.watcher",
    "node": "bitcoind_paychan.node",
    "store": "bitcoind_paychan.store",
    "wire": "bitcoind_paychan.wire",
    "control": "bitcoind_paychan.daemon.control",
    "dashboard": "bitcoind_paychan.daemon.dashboard",
    "http": "bitcoind_paychan.transport.http",
    "transport": "bitcoind_paychan.transport",
    "metrics": "bitcoind_paychan.daemon.metrics",
    "daemon": "bitcoind_paychan.daemon.daemon",
    "gateway": "bitcoind_paychan.gateway",  # its access log: bitcoind_paychan.gateway.access
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the channel's contract txid
    and peer when the line is about one, and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("contract_txid", "peer"):
            value = getattr(record, field, "")
            if value:
                entry[field] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


HUMAN = "%(asctime)s %(levelname)-7s %(name)s: %(channel)s%(message)s"


class HumanFormatter(logging.Formatter):
    """HUMAN lines; `channel` is the `[channel=... peer=...] ` prefix, or nothing."""

    def __init__(self) -> None:
        super().__init__(HUMAN)

    def format(self, record: logging.LogRecord) -> str:
        fields = (("channel", getattr(record, "contract_txid", "")),
                  ("peer", getattr(record, "peer", "")))
        parts = [f"{name}={value}" for name, value in fields if value]
        record.channel = f"[{' '.join(parts)}] " if parts else ""
        return super().format(record)


class Logs:
    """The daemon's log handler; `reopen()` (on SIGHUP) lets logrotate move the file."""

    def __init__(self, level: str = "info", fmt: str = "human", file: Path | None = None,
                 levels: Mapping[str, str] | None = None) -> None:
        self.file = file
        self.formatter = JsonFormatter() if fmt == "json" else HumanFormatter()
        self.handler = self._handler()
        root = logging.getLogger()
        root.handlers = [self.handler]
        root.setLevel(level.upper())
        for noisy in ("apscheduler", "BitcoinRPC", "asyncio", "aiohttp"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        levels = levels or {}
        for subsystem, logger in SUBSYSTEMS.items():  # unset ones follow the root again
            logging.getLogger(logger).setLevel(levels.get(subsystem, "NOTSET").upper())

    def _handler(self) -> logging.Handler:
        handler: logging.Handler
        if self.file is None:
            handler = logging.StreamHandler(sys.stderr)
        else:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.file)
        handler.setFormatter(self.formatter)
        handler.addFilter(ChannelFields())
        return handler

    def reopen(self) -> None:
        if self.file is None:
            return
        root = logging.getLogger()
        old, self.handler = self.handler, self._handler()
        root.addHandler(self.handler)
        root.removeHandler(old)
        old.close()
        logging.getLogger(__name__).info("log file reopened")
