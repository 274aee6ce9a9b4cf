"""The control API's credentials: the cookie file the daemon writes at start (mode 0600, or
0640 for an operators' group) and `paychan` reads, as bitcoin-cli reads bitcoind's `.cookie`.
Kept apart from the server so the command line loads no HTTP server to read it."""

from __future__ import annotations

import base64
import binascii
import contextlib
import grp
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from bitcoind_paychan.errors import ConfigError

COOKIE_USER = "__cookie__"


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"control.cookie_group: no group named {group!r} on this machine; "
                          "create it (groupadd) or name an existing one") from None


def _set_owner_group(fd: int, gid: int, group: str | None) -> None:
    if gid == -1:
        return
    try:
        os.fchown(fd, -1, gid)
    except PermissionError:
        raise ConfigError(f"control.cookie_group: cannot give the control cookie to group "
                          f"{group!r}: the daemon's user is not a member of it "
                          f"(usermod -aG {group} USER)") from None


@dataclass(frozen=True)
class ControlCookie:
    """The control API's credentials, kept in a file only the daemon's user can read."""

    user: str
    password: str

    @classmethod
    def create(cls, path: Path | str, mode: int = 0o600,
               group: str | None = None) -> ControlCookie:
        """A fresh random cookie, written atomically to `path` with `mode` (0600, or 0640 for
        an operators' group: `group`, else the daemon's own group)."""
        path = Path(path)
        cookie = cls(COOKIE_USER, secrets.token_hex(32))
        gid = -1 if group is None else _group_id(group)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _set_owner_group(fd, gid, group)
                os.fchmod(fd, mode)  # whatever the umask
                with os.fdopen(fd, "w", encoding="ascii") as file:
                    file.write(f"{cookie.user}:{cookie.password}")
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    temporary.unlink()
                raise
        except OSError as exc:
            raise ConfigError(f"cannot write the control cookie {path}: {exc.strerror or exc}; "
                              "check control.cookie_file and its directory's permissions"
                              ) from exc
        return cookie

    @classmethod
    def read(cls, path: Path | str) -> ControlCookie:
        """The cookie in `path`; ConfigError if it is missing, unreadable or malformed."""
        path = Path(path)
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise ConfigError(f"no control cookie at {path}: is `paychan daemon` running? "
                              "(it writes the cookie when it starts)") from None
        except PermissionError:
            raise ConfigError(f"cannot read the control cookie {path}: permission denied; "
                              "run as the daemon's user") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the control cookie {path}: {exc}") from exc
        user, colon, password = text.partition(":")
        if not colon or not user or not password:
            raise ConfigError(f"the control cookie {path} is malformed (expected user:password)")
        return cls(user, password)

    @staticmethod
    def delete(path: Path | str) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()

    def derive(self, purpose: str) -> str:
        """A secret for `purpose` (the dashboard's session and login link), derived from the
        cookie: valid exactly while this cookie is."""
        return hmac.new(self.password.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    def authorization(self) -> str:
        """The value of the HTTP Authorization header that carries this cookie."""
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"

    def accepts(self, authorization: str | None) -> bool:
        """Whether an Authorization header value carries this cookie (constant time)."""
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, f"{self.user}:{self.password}".encode())
