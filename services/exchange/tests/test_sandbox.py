"""The sandbox pool: lockdown, limits, crashes and replacement, concurrency, size cap, sanitised errors, versions."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from exchange.sandbox import (
    Attachment,
    Limits,
    SandboxError,
    SandboxPool,
    sanitize_message,
)
from exchange.sandbox_worker import WorkerSettings, _ConnectionCache, open_connection

LIMITS = Limits(max_execution_ms=2_000, wall_clock_s=5.0)
AGGREGATE = 'SELECT zone, count(*) AS n, sum(amount) AS total FROM ds_conso.main."rows" GROUP BY zone ORDER BY zone'
# Not interruptible by DuckDB: one sha256 over a 400 MB string ran 4.7 s with max_execution_time at 500 ms.
UNINTERRUPTIBLE = "SELECT length(sha256(repeat('a', 400000000))) + length(sha256(repeat('b', 400000000)))"
# Interruptible: DuckDB's max_execution_time stops it between chunks.
CROSS_JOIN = "SELECT count(*) FROM range(1000000) a, range(1000000) b"
ENDLESS_RECURSION = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"


def make_dataset(path: Path, rows: int = 1_000, *, factor: int = 1) -> Path:
    """A DuckDB file with one table `rows`, as the ingestion writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    columns = f"i AS id, i % 10 AS zone, i * {factor} AS amount"
    con.execute(f"CREATE OR REPLACE TABLE rows AS SELECT {columns} FROM range({rows}) t(i)")
    con.close()
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Attachment:
    path = make_dataset(tmp_path / "secret-territory" / "consommation-eau-menages" / "v1" / "data.duckdb")
    return Attachment("ds_conso", path, "v1")


@pytest.fixture
async def pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(2, LIMITS) as started:
        yield started


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def healthy(pool: SandboxPool) -> bool:
    stats = pool.stats()
    return stats.alive == stats.size and stats.idle == stats.size


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_aggregate_over_attached_file(pool: SandboxPool, dataset: Attachment) -> None:
    result = await pool.execute(AGGREGATE, [dataset])
    assert result.rows == 10
    assert result.table.column("n").to_pylist() == [100] * 10
    assert result.table.column("total").to_pylist()[0] == sum(range(0, 1000, 10))
    assert result.worker_id in {w.id for w in pool.stats().workers}
    # The raw IPC stream is what the exchange can forward untouched.
    assert pa.ipc.open_stream(result.ipc).read_all().equals(result.table)


async def test_parameters_are_bound(pool: SandboxPool, dataset: Attachment) -> None:
    sql = 'SELECT count(*) AS n FROM ds_conso.main."rows" WHERE zone = ? AND amount >= ?'
    result = await pool.execute(sql, [dataset], params=[3, 500])
    assert result.table.column("n").to_pylist() == [50]


async def test_query_without_attachment(pool: SandboxPool) -> None:
    result = await pool.execute("SELECT 1 AS one", [])
    assert result.table.to_pylist() == [{"one": 1}]


LOCKED_OUT = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "ATTACH '{other}' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "COPY (SELECT 1) TO '{out}'",
    "EXPORT DATABASE '{outdir}'",
    "SET threads = 4",
    "SET max_execution_time = 0",
    "SET enable_external_access = true",
    "SET memory_limit = '100GB'",
    "RESET lock_configuration",
    "PRAGMA threads = 4",
]


