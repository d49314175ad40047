"""Start a Maillage service as a real process for a benchmark, and wait until it is ready."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from kit.process import free_port, spawn

__all__ = ["start_service"]


def start_service(service: str, name: str, root: Path, settings: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m <service>`` on a free port with ``MAILLAGE_<SERVICE>_*`` settings; returns (process, base URL)."""
    port = free_port()
    prefix = f"MAILLAGE_{service.upper()}_"
    env = {
        **os.environ,
        f"{prefix}PORT": str(port),
        f"{prefix}DATA_DIR": str(root / name),
        f"{prefix}LOG_LEVEL": "warning",
    }
    env.update({prefix + key: value for key, value in settings.items()})
    log_path = root / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = spawn([sys.executable, "-m", service], env=env, stdout=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{service} {name} did not become ready; see {log_path}")
