"""A pool of sandboxed DuckDB worker processes that run already-checked SQL on a territory's read-only dataset files.

The policy engine is the first line of defence; this pool is the second, and assumes the SQL may still be hostile:

- each worker is an OS process (``exchange/sandbox_worker.py``) with RLIMIT_AS, no core dumps, no file writes, no new
  privileges, a minimal environment, tied to this process by PDEATHSIG and by its socket;
- DuckDB is locked down at connect (no extension install/autoload, no external access, configuration locked), the
  datasets attached READ_ONLY, and only a lone SELECT statement is run;
- a wall clock around every query kills the worker (SIGKILL) and replaces it; a worker that dies is replaced, so the
  pool keeps ``size`` live workers and a runaway query never holds up more than its own worker;
- replies are a JSON header and Arrow IPC bytes checked here (sizes, fields); error messages are sanitised (first line
  only, no paths) before they leave as :class:`SandboxError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import pickle
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.ipc  # type: ignore[import-untyped]  # noqa: F401 - registers pa.ipc

from exchange.sandbox_worker import ALIAS_PATTERN, FRAME, RESERVED_ALIASES, WorkerSettings
from kit.process import spawn

__all__ = [
    "Attachment",
    "ExecResult",
    "Limits",
    "PoolStats",
    "SandboxError",
    "SandboxPool",
    "WorkerInfo",
    "sanitize_message",
]

_log = logging.getLogger(__name__)

_WORKER_SCRIPT = Path(__file__).with_name("sandbox_worker.py")
# A worker's JSON header is a few hundred bytes; anything bigger is a misbehaving worker.
_MAX_HEADER_BYTES = 64 * 1024
_MAX_DETAIL_CHARS = 300
_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
_STARTUP_TIMEOUT_S = 30.0
_STOP_GRACE_S = 2.0
_RESPAWN_BACKOFF_S = (0.1, 0.5, 1.0, 5.0, 30.0)

ErrorCode = Literal[
    "sandbox.timeout",
    "sandbox.memory",
    "sandbox.crashed",
    "sandbox.result_too_large",
    "sandbox.sql_error",
    "sandbox.busy",
    "sandbox.unavailable",
]
_WORKER_CODES: frozenset[str] = frozenset(
    {"sandbox.timeout", "sandbox.memory", "sandbox.result_too_large", "sandbox.sql_error", "sandbox.unavailable"}
)
# Fixed texts for the codes whose DuckDB message says nothing a partner needs (sizes, internals).
_FIXED_DETAILS: dict[str, str] = {
    "sandbox.timeout": "the query exceeded its time limit",
    "sandbox.memory": "the query exceeded its memory limit",
    "sandbox.result_too_large": "the result exceeds the size limit",
    "sandbox.unavailable": "a dataset of the query could not be opened",
}
# A quoted string with a slash next to a name character ('a/b', "/srv/x", 's3://b/k'), not an operator like '/(INT)'.
_QUOTED_PATH = re.compile(r"([\"'])([^\"']*?(?:[\w.~-][/\\]|[/\\][\w.~-])[^\"']*)\1")
_BARE_PATH = re.compile(r"(?<![\w<])(?:[A-Za-z]:)?[/\\]+[\w.~-][^\s\"',;)]*")
_DUCKDB_MEMORY = re.compile(r"^\s*(\d+(\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$")


class SandboxError(Exception):
    """A query that did not produce a result: ``code`` is stable, ``detail`` is safe to show to the partner."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: ErrorCode = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Attachment:
    """A dataset file attached READ_ONLY under ``alias``; ``version`` changes whenever the file is replaced."""

    alias: str
    path: Path
    version: str

    def __post_init__(self) -> None:
        if not ALIAS_PATTERN.fullmatch(self.alias) or self.alias in RESERVED_ALIASES:
            raise ValueError(f"invalid attachment alias {self.alias!r}")
        if not self.path.is_absolute():
            raise ValueError("an attachment path must be absolute")
        if not self.version or len(self.version) > 200:
            raise ValueError("an attachment version must be a non-empty string of at most 200 characters")


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of every worker and every query."""

    memory_bytes: int = 2 * 1024**3
    duckdb_memory_limit: str = "512MB"
    threads: int = 1
    max_execution_ms: int = 10_000
    wall_clock_s: float = 15.0
    max_result_bytes: int = 64 * 1024**2
    temp_max_bytes: int = 1024**3
    # A worker whose address space ends a query above this share of memory_bytes is retired after answering.
    recycle_fraction: float = 0.7

    def __post_init__(self) -> None:
        if self.memory_bytes < 512 * 1024**2:
            raise ValueError("memory_bytes below 512 MiB leaves no room for Python, DuckDB and pyarrow")
        if not _DUCKDB_MEMORY.fullmatch(self.duckdb_memory_limit):
            raise ValueError("duckdb_memory_limit must look like '512MB' or '1GiB'")
        if not 1 <= self.threads <= 64:
            raise ValueError("threads must be between 1 and 64")
        if self.max_execution_ms < 1:
            raise ValueError("max_execution_ms must be positive")
        # DuckDB's own limit should fire first: it leaves the worker alive, the wall clock costs a respawn.
        if self.wall_clock_s * 1000.0 <= self.max_execution_ms:
            raise ValueError("wall_clock_s must exceed max_execution_ms")
        if self.max_result_bytes < 1024 or self.temp_max_bytes < 0:
            raise ValueError("max_result_bytes must be at least 1 KiB and temp_max_bytes non-negative")
        if not 0.0 < self.recycle_fraction <= 1.0:
            raise ValueError("recycle_fraction must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class ExecResult:
    """A query's result: the Arrow table, the Arrow IPC stream it came as (to forward as is), and where it ran."""

    table: pa.Table
    ipc: bytes
    rows: int
    duration_ms: float
    worker_ms: float
    worker_id: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker process as the pool sees it."""

    id: int
    pid: int
    state: Literal["starting", "idle", "busy"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Health of the pool: ``alive`` should equal ``size`` except briefly while a worker is replaced."""

    size: int
    alive: int
    idle: int
    busy: int
    waiting: int
    replaced: int
    executed: int
    workers: tuple[WorkerInfo, ...]


