"""Sandbox worker: one OS process that runs already-checked SQL on read-only DuckDB files and answers in Arrow IPC.

Started by :class:`exchange.sandbox.SandboxPool` as ``python -I -B <this file> <settings JSON>`` with a socket as its
standard output. It imports nothing from the project (only the standard library, duckdb and pyarrow), so a worker holds
no secret and no code beyond what a query needs. The parent trusts the worker with nothing: replies are a JSON header
and Arrow IPC bytes, never pickles, and the parent re-checks every field.

Wire format, both ways: a frame is ``>II`` (header length, body length), then the header, then the body.
Parent to worker: the header is a pickle of ``{"sql", "attachments": [(alias, path, version)], "params"}`` (the parent
is trusted by the worker, not the other way round). Worker to parent: a JSON header, the body is the Arrow IPC stream.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import re
import resource
import socket
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

__all__ = [
    "ALIAS_PATTERN",
    "FRAME",
    "WorkerSettings",
    "lockdown_config",
    "open_connection",
]

FRAME = struct.Struct(">II")
ALIAS_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Names DuckDB already gives to catalogs: an attachment under one of them would fail or shadow it.
RESERVED_ALIASES = frozenset({"main", "memory", "system", "temp"})

# Rows per Arrow batch read from DuckDB: the size cap is checked between batches, so this bounds the overshoot.
_BATCH_ROWS = 16_384
_PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker needs to know, passed as JSON on its command line."""

    memory_bytes: int
    duckdb_memory_limit: str
    threads: int
    max_execution_ms: int
    max_result_bytes: int
    temp_dir: str | None
    temp_max_bytes: int
    cache_entries: int
    # Above this share of RLIMIT_AS after a query, the worker answers and then exits to be replaced: glibc keeps the
    # address space of freed arenas, and the next query would hit the OS limit on memory it no longer uses.
    recycle_fraction: float = 0.7

    def to_json(self) -> str:
        """The settings as a command-line argument."""
        return json.dumps({name: getattr(self, name) for name in self.__slots__})

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        """Parse :meth:`to_json` output."""
        return cls(**json.loads(text))


def lockdown_config(
    *, memory_limit: str, threads: int, max_execution_ms: int, temp_directory: str = "", temp_max_bytes: int = 0
) -> dict[str, str | bool | int | float | list[str]]:
    """The DuckDB config dict given at connect (see FIELD-NOTES: limits set with SET are session-local)."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        # Fails loudly at connect if a future DuckDB drops the option: better than silently scanning Python objects.
        "python_enable_replacements": False,
        "allow_persistent_secrets": False,
        "memory_limit": memory_limit,
        "threads": threads,
        "max_execution_time": max_execution_ms,
        "temp_directory": temp_directory,
    }
    if temp_directory:
        config["max_temp_directory_size"] = f"{max(temp_max_bytes, 1)}B"
    return config


def open_connection(
    attachments: Sequence[tuple[str, str]],
    *,
    memory_limit: str,
    threads: int,
    max_execution_ms: int,
    temp_directory: str = "",
    temp_max_bytes: int = 0,
) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB, ``(alias, path)`` attached READ_ONLY, then external access off and config locked."""
    import duckdb

    for alias, _ in attachments:
        # The alias is spliced into SQL: the parent validated it already, a second check costs nothing.
        if not ALIAS_PATTERN.fullmatch(alias) or alias in RESERVED_ALIASES:
            raise ValueError("invalid attachment alias")
    con = duckdb.connect(
        ":memory:",
        config=lockdown_config(
            memory_limit=memory_limit,
            threads=threads,
            max_execution_ms=max_execution_ms,
            temp_directory=temp_directory,
            temp_max_bytes=temp_max_bytes,
        ),
    )
    try:
        for alias, path in attachments:
            literal = path.replace("'", "''")
            con.execute(f"ATTACH '{literal}' AS {alias} (READ_ONLY)")
        # Order matters: files can only be attached while external access is on, and the lock must come last.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