@pytest.mark.parametrize("statement", LOCKED_OUT)
def test_duckdb_lockdown_refuses(statement: str, tmp_path: Path, dataset: Attachment) -> None:
    """The connection a worker builds refuses on its own, before the worker's single-SELECT check."""
    other = make_dataset(tmp_path / "other.duckdb")
    sql = statement.format(other=other, out=tmp_path / "out.csv", outdir=tmp_path / "export")
    con = open_connection([(dataset.alias, str(dataset.path))], memory_limit="256MB", threads=1, max_execution_ms=1000)
    try:
        with pytest.raises(duckdb.Error):
            con.execute(sql)
        # Still attached and readable, and the limits still in force.
        assert con.sql(f'SELECT count(*) FROM {dataset.alias}.main."rows"').fetchall() == [(1000,)]
        assert con.sql("SELECT current_setting('max_execution_time')").fetchall() == [(1000,)]
    finally:
        con.close()
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("statement", LOCKED_OUT)
async def test_pool_refuses(statement: str, tmp_path: Path, pool: SandboxPool, dataset: Attachment) -> None:
    other = make_dataset(tmp_path / "other.duckdb")
    sql = statement.format(other=other, out=tmp_path / "out.csv", outdir=tmp_path / "export")
    with pytest.raises(SandboxError) as raised:
        await pool.execute(sql, [dataset])
    assert raised.value.code == "sandbox.sql_error"
    assert str(tmp_path) not in raised.value.detail
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; CREATE TABLE memory.main.t AS SELECT 1",
        "CREATE TABLE memory.main.t AS SELECT 1",
        "ATTACH ':memory:' AS scratch",
        "CALL checkpoint()",
        "EXPLAIN SELECT 1",
    ],
)
async def test_only_a_single_select_runs(sql: str, pool: SandboxPool) -> None:
    """What DuckDB's lockdown still allows (in-memory attach, tables in `memory`) is refused by the worker."""
    with pytest.raises(SandboxError) as raised:
        await pool.execute(sql, [])
    assert raised.value.code == "sandbox.sql_error"
    assert "single SELECT" in raised.value.detail
    # Nothing ran: no table leaks into the next partner's query on this worker.
    with pytest.raises(SandboxError):
        await pool.execute("SELECT * FROM memory.main.t", [])


async def test_memory_bomb_fails_cleanly(pool: SandboxPool, dataset: Attachment) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxError) as raised:
        await pool.execute("SELECT length(repeat('x', 1500000000))", [dataset])
    assert raised.value.code == "sandbox.memory"
    assert time.monotonic() - started < 2.0
    result = await pool.execute(AGGREGATE, [dataset])
    assert result.rows == 10
    await wait_for(lambda: healthy(pool))


@pytest.mark.parametrize("sql", [CROSS_JOIN, ENDLESS_RECURSION])
async def test_duckdb_time_limit_keeps_the_worker(sql: str, dataset: Attachment) -> None:
    async with SandboxPool(1, Limits(max_execution_ms=300, wall_clock_s=5.0)) as pool:
        pid = pool.stats().workers[0].pid
        started = time.monotonic()
        with pytest.raises(SandboxError) as raised:
            await pool.execute(sql, [dataset])
        assert raised.value.code == "sandbox.timeout"
        assert time.monotonic() - started < 2.0
        assert (await pool.execute(AGGREGATE, [dataset])).rows == 10
        assert pool.stats().workers[0].pid == pid
        assert pool.stats().replaced == 0


async def test_wall_clock_kills_and_replaces(dataset: Attachment) -> None:
    async with SandboxPool(1, Limits(max_execution_ms=200, wall_clock_s=1.0)) as pool:
        old = pool.stats().workers[0]
        started = time.monotonic()
        with pytest.raises(SandboxError) as raised:
            await pool.execute(UNINTERRUPTIBLE, [dataset])
        elapsed = time.monotonic() - started
        assert raised.value.code == "sandbox.timeout"
        assert 1.0 <= elapsed < 1.75
        await wait_for(lambda: pool.stats().replaced == 1 and healthy(pool))
        assert pid_gone(old.pid)
        assert pool.stats().workers[0].id != old.id
        assert (await pool.execute(AGGREGATE, [dataset])).rows == 10


