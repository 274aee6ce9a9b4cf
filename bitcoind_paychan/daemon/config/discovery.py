"""Where the configuration file is looked for when none is given."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_CONFIG = Path("/etc/paychan/paychan.yaml")


def config_locations() -> list[Path]:
    """Where a configuration is looked for when none is given, in order: the per-user file
    ($XDG_CONFIG_HOME, else ~/.config, /paychan/paychan.yaml), then the system's."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return [Path(base) / "paychan" / "paychan.yaml", SYSTEM_CONFIG]


def find_config(given: str | Path | None) -> Path | None:
    """The configuration file to use: `given` (--config), else $PAYCHAN_CONF, else the first
    of `config_locations()` that exists; None (every default) if there is none."""
    if given:
        return Path(given)
    if os.environ.get("PAYCHAN_CONF"):
        return Path(os.environ["PAYCHAN_CONF"])
    return next((path for path in config_locations() if path.is_file()), None)
