"""Supervised child processes of `maillage up`: start in dependency order, wait for readiness, restart, stop.

Everything is spawned from the main thread on purpose: the kernel's parent-death signal (see :mod:`kit.process`)
fires when the spawning *thread* ends, so a child started from a worker thread would die with that thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from kit.auth.assertions import public_key_of
from kit.nats_server import NatsServer, NatsServerError
from kit.process import spawn
from maillage.bootstrap import DataDir
from maillage.federation import HOST, NODE_SERVICES, Federation, ServiceInstance, service_instances

__all__ = [
    "SERVICE_COMMAND_OVERRIDE_ENV",
    "RestartBackoff",
    "ServiceSpec",
    "Supervisor",
    "service_command",
    "service_environment",
    "service_specs",
]

SERVICE_COMMAND_OVERRIDE_ENV = "MAILLAGE_SERVICE_COMMAND_OVERRIDE"
POLL_INTERVAL = 0.2
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
# A child that stayed up this long is healthy again: its next crash restarts after BACKOFF_START, not the last delay.
STABLE_AFTER = 60.0
STOP_GRACE = 10.0
LOG_TAIL_LINES = 20


def service_command(service: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """``python -m <service>`` in this interpreter, or the JSON list in ``$MAILLAGE_SERVICE_COMMAND_OVERRIDE``."""
    override = environ.get(SERVICE_COMMAND_OVERRIDE_ENV)
    if not override:
        return [sys.executable, "-m", service]
    command = json.loads(override)
    if not isinstance(command, list) or not command or not all(isinstance(arg, str) for arg in command):
        raise ValueError(f"{SERVICE_COMMAND_OVERRIDE_ENV} must be a non-empty JSON list of strings")
    return command


def service_environment(
    instance: ServiceInstance,
    *,
    federation: Federation,
    data_dir: DataDir,
    base_env: Mapping[str, str],
    service_credential: str | None = None,
    oidc_issuer: str | None = None,
    assertion_key: str | None = None,
) -> dict[str, str]:
    """The environment of one service: ``base_env`` plus its ``MAILLAGE_<SERVICE>_*`` settings.

    ``oidc_issuer`` (the Keycloak realm of ``maillage up --keycloak``) makes every service accept its tokens;
    ``assertion_key`` makes the gateway sign principal assertions and every other service accept them.
    """
    settings = {
        "HOST": HOST,
        "PORT": str(instance.port),
        "DATA_DIR": str(data_dir.service_dir(instance.name)),
        "NATS_URL": federation.nats_url,
        "NODE_ID": instance.node_id,
        "KEYRING_FILE": str(data_dir.keyring_file),
        "ENVIRONMENT": "development",
        "PUBLIC_URL": instance.url,
    }
    if instance.service in NODE_SERVICES:
        settings["TERRITORIES"] = ",".join(instance.territories)
    if instance.service == "catalog":
        node = next(n for n in federation.nodes if n.id == instance.node_id)
        settings["EXCHANGE_URL"] = node.urls.exchange
        settings["SEED_DEMO"] = "true"
        settings["REGISTRY_URL"] = federation.registry_url
    if instance.service == "exchange":
        settings["REGISTRY_URL"] = federation.registry_url
        if service_credential is not None:
            settings["REGISTRY_KEY"] = service_credential
    if instance.service == "registry":
        settings["FEDERATION_FILE"] = str(data_dir.federation_file)
    if instance.service == "gateway":
        settings["REGISTRY_URL"] = federation.registry_url
        if service_credential is not None:
            settings["REGISTRY_KEY"] = service_credential  # federated API keys are verified at the gateway
    if oidc_issuer is not None:
        settings["OIDC_ISSUER"] = oidc_issuer
    if assertion_key is not None:
        if instance.service == "gateway":
            settings["ASSERTION_SIGNING_KEY"] = assertion_key
        else:
            settings["ASSERTION_PUBLIC_KEYS"] = public_key_of(assertion_key)
    prefix = f"MAILLAGE_{instance.service.upper()}_"
    env = dict(base_env)
    env.update({prefix + key: value for key, value in settings.items()})
    # Unbuffered output, so the log tail shown when a service fails holds its last words.
    env.setdefault("PYTHONUNBUFFERED", "1")
    if SERVICE_COMMAND_OVERRIDE_ENV in env:
        env["MAILLAGE_SERVICE"] = instance.service
    return env


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service instance and know it is ready."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_file: Path
    ready_url: str
    wave: int  # started once every earlier wave is ready: registry, then node services, then gateway


def service_specs(
    federation: Federation,
    data_dir: DataDir,
    base_env: Mapping[str, str] = os.environ,
    service_credential: str | None = None,
    oidc_issuer: str | None = None,
    assertion_key: str | None = None,
) -> list[ServiceSpec]:
    """The spec of every service instance of ``federation``."""
    waves = {"registry": 0, "catalog": 1, "exchange": 1, "consent": 1, "gateway": 2}
    return [
        ServiceSpec(
            name=instance.name,
            args=service_command(instance.service, base_env),
            env=service_environment(
                instance,
                federation=federation,
                data_dir=data_dir,
                base_env=base_env,
                service_credential=service_credential,
                oidc_issuer=oidc_issuer,
                assertion_key=assertion_key,
            ),
            log_file=data_dir.log_file(instance.name),
            ready_url=f"{instance.url}/readyz",
            wave=waves[instance.service],
        )
        for instance in service_instances(federation)
    ]


@dataclass
class RestartBackoff:
    """Exponential backoff between restarts of one process: 1 s, 2 s, 4 s ... 30 s."""

    delay: float = BACKOFF_START
    due_at: float | None = None
    count: int = 0

    def schedule(self, now: float) -> float:
        """Set the next restart time and return its delay."""
        delay = self.delay
        self.due_at = now + delay
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return delay

    def is_due(self, now: float) -> bool:
        return self.due_at is not None and now >= self.due_at


@dataclass
class _ServiceProcess:
    spec: ServiceSpec
    proc: subprocess.Popen[bytes] | None = None
    state: str = "waiting"  # waiting, starting, ready, failed, stopped
    detail: str = ""
    started_at: float = 0.0
    deadline: float = 0.0
    awaiting_ready: bool = False
    next_probe: float = 0.0
    restarts: RestartBackoff = field(default_factory=RestartBackoff)

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log_file, "ab") as log:
            log.write(
                f"--- maillage: starting {self.name} at {datetime.now().isoformat(timespec='seconds')}\n".encode()
            )
            log.flush()
            self.proc = spawn(self.spec.args, env=self.spec.env, stdout=log, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, signum: int) -> None:
        """Signal the child's whole session, so helpers it forked (e.g. server workers) go with it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            # Not yet (or no longer) a group leader: the child may be between fork and setsid.
            if self.proc.poll() is None:
                self.proc.send_signal(signum)
        except PermissionError:
            pass

    def reap(self) -> None:
        """Wait for the exited child and kill anything left in its process group."""
        if self.proc is None:
            return
        self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Supervisor:
    """Runs nats-server and the services: start, wait for readiness, restart on exit, stop on SIGINT/SIGTERM."""

    def __init__(
        self,
        services: Sequence[ServiceSpec],
        nats: NatsServer,
        console: Console,
        *,
        ready_timeout: float = 60.0,
        data_dir: DataDir,
    ) -> None:
        self.services = [_ServiceProcess(spec) for spec in services]
        self.nats = nats
        self.console = console
        self.ready_timeout = ready_timeout
        self.data_dir = data_dir
        self._nats_state = "waiting"
        self._nats_detail = ""
        self._nats_restarts = RestartBackoff()
        self._nats_up_since = 0.0
        self._stop_signal: int | None = None
        self._force = False
        self._shutting_down = False
        self._failure: tuple[str, str, Path] | None = None
        self._http = httpx.Client(timeout=1.0, trust_env=False)
        self._spinners: dict[str, Spinner] = {}

    def run(self, on_ready: Callable[[], None]) -> int:
        """Start everything, call ``on_ready``, supervise until a stop signal; 0 on a requested stop, else 1."""
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        started_at = time.monotonic()
        try:
            ready = self._start_all()
            if self._failure is not None:
                self._report_failure()
            if ready and self._stop_signal is None:
                on_ready()
                self._supervise()
        finally:
            self._shutting_down = True
            summary = self._shutdown()
            self._http.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self.console.print(summary + f" Up for {_duration(time.monotonic() - started_at)}.", soft_wrap=True)
        return 1 if self._failure is not None else 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._shutting_down or self._stop_signal is not None:
            # A second Ctrl-C: stop waiting for graceful exits, but still kill and reap everything.
            self._force = True
            return
        self._stop_signal = signum

    # -- start ---------------------------------------------------------------------------------------------------

    def _start_all(self) -> bool:
        try:
            with Live(_ProgressView(self), console=self.console, refresh_per_second=8, transient=False):
                if not self._start_nats():
                    return False
                for wave in sorted({service.spec.wave for service in self.services}):
                    if not self._start_wave([service for service in self.services if service.spec.wave == wave]):
                        return False
            return True
        finally:
            if not self.console.is_terminal:
                # Off a terminal, Live prints its last frame without a final newline.
                self.console.line()

    def _start_nats(self) -> bool:
        self._nats_state = "starting"
        began = time.monotonic()
        try:
            self.nats.start(timeout=self.ready_timeout)
        except NatsServerError as exc:
            self._nats_state = "failed"
            self._failure = ("nats", str(exc), self.data_dir.log_file("nats"))
            return False
        self._nats_state = "ready"
        self._nats_detail = f"{self.nats.url}  ready in {time.monotonic() - began:.1f} s"
        self._nats_up_since = time.monotonic()
        return True

    def _start_wave(self, wave: list[_ServiceProcess]) -> bool:
        if self._stop_signal is not None:
            return False
        for service in wave:
            try:
                service.start()
            except OSError as exc:
                return self._fail(service, f"could not be started: {exc}")
            service.state = "starting"
            service.deadline = service.started_at + self.ready_timeout
        pending = list(wave)
        while pending:
            if self._stop_signal is not None:
                return False
            for service in list(pending):
                code = service.proc.poll() if service.proc is not None else None
                if code is not None:
                    return self._fail(service, f"exited {_describe_exit(code)} before it was ready")
                ready, answer = self._probe(service.spec.ready_url)
                if ready:
                    service.state = "ready"
                    service.detail = f"ready in {time.monotonic() - service.started_at:.1f} s"
                    pending.remove(service)
                elif time.monotonic() > service.deadline:
                    return self._fail(service, f"not ready after {self.ready_timeout:g} s (last /readyz: {answer})")
                else:
                    service.detail = answer
            if pending:
                time.sleep(POLL_INTERVAL)
        return True

    def _fail(self, service: _ServiceProcess, reason: str) -> bool:
        service.state = "failed"
        service.detail = reason
        self._failure = (service.name, reason, service.spec.log_file)
        return False

    def _report_failure(self) -> None:
        assert self._failure is not None
        name, reason, log_file = self._failure
        self.console.print(Text(f"✘ {name} {reason}", style="bold red"), soft_wrap=True)
        self.console.print(
            Panel(
                Text(_tail(log_file, LOG_TAIL_LINES)), title=f"last {LOG_TAIL_LINES} lines of {log_file}", expand=False
            )
        )
        self.console.print("Stopping everything.")

    def _probe(self, url: str) -> tuple[bool, str]:
        try:
            response = self._http.get(url)
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        if response.status_code == 200:
            return True, "200"
        return False, f"{response.status_code} {response.text[:120].strip()}"

    # -- supervise -----------------------------------------------------------------------------------------------

    def _supervise(self) -> None:
        self.console.print("[dim]Supervising: a process that exits is restarted. Ctrl-C stops everything.[/]")
        while self._stop_signal is None:
            now = time.monotonic()
            self._watch_nats(now)
            for service in self.services:
                self._watch_service(service, now)
            time.sleep(POLL_INTERVAL)

    def _watch_service(self, service: _ServiceProcess, now: float) -> None:
        restarts = service.restarts
        if service.proc is not None and service.proc.poll() is not None:
            code = service.proc.returncode
            service.reap()
            service.proc = None
            delay = restarts.schedule(now)
            self._event(f"[yellow]{service.name} exited {_describe_exit(code)}; restarting in {delay:g} s[/]")
        elif service.proc is None and restarts.is_due(now):
            restarts.due_at = None
            restarts.count += 1
            try:
                service.start()
            except OSError as exc:
                delay = restarts.schedule(now)
                self._event(f"[red]{service.name} could not be started ({exc}); next try in {delay:g} s[/]")
                return
            service.awaiting_ready = True
            assert service.proc is not None
            self._event(f"{service.name} restarted (pid {service.proc.pid})")
        elif service.awaiting_ready and now >= service.next_probe:
            service.next_probe = now + 1.0
            if self._probe(service.spec.ready_url)[0]:
                service.awaiting_ready = False
                self._event(f"[green]{service.name} ready again[/]")
        elif service.proc is not None and now - service.started_at > STABLE_AFTER:
            restarts.delay = BACKOFF_START

    def _watch_nats(self, now: float) -> None:
        restarts = self._nats_restarts
        if restarts.due_at is None and not self.nats.is_running():
            delay = restarts.schedule(now)
            self._event(f"[yellow]nats-server exited; restarting in {delay:g} s (same JetStream store)[/]")
        elif restarts.is_due(now):
            restarts.due_at = None
            restarts.count += 1
            try:
                self.nats.start()
            except NatsServerError as exc:
                delay = restarts.schedule(time.monotonic())
                self._event(f"[red]nats-server did not restart ({exc}); next try in {delay:g} s[/]")
                return
            self._nats_up_since = time.monotonic()
            self._event(f"[green]nats-server restarted on {self.nats.url} (pid {self.nats.pid})[/]")
        elif self.nats.is_running() and now - self._nats_up_since > STABLE_AFTER:
            restarts.delay = BACKOFF_START

    def _event(self, message: str) -> None:
        self.console.print(f"[dim]{datetime.now():%H:%M:%S}[/] {message}", soft_wrap=True)

    # -- stop ----------------------------------------------------------------------------------------------------

    def _shutdown(self) -> str:
        """Services first (they flush to NATS on their way out), then nats-server. Returns a one-line summary."""
        began = time.monotonic()
        running = [service for service in self.services if service.alive()]
        for service in running:
            service.signal_group(signal.SIGTERM)
        deadline = began + STOP_GRACE
        while any(service.alive() for service in running) and time.monotonic() < deadline and not self._force:
            time.sleep(0.05)
        killed = [service.name for service in running if service.alive()]
        for service in running:
            if service.alive():
                service.signal_group(signal.SIGKILL)
        for service in self.services:
            service.reap()
            if service.state == "ready":
                service.state = "stopped"
        nats_was_running = self.nats.is_running()
        if self._force:
            self.nats.kill()
        self.nats.stop()
        restarts = sum(service.restarts.count for service in self.services) + self._nats_restarts.count
        parts = [f"Stopped {len(running)} service(s)" + (" and nats-server" if nats_was_running else "")]
        parts.append(f"in {time.monotonic() - began:.1f} s")
        if killed:
            parts.append(f"(killed after {STOP_GRACE:g} s or a second Ctrl-C: {', '.join(killed)})")
        if restarts:
            parts.append(f"after {restarts} restart(s)")
        return " ".join(parts) + f". State kept in {self.data_dir.root}; `maillage up` resumes from it."


