"""The gateway's routes: which upstream serves a path, and what a request there costs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

PER = ("request", "byte", "second", "free")  # what a route's price is per
DEFAULT_TIMEOUT = 30.0  # seconds an upstream may take to answer (headers, then each read)


@dataclass(frozen=True)
class Price:
    """A route's price rule: `price` sat per `quantity` of `per` (requests, bytes of the
    response body, seconds of a streaming response; free: nothing). A request needs
    `reserve` sat of credit before it is forwarded (per request: the price itself); what it
    is charged once the response is known is at most that, and the rest stays the
    session's credit."""

    per: str = "request"
    price: int = 0
    reserve: int = 0
    quantity: int = 1

    def cost(self, units: int) -> int:
        """Sat `units` (bytes, seconds) cost: rounded up."""
        return -(-units * self.price // self.quantity)

    def units_for(self, sat: int) -> int:
        """The most units `sat` pays for."""
        return sat * self.quantity // self.price if self.price else 0

    @property
    def free(self) -> bool:
        return self.per == "free"

    @property
    def needed(self) -> int:
        """Sat of credit a request needs before it is forwarded."""
        return self.reserve or self.price


@dataclass(frozen=True)
class Route:
    """Requests whose path is `path` or below it go to `upstream` (its path prefixed to the
    rest), at `price`."""

    path: str  # "/api" serves /api, /api/ and /api/x, not /apix
    upstream: str  # http(s)://host[:port][/base]
    price: Price
    timeout: float = DEFAULT_TIMEOUT

    def covers(self, path: str) -> bool:
        prefix = self.path.rstrip("/")
        return path == prefix or path.startswith(prefix + "/") or prefix == ""

    def upstream_url(self, path: str, raw_query: str) -> str:
        """The upstream's URL for a request of the decoded `path` (covered by this route,
        without dot segments: see `unsafe_path`), its query as the client encoded it."""
        rest = path[len(self.path.rstrip("/")):]
        rest = rest if rest.startswith("/") or not rest else "/" + rest
        url = self.upstream.rstrip("/") + quote(rest, safe="/:@!$&'()*+,;=-._~")
        return url + ("?" + raw_query if raw_query else "")


def unsafe_path(path: str) -> str | None:
    """Why the decoded `path` may not be routed (a `.` or `..` segment, a backslash: an
    upstream could resolve it into another route's path), or None."""
    if "\\" in path or any(segment in (".", "..") for segment in path.split("/")):
        return "dot segments and backslashes are refused (they could reach another route)"
    return None


def route_for(routes: Sequence[Route], path: str) -> Route | None:
    """The route with the longest path covering `path`, if any."""
    found = [route for route in routes if route.covers(path)]
    return max(found, key=lambda route: len(route.path.rstrip("/")), default=None)
