"""A throwaway PostgreSQL server for the test suite: initdb into a temp dir, run as a child process, delete on stop.

It uses the server binaries installed by the OS package (``scripts/ensure-postgres.sh`` installs them on Debian).
As root it runs initdb and postgres as the ``postgres`` system user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from kit.process import free_port, spawn

__all__ = [
    "DATABASE_NAME_RE",
    "PostgresNotInstalledError",
    "PostgresServer",
    "PostgresServerError",
    "default_base_dir",
    "find_bindir",
]

DATABASE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")

_INSTALL_HINT = "run `scripts/ensure-postgres.sh` (or `make test`, which runs it)"
_DIR_PREFIX = "maillage-pg-"
_OWNER_FILE = "owner.pid"
# A Unix socket path must fit in sockaddr_un.sun_path (108 bytes with the NUL); postgres adds "/.s.PGSQL.<port>".
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")
_PR_SET_PDEATHSIG = 1
_MIN_SHM_BYTES = 1 << 30
_SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    # Durability is worthless for a database deleted at the end of the run, and skipping it makes DDL much faster.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    # Tests must not depend on the machine's time zone.
    "timezone": "UTC",
}


class PostgresServerError(RuntimeError):
    """The throwaway PostgreSQL server could not be set up, started or used."""


class PostgresNotInstalledError(PostgresServerError):
    """No PostgreSQL server binaries were found on this machine."""


def _version_key(path: Path) -> tuple[int, ...]:
    # Directory names are major versions ("15", "16", or "9.6" for old ones): compare them as numbers, not strings.
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


def find_bindir() -> Path:
    """Directory with ``initdb`` and ``postgres``: newest /usr/lib/postgresql/*/bin, else ``pg_config --bindir``."""
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_server(p)]
    if candidates:
        return max(candidates, key=_version_key)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(  # noqa: S603 - fixed arguments
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out and _has_server(Path(out)):
                return Path(out)
    raise PostgresNotInstalledError(f"PostgreSQL server binaries (initdb, postgres) not found: {_INSTALL_HINT}")


def default_base_dir() -> Path:
    """Where clusters go when no ``base_dir`` is given: /dev/shm if it is roomy, else the temp dir."""
    # Even with fsync=off, a cluster on a virtual disk is slow: measured ~80 ms per CREATE DATABASE and 0.6 s to
    # start, against ~9 ms and 0.33 s in RAM. Docker's default /dev/shm is only 64 MB, too small, hence the check.
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize >= _MIN_SHM_BYTES and os.access(shm, os.W_OK | os.X_OK):
            return shm
    return Path(tempfile.gettempdir())


def _has_server(bindir: Path) -> bool:
    return (bindir / "initdb").is_file() and (bindir / "postgres").is_file()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_dirs(parent: Path) -> None:
    # A test run killed with SIGKILL cannot clean up; its server dies with it (PDEATHSIG) but its data dir stays.
    # Every dir records the pid of the Python process that made it, so a dir whose owner is gone is safe to delete.
    for path in parent.glob(f"{_DIR_PREFIX}*"):
        owner = path / _OWNER_FILE
        try:
            pid = int(owner.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int
    name: str
    home: str


def _run_as() -> _RunAs | None:
    """The user to run PostgreSQL as when we are root (it refuses to run as root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresServerError(
            f"running as root, but there is no `postgres` system user to run PostgreSQL as: {_INSTALL_HINT}"
        ) from None
    return _RunAs(uid=entry.pw_uid, gid=entry.pw_gid, name=entry.pw_name, home=entry.pw_dir)


def _drop_privileges(run_as: _RunAs, parent_pid: int) -> None:
    os.setgroups([])
    os.setgid(run_as.gid)
    os.setuid(run_as.uid)
    # The kernel clears PR_SET_PDEATHSIG when the uid changes, which undoes what kit.process.spawn set up: set it
    # again, so postgres still dies with us. SIGINT is PostgreSQL's fast shutdown (aborts open transactions).
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
    # If the parent died before prctl, no signal will ever come: exit now instead of living on as an orphan.
    if os.getppid() != parent_pid:
        os._exit(1)


def _check_traversable(path: Path, run_as: _RunAs) -> None:
    # initdb runs as another user, who must be able to walk down to the data dir (e.g. TMPDIR=/root/tmp would fail).
    for ancestor in [path, *path.parents]:
        st = ancestor.stat()
        if st.st_uid == run_as.uid:
            continue
        if not st.st_mode & 0o001:
            raise PostgresServerError(
                f"{ancestor} is not searchable by the `{run_as.name}` user that runs PostgreSQL; "
                "pass base_dir= a directory under /tmp, or set TMPDIR"
            )


class PostgresServer:
    """A private PostgreSQL cluster on 127.0.0.1:<free port>, created on :meth:`start` and deleted on :meth:`stop`."""

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        base_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._bindir = bindir
        self._base_parent = base_dir
        self._settings = {**_SERVER_SETTINGS, **(settings or {})}
        self._run_as: _RunAs | None = None
        self._base: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._locale: str | None = None

    # -- properties ------------------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """TCP host the server listens on."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """TCP port the server listens on (only valid once started)."""
        if self._port is None:
            raise PostgresServerError("the server is not started")
        return self._port

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` maintenance database, as the ``postgres`` superuser."""
        return self.url_for("postgres")

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self._require_base() / "data"

    @property
    def socket_dir(self) -> Path:
        """The private directory holding the server's Unix socket."""
        return self._require_base() / "sock"

    @property
    def base_dir(self) -> Path:
        """Temp directory holding data, socket and log; deleted by :meth:`stop`."""
        return self._require_base()

    @property
    def log_file(self) -> Path:
        """The server's stderr log."""
        return self._require_base() / "postgres.log"

    @property
    def pid(self) -> int | None:
        """Pid of the postmaster, or None when not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def locale(self) -> str | None:
        """Locale the cluster was initialised with (C.UTF-8, or C where that is missing)."""
        return self._locale

    def url_for(self, name: str) -> str:
        """SQLAlchemy URL of database ``name`` on this server."""
        _validate_name(name)
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{name}"

    def is_running(self) -> bool:
        """True while the postmaster process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> PostgresServer:
        """initdb a fresh cluster and start postgres; returns once it accepts connections."""
        if self.is_running():
            return self
        bindir = self._bindir or find_bindir()
        self._run_as = _run_as()
        try:
            self._make_dirs()
            self._initdb(bindir)
            self._launch(bindir, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, *, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL after ``timeout`` seconds, then delete the temp directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop_postmaster(proc, timeout=timeout)
        base, self._base = self._base, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        self._port = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its SQLAlchemy URL."""
        _validate_name(name)
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (if it exists), disconnecting its clients first."""
        _validate_name(name)
        with self._admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def list_databases(self) -> list[str]:
        """Names of the non-template databases on this server."""
        with self._admin() as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname").fetchall()
        return [str(r[0]) for r in rows]

    # -- internals -------------------------------------------------------------------------------------------------

    def _require_base(self) -> Path:
        if self._base is None:
            raise PostgresServerError("the server is not started")
        return self._base

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        # CREATE/DROP DATABASE cannot run inside a transaction block, hence autocommit.
        with psycopg.connect(self._conninfo(), autocommit=True) as conn:
            yield conn

    def _conninfo(self, connect_timeout: int = 10) -> str:
        return make_conninfo(
            host=self.host, port=self.port, user="postgres", dbname="postgres", connect_timeout=connect_timeout
        )

    def _make_dirs(self) -> None:
        parent = (self._base_parent or default_base_dir()).resolve()
        _sweep_stale_dirs(parent)
        base = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent))
        self._base = base
        (base / _OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="ascii")
        if len(str(base / "sock")) > _MAX_SOCKET_DIR_LEN:
            raise PostgresServerError(f"{base} is too long a path for a Unix socket; pass a shorter base_dir")
        (base / "sock").mkdir(mode=0o700)
        if self._run_as is not None:
            # initdb creates data/ itself; the postgres user only needs to own the base and the socket dir.
            os.chown(base, self._run_as.uid, self._run_as.gid)
            os.chown(base / "sock", self._run_as.uid, self._run_as.gid)
            _check_traversable(base, self._run_as)

    def _child_env(self) -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, PGHOST...) from the caller's shell must not leak into the private cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8" if self._locale != "C" else "C"
        env["TZ"] = "UTC"
        if self._run_as is not None:
            env["HOME"] = self._run_as.home
            env["USER"] = env["LOGNAME"] = self._run_as.name
        return env

    def _initdb(self, bindir: Path) -> None:
        base = self._require_base()
        errors: list[str] = []
        # C.UTF-8 gives UTF-8-aware upper()/lower() (accented French names) with byte-order sorting; fall back to C
        # on systems that lack that locale.
        for locale in ("C.UTF-8", "C"):
            self._locale = locale
            data = base / "data"
            shutil.rmtree(data, ignore_errors=True)
            args = [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                f"--locale={locale}",
                # Skip the final fsync of the new cluster: it is most of initdb's time and the data is disposable.
                "--no-sync",
                "--no-instructions",
            ]
            result = subprocess.run(  # noqa: S603 - arguments are built here
                args,
                cwd=base,
                env=self._child_env(),
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
                user=self._run_as.uid if self._run_as else None,
                group=self._run_as.gid if self._run_as else None,
                extra_groups=[] if self._run_as else None,
            )
            if result.returncode == 0:
                return
            errors.append(f"--locale={locale}: exit {result.returncode}\n{(result.stderr or result.stdout)[-2000:]}")
        raise PostgresServerError("initdb failed:\n" + "\n".join(errors))

    def _launch(self, bindir: Path, *, timeout: float) -> None:
        # free_port() can race with another process grabbing the port before postgres binds it: retry on a new one.
        last_error: PostgresServerError | None = None
        for _ in range(3):
            self._port = free_port(self.host)
            try:
                self._spawn_and_wait(bindir, timeout=timeout)
                return
            except _BindFailed as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self, bindir: Path, *, timeout: float) -> None:
        args = [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-k", str(self.socket_dir)]
        for key, value in self._settings.items():
            args += ["-c", f"{key}={value}"]
        run_as = self._run_as
        parent_pid = os.getpid()
        preexec = (lambda: _drop_privileges(run_as, parent_pid)) if run_as is not None else None
        with open(self.log_file, "ab") as log:
            self._proc = spawn(args, env=self._child_env(), cwd=self.base_dir, stdout=log, preexec=preexec)
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                tail = self._log_tail()
                if "could not bind" in tail or "Address already in use" in tail:
                    raise _BindFailed(f"port {self.port} was taken:\n{tail}")
                raise PostgresServerError(f"postgres exited with code {code} on port {self.port}:\n{tail}")
            try:
                with psycopg.connect(self._conninfo(connect_timeout=1)):
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() >= deadline:
                raise PostgresServerError(
                    f"postgres did not accept connections on {self.host}:{self.port} within {timeout}s:\n"
                    + self._log_tail()
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class _BindFailed(PostgresServerError):
    pass


def _validate_name(name: str) -> None:
    if not DATABASE_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid database name {name!r}: must match {DATABASE_NAME_RE.pattern}")


def _stop_postmaster(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    if proc.poll() is not None:
        return
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, disconnect clients, exit. SIGTERM would be
    # "smart" shutdown, which waits for every client to disconnect on its own.
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    # spawn() made the postmaster a session leader, so its pid is its process group: kill the backends with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(timeout=5)