class _ProgressView:
    """One line per process while starting: spinner, then ready (or why not)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def _icon(self, name: str, state: str) -> RenderableType:
        if state == "starting":
            return self.supervisor._spinners.setdefault(name, Spinner("dots", style="cyan"))
        return {"ready": "[green]✔[/]", "failed": "[red]✘[/]", "stopped": "[dim]■[/]"}.get(state, "[dim]·[/]")

    def __rich__(self) -> Table:
        sup = self.supervisor
        table = Table.grid(padding=(0, 1))
        table.add_column(width=2)
        table.add_column(style="bold", no_wrap=True, min_width=max(len(service.name) for service in sup.services))
        table.add_column(overflow="ellipsis", no_wrap=True)
        table.add_row(self._icon("nats", sup._nats_state), "nats", sup._nats_detail or sup._nats_state)
        for service in sup.services:
            url = service.spec.ready_url.removesuffix("/readyz")
            detail = service.state if service.state == "waiting" else f"{url}  {service.detail}"
            # Plain Text: a /readyz answer is JSON, whose brackets must not be read as rich markup.
            table.add_row(self._icon(service.name, service.state), service.name, Text(detail))
        return table


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"on {signal.Signals(-code).name}"
        except ValueError:
            return f"on signal {-code}"
    return f"with code {code}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 64 * 1024))
            text = log.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
