"""Logging for the daemon: human or JSON lines, to stderr or a file reopened on SIGHUP."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


HUMAN = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class Logs:
    """The daemon's log handler; `reopen()` (on SIGHUP) lets logrotate move the file."""

    def __init__(self, level: str = "info", fmt: str = "human", file: Path | None = None) -> None:
        self.file = file
        self.formatter = JsonFormatter() if fmt == "json" else logging.Formatter(HUMAN)
        self.handler = self._handler()
        root = logging.getLogger()
        root.handlers = [self.handler]
        root.setLevel(level.upper())
        for noisy in ("apscheduler", "BitcoinRPC", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)

    def _handler(self) -> logging.Handler:
        handler: logging.Handler
        if self.file is None:
            handler = logging.StreamHandler(sys.stderr)
        else:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.file)
        handler.setFormatter(self.formatter)
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
