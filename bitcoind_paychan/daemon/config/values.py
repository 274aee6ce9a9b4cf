"""Small helpers on keys and addresses, shared by the reader and the section builders."""

from __future__ import annotations

import ipaddress
from pathlib import Path


def label(source: Path | None) -> str:
    return str(source) if source is not None else "configuration"


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def host_port(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port); ValueError if it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(address)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host or not is_ip(host):
            raise ValueError(address)
    elif ":" in host:
        raise ValueError(address)  # a bare IPv6 address needs brackets
    if not host:
        raise ValueError(address)
    return host, int(port)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