class _ResultTooLarge(Exception):
    pass


class _Unavailable(Exception):
    pass


_CacheKey = tuple[tuple[str, str, str], ...]


class _ConnectionCache:
    """Prepared connections per attachment set (aliases, paths, versions), least recently used evicted first."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._entries: OrderedDict[_CacheKey, duckdb.DuckDBPyConnection] = OrderedDict()
        self._opened = 0

    def get(self, key: _CacheKey) -> duckdb.DuckDBPyConnection:
        """The locked-down connection for ``key``, opened (and the LRU entry evicted) on a miss."""
        con = self._entries.get(key)
        if con is not None:
            self._entries.move_to_end(key)
            return con
        self._drop_stale(key)
        while len(self._entries) >= self._settings.cache_entries:
            _, old = self._entries.popitem(last=False)
            old.close()
        temp_directory = ""
        if self._settings.temp_dir:
            # One spill folder per DuckDB instance: DuckDB owns and cleans the folder it is given.
            self._opened += 1
            temp_directory = os.path.join(self._settings.temp_dir, f"db{self._opened}")
        try:
            con = open_connection(
                [(alias, path) for alias, path, _ in key],
                memory_limit=self._settings.duckdb_memory_limit,
                threads=self._settings.threads,
                max_execution_ms=self._settings.max_execution_ms,
                temp_directory=temp_directory,
                temp_max_bytes=self._settings.temp_max_bytes,
            )
        except Exception as exc:
            raise _Unavailable(str(exc)) from exc
        self._entries[key] = con
        return con

    def _drop_stale(self, key: _CacheKey) -> None:
        # A replaced dataset: close every instance holding an older version open, so the old file's handle and cached
        # blocks go now rather than when LRU gets round to them.
        versions = {alias: version for alias, _, version in key} | {path: version for _, path, version in key}
        for cached in list(self._entries):
            if any(versions.get(alias, v) != v or versions.get(path, v) != v for alias, path, v in cached):
                self._entries.pop(cached).close()


def _address_space_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split(maxsplit=1)[0]) * os.sysconf("SC_PAGE_SIZE")


def _run_query(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object], max_bytes: int) -> tuple[int, Any]:
    import duckdb
    import pyarrow as pa  # type: ignore[import-untyped]

    statements = con.extract_statements(sql)
    # `sql()` runs every statement but the last one at once, and runs a non-SELECT as it builds the relation: only a
    # lone SELECT may reach it, whatever the policy engine let through.
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise duckdb.InvalidInputException("Invalid Input Error: only a single SELECT statement is accepted")
    # A cursor per query: its own client context, so nothing session-scoped survives into the next partner's query.
    cur = con.cursor()
    try:
        reader = cur.sql(sql, params=list(params) if params else None).to_arrow_reader(_BATCH_ROWS)
        sink = pa.BufferOutputStream()
        rows = 0
        with pa.ipc.new_stream(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
                # Streamed: a huge result stops here, at the cap, instead of being built whole first.
                if sink.tell() > max_bytes:
                    raise _ResultTooLarge
        buffer = sink.getvalue()
        if buffer.size > max_bytes:
            raise _ResultTooLarge
        return rows, buffer
    finally:
        cur.close()


def _handle(cache: _ConnectionCache, settings: WorkerSettings, request: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    import duckdb

    started = time.perf_counter()
    key: _CacheKey = tuple(sorted((str(a), str(p), str(v)) for a, p, v in request["attachments"]))
    try:
        con = cache.get(key)
        rows, body = _run_query(con, request["sql"], request["params"], settings.max_result_bytes)
    except _Unavailable as exc:
        return {"ok": False, "code": "sandbox.unavailable", "message": str(exc)}, b""
    except _ResultTooLarge:
        return {"ok": False, "code": "sandbox.result_too_large", "message": "result too large"}, b""
    except (duckdb.OutOfMemoryException, MemoryError) as exc:
        return {"ok": False, "code": "sandbox.memory", "message": str(exc)}, b""
    except duckdb.InterruptException as exc:
        return {"ok": False, "code": "sandbox.timeout", "message": str(exc)}, b""
    except duckdb.Error as exc:
        return {"ok": False, "code": "sandbox.sql_error", "message": str(exc)}, b""
    except Exception as exc:  # noqa: BLE001 - e.g. pyarrow refusing a type: still the query's fault, not the worker's
        return {"ok": False, "code": "sandbox.sql_error", "message": f"{type(exc).__name__}: {exc}"}, b""
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return {"ok": True, "rows": rows, "elapsed_ms": elapsed_ms}, body


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _send(sock: socket.socket, header: dict[str, Any], body: Any = b"") -> None:
    head = json.dumps(header).encode()
    view = memoryview(body)
    sock.sendall(FRAME.pack(len(head), view.nbytes) + head)
    if view.nbytes:
        sock.sendall(view)


def _apply_os_limits(settings: WorkerSettings) -> None:
    # RLIMIT_AS is the only bound DuckDB cannot step over (FIELD-NOTES: repeat() ignored memory_limit).
    resource.setrlimit(resource.RLIMIT_AS, (settings.memory_bytes, settings.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    # Without a spill folder the worker has no file to write at all; Python ignores SIGXFSZ, so a write gets EFBIG.
    file_size = settings.temp_max_bytes if settings.temp_dir else 0
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.umask(0o077)


def _warm_up(settings: WorkerSettings) -> None:
    # The first Arrow export of a process costs ~20 ms (lazy initialisation in DuckDB and pyarrow): pay it before
    # saying ready rather than in a partner's first query.
    con = open_connection(
        [], memory_limit=settings.duckdb_memory_limit, threads=settings.threads, max_execution_ms=10_000
    )
    try:
        sql = "SELECT i, i * 0.5 AS d, 'x' || i AS s, DATE '2024-01-01' + i::INTEGER AS t FROM range(3) t(i)"
        _run_query(con, sql, (), settings.max_result_bytes)
    finally:
        con.close()


def main(argv: Sequence[str]) -> int:
    """Worker entry point: serve requests on the socket that is standard output until the parent closes it."""
    settings = WorkerSettings.from_json(argv[1])
    _apply_os_limits(settings)
    # The socket moves off fd 1, and fd 1 goes to /dev/null: a stray print from any library cannot corrupt a frame.
    sock = socket.socket(fileno=os.dup(1))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    import duckdb  # noqa: F401 - imported under the limits, before saying ready, so the first query pays nothing
    import pyarrow.ipc  # type: ignore[import-untyped]  # noqa: F401

    _warm_up(settings)
    cache = _ConnectionCache(settings)
    try:
        _send(sock, {"ok": True, "ready": True, "pid": os.getpid()})
        _serve(sock, cache, settings)
    except ConnectionError:
        # The parent went away or dropped this worker (a cancelled caller): nothing left to answer.
        pass
    return 0


def _serve(sock: socket.socket, cache: _ConnectionCache, settings: WorkerSettings) -> None:
    while True:
        head = _recv_exact(sock, FRAME.size)
        if head is None:
            return
        header_len, body_len = FRAME.unpack(head)
        payload = _recv_exact(sock, header_len + body_len)
        if payload is None:
            return
        request = pickle.loads(payload[:header_len])  # noqa: S301 - from the parent, which the worker trusts
        reply, body = _handle(cache, settings, request)
        recycle = _address_space_bytes() > settings.recycle_fraction * settings.memory_bytes
        reply["recycle"] = recycle
        _send(sock, reply, body)
        if recycle:
            return


if __name__ == "__main__":
    sys.exit(main(sys.argv))
