"""A throwaway Keycloak server for the test suite and the demo: `kc.sh start-dev` with a fresh data dir, on a free port.

The distribution comes from ``scripts/ensure-keycloak.sh`` (Maven Central, unpacked once into the cache). Each start
gets its own Keycloak home: a temp dir whose ``lib``, ``conf``, ``themes`` and ``providers`` link to the cached
distribution and whose ``data`` (H2 database, transaction logs, ``data/import``) is new, so no state leaks between
runs and parallel runs do not share a database. The realm ``maillage`` is imported from
``infra/keycloak/maillage-realm.json`` (``--import-realm``); see docs/KEYCLOAK.md for its contents and token claims.

Keycloak runs as the current user, root included (it does not refuse to). The bootstrap admin of the ``master`` realm
gets a random password per run (:attr:`KeycloakServer.admin_credentials`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from kit.process import free_port, spawn

__all__ = [
    "API_CLIENT_ID",
    "API_CLIENT_SECRET",
    "PARTNER_CLIENT_ID",
    "PARTNER_CLIENT_SECRET",
    "REALM",
    "TEST_CLIENT_ID",
    "TEST_PASSWORD",
    "AdminCredentials",
    "KeycloakNotInstalledError",
    "KeycloakServer",
    "KeycloakServerError",
    "ensure_keycloak",
    "unverified_claims",
]

REPO = Path(__file__).resolve().parents[3]
ENSURE_SCRIPT = REPO / "scripts" / "ensure-keycloak.sh"
REALM_FILE = REPO / "infra" / "keycloak" / "maillage-realm.json"

# Fixed test values of the realm file (never used outside tests and the local demo).
REALM = "maillage"
TEST_PASSWORD = "maillage-test"
TEST_CLIENT_ID = "maillage-test"
API_CLIENT_ID = "maillage-api"
API_CLIENT_SECRET = "maillage-api-test-secret"
PARTNER_CLIENT_ID = "mobilab-partner"
PARTNER_CLIENT_SECRET = "mobilab-partner-test-secret"
# The realm file reads the client secrets from these variables (`${VAR:default}` placeholders); the harness pins them
# to the test values so that a developer's shell cannot change what the tests expect.
_SECRET_ENV = {
    "MAILLAGE_API_CLIENT_SECRET": API_CLIENT_SECRET,
    "MAILLAGE_MOBILAB_PARTNER_SECRET": PARTNER_CLIENT_SECRET,
}

_INSTALL_HINT = "run `scripts/ensure-keycloak.sh` and read its error"
_DIR_PREFIX = "maillage-kc-"
_OWNER_FILE = "owner.pid"
_DIST_LINKS = ("conf", "lib", "providers", "themes")
# Downloading ~170 MB and the one-off build of the distribution can take minutes on a slow link.
_ENSURE_TIMEOUT = 1800.0
_BIND_ERRORS = ("Address already in use", "Port already bound", "BindException")


class KeycloakServerError(RuntimeError):
    """The throwaway Keycloak server could not be set up, started or used."""


class KeycloakNotInstalledError(KeycloakServerError):
    """The Keycloak distribution could not be obtained (download, unpack or build failed)."""


@dataclass(frozen=True)
class AdminCredentials:
    """The bootstrap administrator of the ``master`` realm (random per run)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"AdminCredentials(username={self.username!r}, password='***')"


