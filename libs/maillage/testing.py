"""Run `maillage up` as a real subprocess in tests, and watch its process tree (Linux /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from maillage.federation import Federation, service_instances

__all__ = ["UpProcess", "launch_up"]


@dataclass
class UpProcess:
    """A running `maillage up` and what it wrote."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    output_file: Path

    def output(self) -> str:
        return self.output_file.read_text(encoding="utf-8", errors="replace")

    def federation(self) -> Federation:
        return Federation.model_validate_json((self.data_dir / "federation.json").read_text(encoding="utf-8"))

    def wait_ready(self, timeout: float = 60.0) -> dict[str, dict[str, object]]:
        """Poll every URL of federation.json until each /readyz answers 200; the answers by instance name."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"maillage up exited early:\n{self.output()}"
                if (self.data_dir / "federation.json").exists():
                    answers = {}
                    for instance in service_instances(self.federation()):
                        try:
                            response = client.get(f"{instance.url}/readyz")
                        except httpx.HTTPError:
                            break
                        if response.status_code != 200:
                            break
                        answers[instance.name] = response.json()
                    else:
                        return answers
                time.sleep(0.2)
        raise AssertionError(f"federation not ready within {timeout} s:\n{self.output()}")

    def descendants(self) -> set[int]:
        """Pids of every live process below `maillage up`."""
        return _descendants(self.proc.pid)

    def processes_using_data_dir(self) -> set[int]:
        """Live processes whose command line or environment mention the data dir: ours, whoever spawned them."""
        marker = str(self.data_dir).encode()
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.proc.pid:
                continue
            try:
                seen = marker in (entry / "cmdline").read_bytes() or marker in (entry / "environ").read_bytes()
            except OSError:
                continue
            if seen and _is_alive(int(entry.name)):
                found.add(int(entry.name))
        return found

    @staticmethod
    def survivors(pids: set[int]) -> set[int]:
        """Those of ``pids`` still alive (zombies count as gone: nothing runs any more)."""
        return {pid for pid in pids if _is_alive(pid)}

    def interrupt(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill_tree(self) -> None:
        """SIGKILL `maillage up` and everything below it (test clean-up)."""
        if self.proc.poll() is None:
            pids = self.descendants()
            self.proc.kill()
            self.proc.wait()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def launch_up(
    args: Sequence[str], *, data_dir: Path, output_file: Path, env: Mapping[str, str] | None = None
) -> UpProcess:
    """Start ``python -m maillage up --data-dir <data_dir> <args>`` with its output in ``output_file``."""
    with open(output_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maillage", "up", "--data-dir", str(data_dir), *args],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return UpProcess(proc=proc, data_dir=data_dir, output_file=output_file)


def _is_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and _is_alive(child):
                found.add(child)
                stack.append(child)
    return found
