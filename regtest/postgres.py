"""A throwaway PostgreSQL server for tests, the demo and benchmarks (standard library only).

`PostgresServer()` runs `postgres` in a new temporary directory on a free 127.0.0.1 port, with
password (scram) auth over TCP, and is stopped and removed when its owner is done, at exit, on
SIGTERM, and (PR_SET_PDEATHSIG) even when the owner is killed outright. As root it runs as the
unprivileged system user `paychan-pg` (created if missing; initdb refuses root). The programs:
`$PAYCHAN_PG_BIN`, else `pg_ctl` on PATH, else /usr/lib/postgresql/<newest>/bin, else, as root,
Debian's `postgresql` package installed with apt-get (CI runs as root). Without root and without
PostgreSQL the caller gets an error naming the package to install: unlike bitcoind, the server
and initdb exec each other and find their share files by path, so an unpacked tree would need
the machine's own suite and a relocated layout (not done).

    python3 -m regtest.postgres     # starts one, prints its admin DSN, stops on Ctrl-C
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .fetch import FetchError, apt_install, machine_lock
from .node import _die_with_parent
from .ports import free_port

SYSTEM_USER = "paychan-pg"  # who runs the server when we are root
ADMIN = "paychan"  # the cluster's superuser
PACKAGE = "postgresql"  # Debian's metapackage: the distribution's current major version
_live: set[PostgresServer] = set()
_live_lock = threading.Lock()


def find_bin() -> Path:
    """The directory holding initdb and postgres (installing them if need be)."""
    found = _installed()
    if found:
        return found
    if os.geteuid() == 0:
        with machine_lock("apt"):  # one apt-get at a time, whichever test worker asks
            if _installed() is None:
                apt_install((PACKAGE,))
    else:
        raise FetchError(f"no PostgreSQL server programs (initdb, postgres): install Debian's "
                         f"{PACKAGE} package (apt-get install {PACKAGE}, as root), or set "
                         "PAYCHAN_PG_BIN to the directory that holds them")
    found = _installed()
    if not found:
        raise FetchError(f"{PACKAGE} installed, but no initdb found")
    return found


def setup_steps() -> list[str]:
    """What starting a server will change on this machine first, in words (nothing when the
    programs are installed and, as root, the system user exists): for the demo to say before
    it does it."""
    steps = []
    if _installed() is None and os.geteuid() == 0:
        steps.append(f"install Debian's {PACKAGE} package (apt-get update; apt-get install "
                     f"{PACKAGE})")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            steps.append(f"create the system user {SYSTEM_USER} (useradd --system; initdb "
                         "refuses to run as root)")
    return steps


def _installed() -> Path | None:
    given = os.environ.get("PAYCHAN_PG_BIN")
    if given:
        return Path(given)
    on_path = shutil.which("pg_ctl")
    if on_path and Path(on_path).resolve().with_name("initdb").exists():
        return Path(on_path).resolve().parent
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                  key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return bins[-1].parent if bins else None


def _system_user() -> tuple[int, int]:
    """(uid, gid) of the unprivileged user the server runs as when we are root."""
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        with machine_lock("system-user"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(SYSTEM_USER)
                return entry.pw_uid, entry.pw_gid
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                            "/nonexistent", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                           check=True, capture_output=True)
        entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """One PostgreSQL server in its own temporary directory, on its own port."""

    def __init__(self, bin_dir: Path | None = None, *, fsync: bool = True) -> None:
        self.bin_dir = bin_dir or find_bin()
        self.fsync = fsync
        self.dir = Path(tempfile.mkdtemp(prefix="paychan-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.password = secrets.token_hex(16)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._user: tuple[int, int] | None = _system_user() if os.geteuid() == 0 else None
        self._names = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> PostgresServer:
        with _live_lock:
            _live.add(self)
        try:
            self._initdb()
            self._spawn(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _initdb(self) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._user:
            os.chown(self.dir, *self._user)
            os.chown(pwfile, *self._user)
        self.dir.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", ADMIN, "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--locale=C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "--locale=C")
        pwfile.unlink()

    def _spawn(self, timeout: float) -> None:
        self.port = self.port or free_port()
        seen = self.log.stat().st_size if self.log.exists() else 0
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200"]
        with self.log.open("ab") as log:
            uid, gid = self._user or (None, None)
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=_die_with_parent,
                                            user=uid, group=gid,
                                            extra_groups=None if uid is None else [])
        deadline = time.monotonic() + timeout
        while b"ready to accept connections" not in self.log.read_bytes()[seen:]:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def _run(self, program: str, *args: str) -> str:
        uid, gid = self._user or (None, None)
        done = subprocess.run([str(self.bin_dir / program), *args], capture_output=True,
                              text=True, cwd=self.dir, timeout=300, user=uid,
                              group=gid, extra_groups=None if uid is None else [])
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")
        return str(done.stdout)

    def stop(self, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)  # fast shutdown
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def crash(self) -> None:
        """Stop as a crash would: immediate shutdown, no checkpoint (WAL replay at restart)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            process.wait(30)

    def restart(self, timeout: float = 60.0) -> None:
        """Start again on the same port and data (after `stop` or `crash`)."""
        self.stop()
        self._spawn(timeout)

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            with _live_lock:
                _live.discard(self)
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def __enter__(self) -> PostgresServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- databases -------------------------------------------------------------------------

    def dsn(self, database: str = "postgres", user: str = ADMIN,
            password: str | None = None) -> str:
        """A connection string to `database` as `user` (the admin's password by default)."""
        password = self.password if password is None else password
        return (f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"
                "?connect_timeout=10")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run SQL as the admin (psql over the local socket); its output, unaligned."""
        return self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                         "-h", str(self.dir), "-p", str(self.port), "-U", ADMIN,
                         "-d", database, "-c", statement).strip()

    def new_database(self, owner: str = ADMIN) -> str:
        """A new empty database (owned by `owner`); its name."""
        self._names += 1
        name = f"paychan_{os.getpid()}_{self._names}"
        self.sql(f"CREATE DATABASE {name} OWNER {owner}")
        return name

    def new_role(self, password: str, *, login: bool = True) -> str:
        """A new role with `password` and no privileges; its name."""
        self._names += 1
        name = f"role_{os.getpid()}_{self._names}"
        self.sql(f"CREATE ROLE {name} {'LOGIN' if login else ''} PASSWORD '{password}'")
        return name

    def __repr__(self) -> str:
        return f"<PostgresServer 127.0.0.1:{self.port} in {self.dir}>"


def stop_all() -> None:
    """Stop every server this process started (runs at exit and on SIGTERM)."""
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.cleanup()


atexit.register(stop_all)


if __name__ == "__main__":
    with PostgresServer() as running:
        print(running.dsn(), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
