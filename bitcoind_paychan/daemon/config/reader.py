"""Typed access to parsed YAML with precise errors: every problem names the file, the key,
what was found and what was expected; one pass notes them all."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from bitcoind_paychan.daemon.config.keys import (
    NULL_IS_DEFAULT,
    POLICY_KEYS,
    section_keys,
)
from bitcoind_paychan.daemon.config.values import host_port, is_ip, join, label
from bitcoind_paychan.daemon.config.yamlfile import ENV, Spelled, show
from bitcoind_paychan.errors import ConfigError, PolicyError

_P = TypeVar("_P")
_T = TypeVar("_T")
_V = TypeVar("_V")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")


class Problem(ConfigError):
    """One problem with one key; `file` problems (a cookie, a certificate that cannot be
    read) are reported after the schema's."""

    def __init__(self, key: str, message: str, file: bool = False) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.file = key, file


class Reader:
    """Reads typed values out of parsed YAML; every failure names file, key and expectation.
    A value of the wrong kind is noted (`problems`) and its default used, so that one pass
    finds every problem; `fail` gives up what is being read: a key inside `guard` (the
    section goes on), else the section in hand (its defaults are used)."""

    def __init__(self, source: Path | None, lines: Mapping[str, int] | None = None) -> None:
        self.source = source
        self.where = label(source)
        self.lines = lines or {}
        self.problems: list[Problem] = []
        self.fallback = False  # building a section from defaults after a problem

    def defaults(self, build: Callable[[], _T]) -> _T:
        """What `build` makes of defaults alone (no files checked, nothing noted)."""
        problems, self.problems, self.fallback = self.problems, [], True
        try:
            return build()
        finally:
            self.problems, self.fallback = problems, False

    def fail(self, key: str, message: str, *, file: bool = False) -> NoReturn:
        raise Problem(key, message, file)

    def check_file(self, check: Callable[[], None]) -> None:
        """Run a check of a file; its problem is noted and the section goes on."""
        self.guard(check, None)

    def wrong(self, key: str, message: str, default: _V) -> _V:
        """Note a problem with `key` and go on with `default`."""
        self.problems.append(Problem(key, message))
        return default

    def raise_errors(self) -> None:
        """One ConfigError for every problem noted: the schema's in file order, then the
        files'; each line names the file and the key."""
        if not self.problems:
            return
        ordered = sorted(self.problems, key=lambda p: (p.file, self._line(p.key)))
        raise ConfigError("\n".join(f"{self.where}: {p}" for p in ordered))

    def _line(self, key: str) -> float:
        """The line of `key` (or of its closest enclosing key) in the file."""
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0]
        return float("inf")

    def substitute(self, value: Any, key: str) -> Any:
        """`${NAME}` in every string value → the environment variable NAME."""
        if isinstance(value, Mapping):
            return {k: self.substitute(v, join(key, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self.substitute(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                return self.wrong(key, f"found ${{{name}}}, expected ${{NAME}} with NAME an "
                                       "environment variable name", match.group(0))
            if name not in os.environ:
                return self.wrong(key, f"environment variable {name} is not set, expected "
                                       f"it to be set for ${{{name}}}", match.group(0))
            return os.environ[name]

        return ENV.sub(lookup, value)

    def check_keys(self, data: Mapping[str, Any], prefix: str, known: tuple[str, ...]) -> None:
        for name in data:
            if name in known:
                continue
            key = join(prefix, str(name))
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {join(prefix, close[0])!r}? " if close else ""
            self.wrong(key, f"unknown key; {hint}expected one of: {', '.join(known)}", None)

    def section(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(name, f"found {show(value)}, expected a mapping of settings")
        self.check_keys(value, name, section_keys(name))
        return value

    def policy(self, d: Mapping[str, Any], section: str, cls: type[_P],
               keys: Mapping[str, str] | None = None, **given: Any) -> _P:
        """Policy `cls` built from the section's keys (`keys`, or POLICY_KEYS). Absent keys
        take the policy's defaults; its own rules reject values, reported under the keys'
        names. Each bad key is noted and left out (its default used), so that every bad key
        is reported; the policy is built from the valid ones only."""
        keys = POLICY_KEYS[section] if keys is None else keys
        names = {name: join(section, key) for key, name in keys.items()}
        flags = {f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                 if isinstance(f.default, bool)}
        values: dict[str, Any] = {}
        for key, name in keys.items():
            value = d.get(key)
            if value is None and (key not in d or join(section, key) in NULL_IS_DEFAULT):
                continue
            if name in flags:
                if not isinstance(value, bool):
                    self.wrong(names[name], f"found {show(value)}, expected true or false",
                               None)
                    continue
            elif isinstance(value, bool) or not isinstance(value, int):
                self.wrong(names[name], f"found {show(value)}, expected an integer", None)
                continue
            values[name] = value
        while True:  # each rule broken: noted under its key, whose value is then left out
            try:
                return cls(**values, **given)
            except PolicyError as exc:
                if not values:  # the defaults themselves (with `given`) break a rule
                    self.fail(names.get(exc.field, join(section, exc.field)), exc.detail)
                detail = re.sub(r"\b(" + "|".join(names) + r")\b", lambda m: names[m[1]],
                                exc.detail)
                spelled = d.get(next((k for k, n in keys.items() if n == exc.field), ""))
                if isinstance(spelled, Spelled):  # as written: 0644, not 420
                    detail = detail.replace(f"found {int(spelled)}", f"found {spelled.written}")
                self.wrong(names.get(exc.field, join(section, exc.field)), detail, None)
                if exc.field in values:
                    del values[exc.field]
                else:  # a rule of a field no key sets: the defaults then
                    values.clear()

    def guard(self, read: Callable[[], _T], default: _T) -> _T:
        """`read` one key (or keys that stand or fall together); its problem is noted and
        `default` used, so that the section goes on to its other keys."""
        try:
            return read()
        except Problem as problem:
            self.problems.append(problem)
            return default

    def integer(self, d: Mapping[str, Any], section: str, name: str, default: int, *,
                minimum: int = 1, maximum: int | None = None, nullable: bool = False) -> int:
        """An int (never a bool); with `nullable`, null means the default."""
        key = join(section, name)
        value = d.get(name, default)
        if value is None and nullable:
            return default
        expected = f"an integer ≥ {minimum}" + (f" and ≤ {maximum}" if maximum else "")
        expected += " (or null for the default)" if nullable else ""
        if isinstance(value, bool) or not isinstance(value, int):
            return self.wrong(key, f"found {show(value)}, expected {expected}", default)
        if value < minimum or (maximum is not None and value > maximum):
            return self.wrong(key, f"found {show(value, kind=False)}, expected {expected}",
                              default)
        return value

    def number(self, d: Mapping[str, Any], section: str, name: str, default: float) -> float:
        value = d.get(name, default)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not 0 < value < float("inf")):
            return self.wrong(join(section, name), f"found {show(value)}, expected a number "
                                                    "of seconds > 0", default)
        return float(value)

    def boolean(self, d: Mapping[str, Any], section: str, name: str, default: bool) -> bool:
        value = d.get(name, default)
        if not isinstance(value, bool):
            return self.wrong(join(section, name), f"found {show(value)}, expected true or "
                                                    "false", default)
        return value

    def string(self, d: Mapping[str, Any], section: str, name: str, default: str) -> str:
        value = d.get(name, default)
        if not isinstance(value, str) or not value:
            self.fail(join(section, name), f"found {show(value)}, expected a non-empty string")
        return value

    def optional_string(self, d: Mapping[str, Any], section: str, name: str,
                        default: str | None) -> str | None:
        """A string, or None where the key is null (or absent and the default is None)."""
        value = d.get(name, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(join(section, name), f"found {show(value)}, expected a non-empty "
                                            "string or null")
        return value

    def choice(self, d: Mapping[str, Any], section: str, name: str, default: str,
               choices: tuple[str, ...]) -> str:
        value = d.get(name, default)
        if not isinstance(value, str) or value not in choices:
            return self.wrong(join(section, name), f"found {show(value)}, expected one of: "
                                                    f"{', '.join(choices)}", default)
        return value

    def address(self, d: Mapping[str, Any], section: str, name: str, default: str) -> str:
        """host:port; a bad one is noted and the default used (without a default, the
        section is given up)."""
        key = join(section, name)
        value = d.get(name, default)
        expected = "host:port (e.g. 127.0.0.1:4242 or [::1]:4242; port 0-65535)"
        problem = f"found {show(value)}, expected {expected}"
        if isinstance(value, str):
            problem = f"found {value!r}, expected {expected}"
            try:
                host, port = host_port(value)
            except ValueError:
                pass
            else:
                if (is_ip(host) or _HOSTNAME.match(host)) and port <= 65535:
                    return value
        if not default:
            self.fail(key, problem)
        return self.wrong(key, problem, default)

    def path(self, d: Mapping[str, Any], section: str, name: str, default: str,
             network: str) -> Path:
        return self._path(self.string(d, section, name, default), network)

    def optional_path(self, d: Mapping[str, Any], section: str, name: str,
                      network: str) -> Path | None:
        value = self.optional_string(d, section, name, None)
        return None if value is None else self._path(value, network)

    def _path(self, value: str, network: str) -> Path:
        """`<network>` substituted, `~` expanded, relative to the configuration's directory."""
        path = Path(value.replace("<network>", network)).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path