async def test_killed_idle_worker_is_replaced(pool: SandboxPool, dataset: Attachment) -> None:
    victim = pool.stats().workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    await wait_for(lambda: pool.stats().replaced == 1 and healthy(pool))
    assert victim.id not in {w.id for w in pool.stats().workers}
    results = await asyncio.gather(*(pool.execute(AGGREGATE, [dataset]) for _ in range(4)))
    assert all(r.rows == 10 for r in results)


async def test_killed_busy_worker_reports_a_crash(pool: SandboxPool, dataset: Attachment) -> None:
    running = asyncio.create_task(pool.execute(UNINTERRUPTIBLE, [dataset]))
    await wait_for(lambda: pool.stats().busy == 1)
    busy = next(w for w in pool.stats().workers if w.state == "busy")
    os.kill(busy.pid, signal.SIGSEGV)
    with pytest.raises(SandboxError) as raised:
        await running
    assert raised.value.code == "sandbox.crashed"
    await wait_for(lambda: pool.stats().replaced == 1 and healthy(pool))
    assert (await pool.execute(AGGREGATE, [dataset])).rows == 10


async def test_parallel_queries_on_two_workers(dataset: Attachment) -> None:
    async with SandboxPool(2, LIMITS, max_waiting=30) as pool:
        results = await asyncio.gather(*(pool.execute(AGGREGATE, [dataset]) for _ in range(30)))
        assert all(r.rows == 10 for r in results)
        assert len({r.worker_id for r in results}) == 2
        assert pool.stats().executed == 30
        # Beyond the queue bound, callers are told at once instead of piling up.
        outcomes = await asyncio.gather(
            *(pool.execute(AGGREGATE, [dataset]) for _ in range(40)), return_exceptions=True
        )
        busy = [o for o in outcomes if isinstance(o, SandboxError)]
        assert len(busy) == 8 and all(e.code == "sandbox.busy" for e in busy)


async def test_runaway_holds_only_its_own_worker(dataset: Attachment) -> None:
    async with SandboxPool(2, Limits(max_execution_ms=200, wall_clock_s=2.0)) as pool:
        runaway = asyncio.create_task(pool.execute(UNINTERRUPTIBLE, [dataset]))
        await wait_for(lambda: pool.stats().busy == 1)
        started = time.monotonic()
        for _ in range(20):
            assert (await pool.execute(AGGREGATE, [dataset])).rows == 10
        assert time.monotonic() - started < 1.5
        assert not runaway.done()
        with pytest.raises(SandboxError) as raised:
            await runaway
        assert raised.value.code == "sandbox.timeout"


async def test_bounded_queue_answers_busy(dataset: Attachment) -> None:
    async with SandboxPool(1, Limits(max_execution_ms=200, wall_clock_s=2.0), max_waiting=1) as pool:
        runaway = asyncio.create_task(pool.execute(UNINTERRUPTIBLE, [dataset]))
        await wait_for(lambda: pool.stats().busy == 1)
        queued = asyncio.create_task(pool.execute(AGGREGATE, [dataset]))
        await wait_for(lambda: pool.stats().waiting == 1)
        with pytest.raises(SandboxError) as raised:
            await pool.execute(AGGREGATE, [dataset])
        assert raised.value.code == "sandbox.busy"
        with pytest.raises(SandboxError):
            await runaway
        # The queued query gets the replacement worker.
        assert (await queued).rows == 10


async def test_queue_timeout_answers_busy(dataset: Attachment) -> None:
    async with SandboxPool(1, Limits(max_execution_ms=200, wall_clock_s=2.0), queue_timeout_s=0.2) as pool:
        runaway = asyncio.create_task(pool.execute(UNINTERRUPTIBLE, [dataset]))
        await wait_for(lambda: pool.stats().busy == 1)
        with pytest.raises(SandboxError) as raised:
            await pool.execute(AGGREGATE, [dataset])
        assert raised.value.code == "sandbox.busy"
        with pytest.raises(SandboxError):
            await runaway


