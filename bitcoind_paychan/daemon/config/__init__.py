"""The daemon's YAML configuration: schema, defaults, validation, and the runtime objects.

`load_config(path)` reads a file (None: every default, a regtest node beside a local
`bitcoind -regtest` with cookie auth); `config_from_dict(data, source)` validates a parsed
mapping. Every problem is one ConfigError naming the file, the key path (`server.listen`),
what was found and what was expected. The schema is documented in docs/config.md.

In string values `${NAME}` is replaced by the environment variable NAME; in paths `~` is the
home directory and `<network>` the network's name; relative paths are relative to the
configuration file's directory.

One idea a module: `schema` (the dataclasses), `keys` (the key registries), `discovery`
(where the file is looked for), `yamlfile` (reading the YAML), `reader` (typed access with
precise errors), `sections` and `roles` (the section builders), `load` (file → Config).
"""

from bitcoind_paychan.daemon.config.discovery import SYSTEM_CONFIG, config_locations, find_config
from bitcoind_paychan.daemon.config.keys import POLICY_KEYS, SECTIONS, TOP_LEVEL, section_keys
from bitcoind_paychan.daemon.config.load import config_from_dict, load_config, load_control_config
from bitcoind_paychan.daemon.config.roles import server_address
from bitcoind_paychan.daemon.config.schema import (
    BitcoindConfig,
    ClientConfig,
    Config,
    ControlConfig,
    LoggingConfig,
    MetricsConfig,
    SchedulerConfig,
    ServerConfig,
    StoreConfig,
    default_cookie_file,
)

__all__ = [
    "POLICY_KEYS", "SECTIONS", "SYSTEM_CONFIG", "TOP_LEVEL", "BitcoindConfig", "ClientConfig",
    "Config", "ControlConfig", "LoggingConfig", "MetricsConfig", "SchedulerConfig",
    "ServerConfig", "StoreConfig", "config_from_dict", "config_locations", "default_cookie_file",
    "find_config", "load_config", "load_control_config", "section_keys", "server_address",
]