def sanitize_message(message: str, known_paths: Sequence[str] = ()) -> str:
    """A DuckDB error message fit for a partner: first line, no file paths, printable, bounded."""
    # Later lines carry the SQL excerpt, hints and candidate bindings; the first says what went wrong.
    line = message.strip().splitlines()[0] if message.strip() else ""
    for path in sorted(known_paths, key=len, reverse=True):
        if path:
            line = line.replace(path, "<path>")
    # Quoted strings that look like paths or URLs, then bare absolute paths.
    line = _QUOTED_PATH.sub(r"\1<path>\1", line)
    line = _BARE_PATH.sub("<path>", line)
    line = "".join(ch if ch.isprintable() else " " for ch in line)
    if len(line) > _MAX_DETAIL_CHARS:
        line = line[: _MAX_DETAIL_CHARS - 1] + "…"
    return line or "query failed"


class _ProtocolError(Exception):
    pass


@dataclass(eq=False)
class _Worker:
    id: int
    proc: subprocess.Popen[bytes]
    # Non-blocking, read and written with the loop's sock_* calls: asyncio streams copy a large body several times.
    sock: socket.socket
    temp_dir: Path | None
    state: Literal["starting", "idle", "busy"] = "starting"
    pending: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
    killed: bool = False
    dead: bool = False
    retiring: bool = False
    # What the worker has cached, as far as the parent knows: used to send a query where its files are attached.
    keys: OrderedDict[tuple[tuple[str, str], ...], None] = field(default_factory=OrderedDict)
    reader_task: asyncio.Task[None] | None = None

    def kill(self) -> None:
        self.killed = True
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)