async def test_cancelled_caller_frees_the_worker(dataset: Attachment) -> None:
    async with SandboxPool(1, LIMITS) as pool:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await pool.execute(UNINTERRUPTIBLE, [dataset])
        await wait_for(lambda: healthy(pool))
        assert (await pool.execute(AGGREGATE, [dataset])).rows == 10


async def test_result_size_cap(dataset: Attachment) -> None:
    async with SandboxPool(1, Limits(max_result_bytes=1024 * 1024)) as pool:
        with pytest.raises(SandboxError) as raised:
            await pool.execute("SELECT repeat('x', 1000) AS s FROM range(100000)", [dataset])
        assert raised.value.code == "sandbox.result_too_large"
        small = await pool.execute("SELECT repeat('x', 1000) AS s FROM range(100)", [dataset])
        assert small.rows == 100
        assert len(small.ipc) <= 1024 * 1024
        assert pool.stats().replaced == 0


async def test_error_messages_name_no_path(pool: SandboxPool, dataset: Attachment, tmp_path: Path) -> None:
    for sql in [
        "SELECT * FROM read_parquet('/srv/maillage/secret.parquet')",
        'SELECT missing_column FROM ds_conso.main."rows"',
        "SELECT * FROM ds_conso.main.nope",
        f"SELECT * FROM '{dataset.path.parent}/other.duckdb'",
    ]:
        with pytest.raises(SandboxError) as raised:
            await pool.execute(sql, [dataset])
        detail = raised.value.detail
        assert raised.value.code == "sandbox.sql_error"
        assert "/" not in detail and "secret" not in detail, detail
        assert "\n" not in detail and len(detail) <= 300


async def test_missing_dataset_file(pool: SandboxPool, tmp_path: Path) -> None:
    missing = Attachment("ds_gone", tmp_path / "secret-territory" / "gone.duckdb", "v1")
    with pytest.raises(SandboxError) as raised:
        await pool.execute('SELECT count(*) FROM ds_gone.main."rows"', [missing])
    assert raised.value.code == "sandbox.unavailable"
    assert "secret" not in raised.value.detail


def test_sanitize_message() -> None:
    message = (
        'IO Error: Cannot open file "/data/dijon/eau/v3/data.duckdb": No such file\n\nLINE 1: SELECT * FROM x\n   ^'
    )
    assert sanitize_message(message) == 'IO Error: Cannot open file "<path>": No such file'
    assert sanitize_message("Error at /var/lib/x.duckdb, line 2") == "Error at <path>, line 2"
    assert sanitize_message("Conversion Error: 'a/b' is not an INT32") == "Conversion Error: '<path>' is not an INT32"
    operator = "Binder Error: No function matches the given name and argument types '/(VARCHAR, INTEGER)'"
    assert sanitize_message(operator) == operator
    assert sanitize_message("IO Error: cannot read s3://bucket/key.csv") == "IO Error: cannot read s3:<path>"
    assert sanitize_message("x" * 1000).endswith("…")
    assert sanitize_message("") == "query failed"


async def test_replaced_file_is_seen_by_next_query(pool: SandboxPool, tmp_path: Path) -> None:
    base = tmp_path / "territory" / "conso"
    first = Attachment("ds_conso", make_dataset(base / "v1" / "data.duckdb", factor=1), "v1")
    totals = {(await pool.execute(AGGREGATE, [first])).table.column("total").to_pylist()[0] for _ in range(4)}
    assert totals == {sum(range(0, 1000, 10))}
    # A new version at a new path (how the ingestion publishes).
    second = Attachment("ds_conso", make_dataset(base / "v2" / "data.duckdb", factor=2), "v2")
    totals = {(await pool.execute(AGGREGATE, [second])).table.column("total").to_pylist()[0] for _ in range(4)}
    assert totals == {2 * sum(range(0, 1000, 10))}
    # The same path replaced by an atomic rename, with a new version.
    staged = make_dataset(base / "staging.duckdb", factor=3)
    staged.replace(second.path)
    third = Attachment("ds_conso", second.path, "v3")
    totals = {(await pool.execute(AGGREGATE, [third])).table.column("total").to_pylist()[0] for _ in range(4)}
    assert totals == {3 * sum(range(0, 1000, 10))}


