"""``python -m bench [name ...]``: run benchmarks and rewrite their sections of BENCHMARKS.md."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import catalog_propagation, catalog_search, consent, gateway, ingestion, messaging, query, registry
from bench.report import Result, write_section

BENCHMARKS: dict[str, Callable[[], Result]] = {
    "messaging": messaging.run,
    "catalog-search": catalog_search.run,
    "catalog-propagation": catalog_propagation.run,
    "registry": registry.run,
    "ingestion": ingestion.run,
    "query": query.run,
    "consent": consent.run,
    "gateway": gateway.run,
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"running {name}...", flush=True)
        result = BENCHMARKS[name]()
        write_section(result)
        print(result.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