class SandboxPool:
    """``size`` worker processes, each running one query at a time; callers queue (bounded) when all are busy."""

    def __init__(
        self,
        size: int,
        limits: Limits,
        *,
        temp_dir: Path | None = None,
        max_waiting: int | None = None,
        queue_timeout_s: float = 5.0,
        cache_entries: int = 4,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        if cache_entries < 1:
            raise ValueError("cache_entries must be at least 1")
        self._size = size
        self._limits = limits
        self._temp_root = temp_dir
        self._max_waiting = max_waiting if max_waiting is not None else 4 * size
        self._queue_timeout_s = queue_timeout_s
        self._cache_entries = cache_entries
        self._workers: dict[int, _Worker] = {}
        self._idle: list[_Worker] = []
        self._waiters: deque[asyncio.Future[_Worker]] = deque()
        self._respawns: set[asyncio.Task[None]] = set()
        self._next_id = 0
        self._replaced = 0
        self._executed = 0
        self._running = False

    async def start(self) -> None:
        """Start every worker and wait until each is ready."""
        if self._running:
            return
        if self._temp_root is not None:
            self._temp_root.mkdir(parents=True, exist_ok=True)
        self._running = True
        try:
            workers = await asyncio.gather(*(self._start_worker() for _ in range(self._size)))
        except BaseException:
            await self.stop()
            raise
        for worker in workers:
            self._release(worker)

    async def stop(self) -> None:
        """Stop every worker (EOF first, SIGKILL after a grace period) and fail queued callers."""
        self._running = False
        for task in list(self._respawns):
            task.cancel()
        await asyncio.gather(*self._respawns, return_exceptions=True)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(SandboxError("sandbox.unavailable", "the sandbox pool is stopping"))
        workers = list(self._workers.values())
        for worker in workers:
            # EOF on its socket makes an idle worker exit by itself; a busy one is killed after the grace period.
            with contextlib.suppress(OSError):
                worker.sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + _STOP_GRACE_S
        for worker in workers:
            while worker.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            worker.kill()
        tasks = [w.reader_task for w in workers if w.reader_task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._idle.clear()

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def stats(self) -> PoolStats:
        """Workers alive, idle and busy, callers waiting, workers replaced and queries run since start."""
        workers = tuple(WorkerInfo(w.id, w.proc.pid, w.state) for w in self._workers.values())
        return PoolStats(
            size=self._size,
            alive=sum(1 for w in self._workers.values() if w.state != "starting" and not (w.dead or w.killed)),
            idle=len(self._idle),
            busy=sum(1 for w in workers if w.state == "busy"),
            waiting=sum(1 for f in self._waiters if not f.done()),
            replaced=self._replaced,
            executed=self._executed,
            workers=workers,
        )

    async def execute(
        self, sql: str, attachments: Sequence[Attachment], *, params: Sequence[object] = ()
    ) -> ExecResult:
        """Run one SELECT on the attached datasets in a worker; raises :class:`SandboxError` on any failure."""
        if not self._running:
            raise SandboxError("sandbox.unavailable", "the sandbox pool is not running")
        aliases = [a.alias for a in attachments]
        if len(set(aliases)) != len(aliases):
            raise ValueError("attachment aliases must be unique")
        started = time.perf_counter()
        affinity = tuple(sorted((a.alias, a.version) for a in attachments))
        request = pickle.dumps(
            {
                "sql": sql,
                "attachments": [(a.alias, str(a.path), a.version) for a in attachments],
                "params": list(params),
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        worker = await self._acquire(affinity)
        while worker.dead or worker.killed:
            # Died between being handed over and now (its reader task already reaped it): the query has not been
            # sent, so another worker can take it.
            worker = await self._acquire(affinity)
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[tuple[dict[str, Any], bytes]] = loop.create_future()
        worker.pending = pending
        worker.state = "busy"
        worker.keys[affinity] = None
        worker.keys.move_to_end(affinity)
        while len(worker.keys) > self._cache_entries:
            worker.keys.popitem(last=False)
        try:
            async with asyncio.timeout(self._limits.wall_clock_s):
                await loop.sock_sendall(worker.sock, FRAME.pack(len(request), 0) + request)
                header, body = await pending
        except TimeoutError:
            worker.kill()
            raise SandboxError("sandbox.timeout", _FIXED_DETAILS["sandbox.timeout"]) from None
        except OSError:
            # The worker died before taking the request: its reader task reports why and replaces it.
            worker.kill()
            raise SandboxError("sandbox.crashed", "the sandbox worker stopped") from None
        except asyncio.CancelledError:
            # The caller gave up mid-query: the worker's state is unknown, a fresh one is cheaper than finding out.
            worker.kill()
            raise
        finally:
            worker.pending = None
        if header.get("recycle") is True:
            worker.retiring = True
        self._executed += 1
        try:
            return self._result(worker, header, body, attachments, started)
        finally:
            # After _result, which kills a worker that sent garbage: only a well-behaved worker goes back to the pool.
            self._release(worker)

    def _result(
        self,
        worker: _Worker,
        header: dict[str, Any],
        body: bytes,
        attachments: Sequence[Attachment],
        started: float,
    ) -> ExecResult:
        if header.get("ok") is not True:
            code = header.get("code")
            message = header.get("message")
            if code not in _WORKER_CODES or not isinstance(message, str):
                worker.kill()
                raise SandboxError("sandbox.crashed", "the sandbox worker sent an invalid reply")
            detail = _FIXED_DETAILS.get(code) or sanitize_message(message, [str(a.path) for a in attachments])
            raise SandboxError(code, detail)
        rows = header.get("rows")
        worker_ms = header.get("elapsed_ms")
        try:
            if not isinstance(rows, int) or not isinstance(worker_ms, int | float) or not math.isfinite(worker_ms):
                raise _ProtocolError("bad reply header")
            table = pa.ipc.open_stream(body).read_all()
            if table.num_rows != rows:
                raise _ProtocolError("row count mismatch")
        except (_ProtocolError, pa.ArrowException) as exc:
            _log.warning("sandbox worker %s sent an invalid result: %s", worker.id, exc)
            worker.kill()
            raise SandboxError("sandbox.crashed", "the sandbox worker sent an invalid reply") from None
        duration_ms = (time.perf_counter() - started) * 1000.0
        return ExecResult(table, body, rows, duration_ms, float(worker_ms), worker.id)

    async def _acquire(self, affinity: tuple[tuple[str, str], ...]) -> _Worker:
        if self._idle:
            # Prefer a worker that already has these files attached: a cache miss costs a DuckDB instance (~10 ms).
            index = next((i for i, w in enumerate(self._idle) if affinity in w.keys), len(self._idle) - 1)
            return self._idle.pop(index)
        if sum(1 for f in self._waiters if not f.done()) >= self._max_waiting:
            raise SandboxError("sandbox.busy", "too many queries are waiting for a sandbox worker")
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a worker in the same instant the caller gave up: pass it on.
                self._release(waiter.result())
            waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise SandboxError("sandbox.busy", "no sandbox worker became free in time") from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _release(self, worker: _Worker) -> None:
        if (
            worker.dead
            or worker.killed
            or worker.retiring
            or worker.proc.poll() is not None
            or worker.id not in self._workers
        ):
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                worker.state = "busy"
                waiter.set_result(worker)
                return
        worker.state = "idle"
        self._idle.append(worker)

    async def _start_worker(self) -> _Worker:
        self._next_id += 1
        worker_id = self._next_id
        temp_dir: Path | None = None
        if self._temp_root is not None:
            temp_dir = self._temp_root / f"worker-{worker_id}-{secrets.token_hex(4)}"
            temp_dir.mkdir(mode=0o700)
        settings = WorkerSettings(
            memory_bytes=self._limits.memory_bytes,
            duckdb_memory_limit=self._limits.duckdb_memory_limit,
            threads=self._limits.threads,
            max_execution_ms=self._limits.max_execution_ms,
            max_result_bytes=self._limits.max_result_bytes,
            temp_dir=str(temp_dir) if temp_dir is not None else None,
            temp_max_bytes=self._limits.temp_max_bytes,
            cache_entries=self._cache_entries,
            recycle_fraction=self._limits.recycle_fraction,
        )
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Larger socket buffers: a result of tens of MiB crosses in fewer wake-ups (the kernel caps at wmem_max).
        for end in (parent_sock, child_sock):
            with contextlib.suppress(OSError):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER_BYTES)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER_BYTES)
        try:
            # Spawned from the event loop's thread on purpose: PDEATHSIG fires when the *thread* that forked exits,
            # so a worker forked from an executor thread could be killed when that thread is retired.
            proc = spawn(
                [sys.executable, "-I", "-B", str(_WORKER_SCRIPT), settings.to_json()],
                env=_worker_env(),
                cwd=Path("/"),
                # The socket is the worker's stdout (kit.process.spawn passes no other descriptor); the worker moves
                # it off fd 1 at once. stderr stays the parent's so a worker's traceback reaches the service log.
                stdout=child_sock.fileno(),
                stderr=None,
            )
        except BaseException:
            parent_sock.close()
            child_sock.close()
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        child_sock.close()
        parent_sock.setblocking(False)
        worker = _Worker(worker_id, proc, parent_sock, temp_dir)
        self._workers[worker_id] = worker
        ready: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
        worker.pending = ready
        worker.reader_task = asyncio.create_task(self._read_loop(worker), name=f"sandbox-worker-{worker_id}")
        try:
            async with asyncio.timeout(_STARTUP_TIMEOUT_S):
                header, _ = await ready
            if header.get("ready") is not True or header.get("pid") != proc.pid:
                raise _ProtocolError("unexpected first frame")
        except BaseException:
            worker.kill()
            raise
        finally:
            worker.pending = None
        return worker

    async def _read_loop(self, worker: _Worker) -> None:
        """Deliver the worker's replies to the pending future; on EOF or garbage, reap it and start a replacement."""
        max_body = self._limits.max_result_bytes
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await _recv_exactly(loop, worker.sock, FRAME.size)
                header_len, body_len = FRAME.unpack(head)
                if header_len > _MAX_HEADER_BYTES or body_len > max_body:
                    raise _ProtocolError("oversized frame")
                header = _parse_header(await _recv_exactly(loop, worker.sock, header_len))
                # One copy, into bytes: the Arrow table is then read from it without another.
                body = bytes(await _recv_exactly(loop, worker.sock, body_len)) if body_len else b""
                pending = worker.pending
                if pending is None:
                    raise _ProtocolError("unsolicited frame")
                worker.pending = None
                if not pending.done():
                    pending.set_result((header, body))
        except (EOFError, OSError):
            pass
        except _ProtocolError as exc:
            _log.warning("sandbox worker %s broke the protocol: %s", worker.id, exc)
        except asyncio.CancelledError:
            worker.kill()
            raise
        finally:
            await self._reap(worker)

    async def _reap(self, worker: _Worker) -> None:
        # Out of the idle list first, so no caller is handed a worker that is already gone.
        worker.dead = True
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        # The socket closes as the process exits; give it a moment to become a zombie, then make sure it is gone.
        deadline = time.monotonic() + 1.0
        while worker.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        worker.kill()
        returncode = worker.proc.poll()
        if returncode is None:
            returncode = await asyncio.to_thread(worker.proc.wait)
        worker.sock.close()
        pending = worker.pending
        worker.pending = None
        if pending is not None and not pending.done():
            if self._running:
                pending.set_exception(SandboxError("sandbox.crashed", "the sandbox worker stopped unexpectedly"))
            else:
                pending.set_exception(SandboxError("sandbox.unavailable", "the sandbox pool is stopping"))
        self._workers.pop(worker.id, None)
        if worker.temp_dir is not None:
            shutil.rmtree(worker.temp_dir, ignore_errors=True)
        if not worker.retiring and self._running:
            _log.warning(
                "sandbox worker %s (pid %s) ended: %s", worker.id, worker.proc.pid, _describe_status(returncode)
            )
        if self._running and worker.state != "starting":
            task = asyncio.create_task(self._replace(), name="sandbox-replace")
            self._respawns.add(task)
            task.add_done_callback(self._respawns.discard)

    async def _replace(self) -> None:
        for attempt in itertools.count():
            if not self._running:
                return
            try:
                worker = await self._start_worker()
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = _RESPAWN_BACKOFF_S[min(attempt, len(_RESPAWN_BACKOFF_S) - 1)]
                _log.exception("sandbox worker failed to start; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                continue
            self._replaced += 1
            if not self._running:
                worker.kill()
                return
            self._release(worker)
            return


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytearray:
    """``size`` bytes from ``sock``, received in place; EOFError if the worker closes first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = await loop.sock_recv_into(sock, view[received:])
        if count == 0:
            raise EOFError
        received += count
    return buffer


def _parse_header(raw: bytearray) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise _ProtocolError("header is not JSON") from exc
    if not isinstance(header, dict):
        raise _ProtocolError("header is not an object")
    return header


def _describe_status(returncode: int | None) -> str:
    if returncode is None:
        return "unknown status"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"


def _worker_env() -> dict[str, str]:
    # Nothing of the service's environment (database URLs, NATS credentials) reaches a process that runs partner SQL.
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/nonexistent",
        # Results must not depend on the host's zone: TIMESTAMPTZ renders in UTC on every node.
        "TZ": "UTC",
        # glibc reserves 64 MiB of address space per arena and thread: under RLIMIT_AS that is memory lost to nothing.
        "MALLOC_ARENA_MAX": "2",
        # One allocator (glibc, bounded above) instead of also pyarrow's own, which keeps freed memory mapped.
        "ARROW_DEFAULT_MEMORY_POOL": "system",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