def ensure_keycloak(
    *, version: str | None = None, cache_dir: Path | None = None, timeout: float = _ENSURE_TIMEOUT
) -> Path:
    """Run ``scripts/ensure-keycloak.sh`` (download and unpack once) and return the path of ``kc.sh``."""
    env = dict(os.environ)
    if version is not None:
        env["KEYCLOAK_VERSION"] = version
    if cache_dir is not None:
        env["MAILLAGE_CACHE"] = str(cache_dir)
    try:
        result = subprocess.run(  # noqa: S603 - fixed script of the repository
            ["bash", str(ENSURE_SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise KeycloakNotInstalledError(f"{ENSURE_SCRIPT} did not finish within {timeout}s") from exc
    if result.returncode != 0:
        raise KeycloakNotInstalledError(
            f"{ENSURE_SCRIPT} failed with exit code {result.returncode}:\n{result.stderr.strip()}"
        )
    lines = result.stdout.strip().splitlines()
    kc_sh = Path(lines[-1]) if lines else None
    if kc_sh is None or not kc_sh.is_file():
        raise KeycloakNotInstalledError(f"{ENSURE_SCRIPT} did not print the path of kc.sh: {result.stdout!r}")
    return kc_sh


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded WITHOUT checking its signature: for tests and debugging only."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise ValueError("not a JWT") from exc
    if not isinstance(claims, dict):
        raise ValueError("JWT payload is not a JSON object")
    return claims


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_dirs(parent: Path) -> None:
    # A run killed with SIGKILL cannot clean up; Keycloak dies with it (PDEATHSIG on kc.sh, which forwards SIGTERM to
    # java) but its home stays. Every home records the pid of the Python process that made it.
    for path in parent.glob(f"{_DIR_PREFIX}*"):
        try:
            pid = int((path / _OWNER_FILE).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


class KeycloakServer:
    """Keycloak (``kc.sh start-dev``) on 127.0.0.1:<free port> with the realm ``maillage`` imported.

    ``version`` and ``cache_dir`` are passed to ``scripts/ensure-keycloak.sh`` (``KEYCLOAK_VERSION``,
    ``MAILLAGE_CACHE``); by default the script's pinned version and ``~/.cache/maillage``.
    """

    def __init__(
        self,
        *,
        version: str | None = None,
        cache_dir: Path | None = None,
        realm_file: Path = REALM_FILE,
        base_dir: Path | None = None,
        max_heap: str = "768m",
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self._requested_version = version
        self._cache_dir = cache_dir
        self._realm_file = realm_file
        self._base_parent = base_dir
        self._max_heap = max_heap
        self._extra_env = dict(env or {})
        self._kc_sh: Path | None = None
        self._base: Path | None = None
        self._fixed_port = port
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._admin = AdminCredentials("admin", secrets.token_urlsafe(18))
        self._startup_seconds: float | None = None

    # -- properties ------------------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """HTTP port (only valid once started)."""
        if self._port is None:
            raise KeycloakServerError("the server is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.port}"

    @property
    def realm(self) -> str:
        return REALM

    @property
    def issuer(self) -> str:
        """``iss`` of the realm's tokens. Fixed by ``--hostname``, whatever host name a client uses."""
        return f"{self.url}/realms/{REALM}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def admin_credentials(self) -> AdminCredentials:
        """Bootstrap admin of the ``master`` realm (use with the ``admin-cli`` client)."""
        return self._admin

    @property
    def distribution_dir(self) -> Path:
        """The unpacked distribution in the cache, shared by all runs (only valid once started)."""
        return self._require_kc_sh().parent.parent

    @property
    def version(self) -> str:
        """Keycloak version of the distribution in use (only valid once started)."""
        version_file = self.distribution_dir / "version.txt"
        text = version_file.read_text(encoding="utf-8")
        found = re.search(r"\d+(?:\.\d+)+", text)
        if found is None:
            raise KeycloakServerError(f"no version in {version_file}: {text!r}")
        return found.group(0)

    @property
    def base_dir(self) -> Path:
        """Temp directory of this run: the Keycloak home (``home/``) and the log; deleted by :meth:`stop`."""
        return self._require_base()

    @property
    def home_dir(self) -> Path:
        return self._require_base() / "home"

    @property
    def log_file(self) -> Path:
        return self._require_base() / "keycloak.log"

    @property
    def pid(self) -> int | None:
        """Pid of ``kc.sh`` (leader of the process group that holds the JVM), or None when not started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def startup_seconds(self) -> float | None:
        """Seconds from launching kc.sh to the realm answering, for the last start."""
        return self._startup_seconds

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self, *, timeout: float = 180.0) -> KeycloakServer:
        """Obtain the distribution, start Keycloak and return once the realm's discovery document answers."""
        if self.is_running():
            return self
        self._kc_sh = ensure_keycloak(version=self._requested_version, cache_dir=self._cache_dir)
        try:
            self._make_home()
            self._launch(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def prepare(self) -> list[str]:
        """Obtain the distribution and make the Keycloak home, without starting it: the command line to run (with
        :meth:`child_env`) under another supervisor (``maillage up --keycloak``); :meth:`cleanup` afterwards."""
        self._kc_sh = ensure_keycloak(version=self._requested_version, cache_dir=self._cache_dir)
        try:
            self._make_home()
        except BaseException:
            self.stop()
            raise
        self._port = self._fixed_port or free_port(self.host)
        return self._command()

    def child_env(self) -> dict[str, str]:
        """The environment Keycloak runs with (bootstrap admin, heap, realm secrets); holds the admin password."""
        return self._child_env()

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def cleanup(self) -> None:
        """Delete the temp dir of a :meth:`prepare`d server once its process is gone."""
        self.stop()

    def stop(self, *, timeout: float = 20.0) -> None:
        """SIGTERM to the process group (graceful shutdown), SIGKILL after ``timeout``; then delete the temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop_group(proc, timeout=timeout)
        base, self._base = self._base, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
        self._port = None

    def __enter__(self) -> KeycloakServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- tokens ----------------------------------------------------------------------------------------------------

    def token(
        self, username: str, password: str, *, client_id: str = TEST_CLIENT_ID, scope: str = "openid organization:*"
    ) -> str:
        """Access token of a user by password grant (the test client has direct access grants enabled).

        Keep ``organization:*`` in the scope: with plain ``organization`` a member of several organisations gets an
        empty ``organization`` claim.
        """
        return self._token_request(
            {
                "grant_type": "password",
                "client_id": client_id,
                "username": username,
                "password": password,
                "scope": scope,
            }
        )

    def client_token(self, client_id: str, secret: str, *, scope: str = "organization:*") -> str:
        """Access token of a service-account client by client credentials."""
        return self._token_request(
            {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": scope}
        )

    def admin_token(self) -> str:
        """Access token of the bootstrap admin, for the admin REST API (``{url}/admin/realms/...``)."""
        response = httpx.post(
            f"{self.url}/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": self._admin.username,
                "password": self._admin.password,
            },
            timeout=30.0,
        )
        return _access_token(response)

    def _token_request(self, form: dict[str, str]) -> str:
        return _access_token(httpx.post(self.token_endpoint, data=form, timeout=30.0))

    # -- internals -------------------------------------------------------------------------------------------------

    def _require_base(self) -> Path:
        if self._base is None:
            raise KeycloakServerError("the server is not started")
        return self._base

    def _require_kc_sh(self) -> Path:
        if self._kc_sh is None:
            raise KeycloakServerError("the server is not started")
        return self._kc_sh

    def _make_home(self) -> None:
        if not self._realm_file.is_file():
            raise KeycloakServerError(f"realm file {self._realm_file} not found")
        parent = (self._base_parent or Path(tempfile.gettempdir())).resolve()
        parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale_dirs(parent)
        base = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=parent))
        self._base = base
        (base / _OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="ascii")
        dist = self.distribution_dir
        home = base / "home"
        home.mkdir()
        # kc.sh passes -Dkc.home.dir=<dist> and then our arguments, so our -Dkc.home.dir wins: Keycloak reads its
        # build (lib/quarkus), themes and providers through these links and writes only under home/data.
        for name in _DIST_LINKS:
            (home / name).symlink_to(dist / name)
        import_dir = home / "data" / "import"
        import_dir.mkdir(parents=True)
        shutil.copyfile(self._realm_file, import_dir / f"{REALM}-realm.json")

    def _child_env(self) -> dict[str, str]:
        # KC_* variables of the caller (KC_DB, KC_HOSTNAME, KC_FEATURES...) must not reach the throwaway server: some
        # are build options and would make start-dev rebuild the shared distribution.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "KEYCLOAK_", "JAVA_OPTS"))}
        env.update(
            {
                "KC_BOOTSTRAP_ADMIN_USERNAME": self._admin.username,
                "KC_BOOTSTRAP_ADMIN_PASSWORD": self._admin.password,
                # 2 cores: a modest heap, and C1 only (-XX:TieredStopAtLevel=1), measured 8 s instead of 10.5 s to
                # start; a test server never runs long enough for C2 to pay off.
                "JAVA_OPTS_KC_HEAP": f"-Xms64m -Xmx{self._max_heap}",
                "JAVA_OPTS_APPEND": "-XX:TieredStopAtLevel=1",
                **_SECRET_ENV,
            }
        )
        env.update(self._extra_env)
        return env

    def _launch(self, *, timeout: float) -> None:
        # free_port() can race with another process taking the port before Keycloak binds it: retry on a new one.
        last_error: KeycloakServerError | None = None
        for _ in range(1 if self._fixed_port else 3):
            self._port = self._fixed_port or free_port(self.host)
            try:
                self._spawn_and_wait(timeout=timeout)
                return
            except _BindFailed as exc:
                last_error = exc
                # The next attempt imports the realm again into a fresh database.
                shutil.rmtree(self.home_dir / "data" / "h2", ignore_errors=True)
        assert last_error is not None
        raise last_error

    def _command(self) -> list[str]:
        return [
            str(self._require_kc_sh()),
            f"-Dkc.home.dir={self.home_dir}",
            "start-dev",
            f"--http-host={self.host}",
            f"--http-port={self.port}",
            # A fixed issuer, whatever host name clients use (localhost vs 127.0.0.1).
            f"--hostname={self.url}",
            "--import-realm",
        ]

    def _spawn_and_wait(self, *, timeout: float) -> None:
        args = self._command()
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            self._proc = spawn(args, env=self._child_env(), cwd=self.base_dir, stdout=log)
        discovery = self.discovery_url
        deadline = started + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    proc, self._proc = self._proc, None
                    _stop_group(proc, timeout=5.0)
                    tail = self._log_tail()
                    if any(marker in tail for marker in _BIND_ERRORS):
                        raise _BindFailed(f"port {self.port} was taken:\n{tail}")
                    raise KeycloakServerError(f"Keycloak exited with code {code} on port {self.port}:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    response = client.get(discovery)
                    if response.status_code == 200:
                        issuer = response.json().get("issuer")
                        if issuer != self.issuer:
                            raise KeycloakServerError(f"issuer is {issuer!r}, expected {self.issuer!r}")
                        self._startup_seconds = time.monotonic() - started
                        return
                if time.monotonic() >= deadline:
                    raise KeycloakServerError(
                        f"Keycloak did not serve {discovery} within {timeout}s (log {self.log_file}):\n"
                        + self._log_tail()
                    )
                time.sleep(0.25)

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class _BindFailed(KeycloakServerError):
    pass


def _access_token(response: httpx.Response) -> str:
    if response.status_code != 200:
        # Keycloak's error bodies ({"error": "invalid_grant", ...}) hold no secret.
        raise KeycloakServerError(f"token request failed: HTTP {response.status_code} {response.text[:500]}")
    token = response.json().get("access_token")
    if not isinstance(token, str):
        raise KeycloakServerError("token response has no access_token")
    return token


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    # spawn() made kc.sh a session leader: its pid is the process group of kc.sh and of the JVM it runs. SIGTERM to
    # the group is Keycloak's graceful shutdown (kc.sh also forwards it to java); the JVM is not our child, so wait
    # for the whole group to be gone, not only for kc.sh.
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_alive(pgid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    # After SIGKILL the JVM may still be exiting; give it a moment so its port and files are released.
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