async def test_several_attachments(pool: SandboxPool, dataset: Attachment, tmp_path: Path) -> None:
    other = Attachment("ds_other", make_dataset(tmp_path / "other" / "data.duckdb", rows=50), "v7")
    sql = 'SELECT (SELECT count(*) FROM ds_conso.main."rows") AS a, (SELECT count(*) FROM ds_other.main."rows") AS b'
    result = await pool.execute(sql, [dataset, other])
    assert result.table.to_pylist() == [{"a": 1000, "b": 50}]


def test_worker_connection_cache(tmp_path: Path) -> None:
    """Same files and versions: same prepared connection; a new version closes the old one; LRU bounded."""
    settings = WorkerSettings(
        memory_bytes=2 * 1024**3,
        duckdb_memory_limit="256MB",
        threads=1,
        max_execution_ms=1000,
        max_result_bytes=1024**2,
        temp_dir=None,
        temp_max_bytes=0,
        cache_entries=2,
    )
    cache = _ConnectionCache(settings)
    a = str(make_dataset(tmp_path / "a.duckdb"))
    b = str(make_dataset(tmp_path / "b.duckdb"))
    first = cache.get((("ds_a", a, "v1"),))
    assert cache.get((("ds_a", a, "v1"),)) is first
    second = cache.get((("ds_a", a, "v2"),))
    assert second is not first
    with pytest.raises(duckdb.Error):
        first.execute("SELECT 1")
    other = cache.get((("ds_b", b, "v1"),))
    both = cache.get((("ds_a", a, "v2"), ("ds_b", b, "v1")))
    assert both.sql('SELECT count(*) FROM ds_b.main."rows"').fetchall() == [(1000,)]
    # Two entries at most: the least recently used (`second`) went first.
    with pytest.raises(duckdb.Error):
        second.execute("SELECT 1")
    assert other.sql("SELECT 1").fetchall() == [(1,)]


def test_attachment_validation(tmp_path: Path) -> None:
    for alias in ["Ds", "1ds", "ds-x", "ds x", "main", "memory", "a;drop", ""]:
        with pytest.raises(ValueError):
            Attachment(alias, tmp_path / "x.duckdb", "v1")
    with pytest.raises(ValueError):
        Attachment("ds", Path("relative.duckdb"), "v1")
    with pytest.raises(ValueError):
        Limits(max_execution_ms=10_000, wall_clock_s=5.0)


