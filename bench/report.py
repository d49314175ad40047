"""Percentiles and the BENCHMARKS.md section writer shared by every benchmark."""

from __future__ import annotations

import platform
import re
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Result", "percentile", "write_section"]

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


@dataclass
class Result:
    """One benchmark's outcome: a markdown table plus notes."""

    name: str
    title: str
    rows: list[list[str]]
    header: list[str]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            f"## {self.title}",
            "",
            f"_Measured {stamp} on {platform.node() or 'this machine'} "
            f"({platform.processor() or platform.machine()}, Python {platform.python_version()})._",
            "",
        ]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "---|" * len(self.header))
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"


def write_section(result: Result, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section of ``result`` in BENCHMARKS.md, between its markers."""
    begin, end = f"<!-- bench:{result.name} -->", f"<!-- /bench:{result.name} -->"
    block = f"{begin}\n{result.markdown()}{end}\n"
    text = (
        path.read_text(encoding="utf-8")
        if path.exists()
        else (
            "# Benchmarks\n\nEvery figure is measured by `make bench` against a baseline measured in the same run "
            "on the same machine, and reported as a ratio. Re-run to refresh; sections are rewritten in place.\n\n"
        )
    )
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
