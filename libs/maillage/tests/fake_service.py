"""A stand-in for a Maillage service: answers /healthz and /readyz on the port `maillage up` gives it.

Run as ``python fake_service.py`` with ``MAILLAGE_SERVICE=<name>`` and the service's ``MAILLAGE_<NAME>_*`` variables.
/readyz echoes the pid and the service's settings, so tests can check the environment contract and kill the process.
``FAKE_SERVICE_NEVER_READY=1`` makes /readyz answer 503 degraded; ``FAKE_SERVICE_IGNORE_SIGTERM=1`` makes the process
deaf to SIGTERM, as a hung service would be.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = os.environ["MAILLAGE_SERVICE"]
PREFIX = f"MAILLAGE_{SERVICE.upper()}_"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path not in ("/healthz", "/readyz"):
            self.send_error(404)
            return
        settings = {key.removeprefix(PREFIX): value for key, value in os.environ.items() if key.startswith(PREFIX)}
        ready = self.path == "/healthz" or os.environ.get("FAKE_SERVICE_NEVER_READY") != "1"
        status = "ok" if ready else "degraded"
        body = json.dumps({"status": status, "service": SERVICE, "pid": os.getpid(), "settings": settings}).encode()
        self.send_response(200 if ready else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{SERVICE}: {format % args}\n")


def main() -> None:
    server = ThreadingHTTPServer((os.environ[PREFIX + "HOST"], int(os.environ[PREFIX + "PORT"])), Handler)
    if os.environ.get("FAKE_SERVICE_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # SIGTERM ends the process through SystemExit, as a real service's graceful shutdown would.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{SERVICE} listening on {server.server_address}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
