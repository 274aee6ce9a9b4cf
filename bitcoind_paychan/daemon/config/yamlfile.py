"""The YAML file: read with a SafeLoader that refuses duplicate keys and remembers how
integers were written, each key's line (to report problems in file order), and values shown
as the file spells them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from bitcoind_paychan.daemon.config.keys import TOP_LEVEL
from bitcoind_paychan.daemon.config.values import join
from bitcoind_paychan.errors import ConfigError

ENV = re.compile(r"\$\{([^}]*)\}")  # ${NAME} in a string value


def read_yaml(path: str | Path) -> tuple[Path, dict[str, Any], int, dict[str, int]]:
    """The file's path, its parsed top-level mapping, its mode and each key's line;
    ConfigError if it cannot be read or is not a YAML mapping."""
    source = Path(os.path.expanduser(path))
    try:
        text = source.read_text(encoding="utf-8")
        mode = source.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the configuration file: "
                          f"{exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not a text file (UTF-8 expected): {exc}") from exc
    try:
        data = yaml.load(text, Loader=Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML {yaml_error(exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: found {show(data)} at the top level, expected a mapping "
                          f"of sections ({', '.join(TOP_LEVEL)})")
    return source, data, mode, key_lines(yaml.compose(text, Loader=Loader))


class Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""


def _construct_mapping(loader: Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class Spelled(int):
    """An integer written otherwise than in decimal (`0644`, `0x10`, `1_000`): errors show
    it as written."""

    written: str


def _construct_int(loader: Loader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    if node.value == str(value):
        return value
    spelled = Spelled(value)
    spelled.written = node.value
    return spelled


Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Each key path of a composed YAML document → the line it is on (1-based)."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = join(prefix, str(key_node.value))
            lines.setdefault(key, key_node.start_mark.line + 1)
            for inner, line in key_lines(value_node, key).items():
                lines.setdefault(inner, line)
    return lines


def show(value: Any, kind: bool = True) -> str:
    """A found value as the file spells it (`0644`, not 420), with its kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int | float):
        written = value.written if isinstance(value, Spelled) else str(value)
        return f"{written} (a number)" if kind else written
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r} ({type(value).__name__})"


def yaml_error(exc: yaml.YAMLError) -> str:
    """'at line L, column C: problem (context that starts at line K)', 1-based as editors."""
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = problem
    mark = problem_mark or context_mark
    if mark is not None:
        text = f"at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if context:
        text += f" ({context}"
        if context_mark is not None and context_mark is not mark:
            text += f" that starts at line {context_mark.line + 1}"
        text += ")"
    return text
