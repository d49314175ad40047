"""Background jobs run every so often (expiry sweeps, retention purges) for as long as a service runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["run_every"]

log = logging.getLogger(__name__)


async def run_every(interval: float, job: Callable[[], object], *, what: str, first_after: float = 0.0) -> None:
    """Run the blocking ``job`` in a worker thread every ``interval`` seconds until cancelled (the first time after
    ``first_after`` seconds). A failure is logged and the job runs again at the next period: it never stops the loop."""
    await asyncio.sleep(first_after)
    while True:
        try:
            await asyncio.to_thread(job)
        except Exception as exc:  # noqa: BLE001 - the next period retries
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        await asyncio.sleep(interval)