async def test_worker_process_is_confined(
    pool: SandboxPool, dataset: Attachment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILLAGE_TEST_SECRET", "s3cr3t")
    await pool.execute("SELECT 1", [dataset])
    victim = pool.stats().workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    await wait_for(lambda: pool.stats().replaced == 1 and healthy(pool))
    # The replacement was started while the secret was in this process's environment.
    for worker in pool.stats().workers:
        environ = Path(f"/proc/{worker.pid}/environ").read_bytes()
        assert b"s3cr3t" not in environ
        limits = Path(f"/proc/{worker.pid}/limits").read_text()
        assert any(
            line.startswith("Max address space") and str(LIMITS.memory_bytes) in line for line in limits.splitlines()
        )
        assert any(line.startswith("Max core file size") and " 0 " in line for line in limits.splitlines())
        status = Path(f"/proc/{worker.pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status


async def test_stopped_pool_refuses(dataset: Attachment) -> None:
    pool = SandboxPool(1, LIMITS)
    await pool.start()
    pids = [w.pid for w in pool.stats().workers]
    await pool.stop()
    assert all(pid_gone(pid) for pid in pids)
    with pytest.raises(SandboxError) as raised:
        await pool.execute("SELECT 1", [dataset])
    assert raised.value.code == "sandbox.unavailable"


async def test_worker_retired_above_its_memory_mark(dataset: Attachment) -> None:
    """A worker whose address space stays high after a query answers, exits, and is replaced."""
    async with SandboxPool(1, Limits(recycle_fraction=0.01)) as pool:
        first = await pool.execute(AGGREGATE, [dataset])
        await wait_for(lambda: pool.stats().replaced == 1 and healthy(pool))
        second = await pool.execute(AGGREGATE, [dataset])
        assert first.table.equals(second.table)
        assert second.worker_id != first.worker_id


async def test_spill_folder_is_private_and_removed(dataset: Attachment, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    limits = Limits(duckdb_memory_limit="64MB", temp_max_bytes=512 * 1024**2)
    async with SandboxPool(1, limits, temp_dir=spill) as pool:
        (folder,) = spill.iterdir()
        assert folder.stat().st_mode & 0o777 == 0o700
        sql = (
            "SELECT count(*) AS n FROM (SELECT i, any_value(repeat('x', 50) || i) FROM range(3000000) t(i) GROUP BY i)"
        )
        result = await pool.execute(sql, [dataset])
        assert result.table.column("n").to_pylist() == [3_000_000]
    assert list(spill.iterdir()) == []


def test_workers_die_with_the_service(tmp_path: Path, dataset: Attachment) -> None:
    """PDEATHSIG: a service killed outright leaves no worker behind."""
    script = tmp_path / "service.py"
    script.write_text(
        "import asyncio, os, signal, sys\n"
        "from pathlib import Path\n"
        "from exchange.sandbox import Attachment, Limits, SandboxPool\n"
        "async def main():\n"
        "    pool = SandboxPool(2, Limits())\n"
        "    await pool.start()\n"
        f"    attachment = Attachment('ds_conso', Path({str(dataset.path)!r}), 'v1')\n"
        "    running = asyncio.ensure_future(pool.execute(" + repr(UNINTERRUPTIBLE) + ", [attachment]))\n"
        "    await asyncio.sleep(0.3)\n"
        "    print(' '.join(str(w.pid) for w in pool.stats().workers), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == -signal.SIGKILL, completed.stderr
    pids = [int(pid) for pid in completed.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while not all(pid_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived the service"
        time.sleep(0.05)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_fixed_overhead(pool: SandboxPool, dataset: Attachment) -> None:
    """Sandbox round trip against the same query on an in-process connection (figures printed with -s)."""
    direct = open_connection(
        [(dataset.alias, str(dataset.path))], memory_limit="512MB", threads=1, max_execution_ms=2000
    )
    runs = 300
    report = []
    try:
        for name, sql in [("SELECT 1", "SELECT 1"), ("aggregate 1k rows", AGGREGATE)]:
            for _ in range(20):
                await pool.execute(sql, [dataset])
                direct.sql(sql).to_arrow_table()
            sandboxed: list[float] = []
            inproc: list[float] = []
            for _ in range(runs):
                started = time.perf_counter()
                await pool.execute(sql, [dataset])
                sandboxed.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                direct.sql(sql).to_arrow_table()
                inproc.append((time.perf_counter() - started) * 1000)
            overhead = percentile(sandboxed, 0.5) - percentile(inproc, 0.5)
            report.append(
                f"{name}: sandbox p50 {percentile(sandboxed, 0.5):.3f} p99 {percentile(sandboxed, 0.99):.3f} ms, "
                f"in-process p50 {percentile(inproc, 0.5):.3f} p99 {percentile(inproc, 0.99):.3f} ms, "
                f"overhead p50 {overhead:.3f} ms (mean {statistics.fmean(sandboxed) - statistics.fmean(inproc):.3f})"
            )
            assert overhead < 5.0, report[-1]
    finally:
        direct.close()
    print("\n" + "\n".join(report))
