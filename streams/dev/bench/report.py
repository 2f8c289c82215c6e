"""The benchmark's scenarios and its arithmetic: percentiles, ratios, the table, the JSON.

Pure functions, kept apart from :mod:`streams.dev.bench` (which runs processes and measures) so the
numbers and their presentation are unit-tested without Kafka.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
FAKE_LATENCY_MS = 500.0


# -- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One measured configuration. N is per scenario because an llm.chat job lasts 500 ms: the
    N that makes an echo run long enough to be stable would keep llm-25 busy for minutes."""

    name: str
    kind: str  # "jobstream" or "baseline"
    job_type: str
    replicas: int
    concurrency: int | None
    jobs: int
    quick_jobs: int
    warmup: int
    quick_warmup: int
    upstream_latency_ms: float | None = None
    summary: str = ""

    @property
    def expected_jobs_s(self) -> float | None:
        """Little's law for a handler that only waits: the ceiling the concurrency allows."""
        if self.upstream_latency_ms is None or self.concurrency is None:
            return None
        return self.replicas * self.concurrency / (self.upstream_latency_ms / 1000)

    def job_count(self, *, quick: bool, override: int | None) -> int:
        if override is not None:
            return override
        return self.quick_jobs if quick else self.jobs

    def warmup_count(self, *, quick: bool) -> int:
        return self.quick_warmup if quick else self.warmup


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "baseline", "baseline", "echo", 1, None, 20_000, 2_000, 500, 100,
        summary="bare aiokafka consume-produce-commit loop, no PostgreSQL",
    ),
    Scenario(
        "echo-1", "jobstream", "echo", 1, 25, 20_000, 2_000, 500, 100,
        summary="echo, 1 replica",
    ),
    Scenario(
        "echo-2", "jobstream", "echo", 2, 25, 20_000, 2_000, 500, 100,
        summary="echo, 2 replicas",
    ),
    Scenario(
        "llm-25", "jobstream", "llm.chat", 1, 25, 3_000, 250, 100, 50,
        upstream_latency_ms=FAKE_LATENCY_MS,
        summary="llm.chat against the fake OpenRouter (500 ms)",
    ),
    Scenario(
        "llm-500", "jobstream", "llm.chat", 1, 500, 10_000, 1_500, 500, 200,
        upstream_latency_ms=FAKE_LATENCY_MS,
        summary="llm.chat against the fake OpenRouter (500 ms)",
    ),
)  # fmt: skip
BY_NAME = {s.name: s for s in SCENARIOS}
ALIASES: dict[str, tuple[str, ...]] = {
    "all": tuple(s.name for s in SCENARIOS if s.kind == "jobstream"),
    "echo": ("echo-1", "echo-2"),
    "llm": ("llm-25", "llm-500"),
    # the numbering of the original request, so "1,3" means what the issue said
    "1": ("echo-1",),
    "2": ("echo-2",),
    "3": ("llm-25",),
    "4": ("llm-500",),
    "5": ("baseline",),
}


def parse_scenarios(text: str | None, *, with_baseline: bool = True) -> list[Scenario]:
    """Comma-separated names or aliases, in the canonical run order.

    The baseline is added whenever a jobstream scenario is selected (unless ``with_baseline``
    is false), because a ratio to a baseline measured in another run would compare two
    different machine states.
    """
    tokens = [t.strip().lower() for t in (text or "all").split(",") if t.strip()]
    if not tokens:
        tokens = ["all"]
    wanted: set[str] = set()
    for token in tokens:
        if token in BY_NAME:
            wanted.add(token)
        elif token in ALIASES:
            wanted.update(ALIASES[token])
        else:
            choices = ", ".join([*BY_NAME, *(a for a in ALIASES if not a.isdigit())])
            raise ValueError(f"unknown scenario {token!r}; choose from {choices} (or 1-5)")
    if with_baseline and any(BY_NAME[n].kind == "jobstream" for n in wanted):
        wanted.add("baseline")
    return [s for s in SCENARIOS if s.name in wanted]


# -- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so p50 of two values is
    their mean and p100 is the maximum; raises on an empty sequence rather than inventing 0."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    if not values_ms:
        return {"count": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None,
                "mean": None}  # fmt: skip
    ordered = sorted(values_ms)
    return {
        "count": len(ordered),
        "min": round(ordered[0], 1),
        "p50": round(percentile(ordered, 50), 1),
        "p90": round(percentile(ordered, 90), 1),
        "p99": round(percentile(ordered, 99), 1),
        "max": round(ordered[-1], 1),
        "mean": round(sum(ordered) / len(ordered), 1),
    }


@dataclass(frozen=True)
class Done:
    """One job's first output record as the benchmark saw it."""

    at: float
    """Epoch seconds of the output record's timestamp (stamped after the row was committed)."""
    status: str
    finished_at: float | None = None
    handler_ms: float | None = None
    reemitted: bool = False


def summarize(
    created: Mapping[str, float],
    done: Mapping[str, Done],
    *,
    started: float,
    published: float,
) -> dict[str, Any]:
    """The measured part of a scenario result, from the raw timings only (no I/O)."""
    n = len(created)
    mine = {job_id: done[job_id] for job_id in created if job_id in done}
    result: dict[str, Any] = {
        "jobs": n,
        "completed": len(mine),
        "publish_s": round(published - started, 3),
        "publish_jobs_per_s": round(n / (published - started), 1) if published > started else None,
        "statuses": dict(sorted(Counter(d.status for d in mine.values()).items())),
    }
    if mine:
        end = max(d.at for d in mine.values())
        duration = max(end - started, 1e-6)
        result["duration_s"] = round(duration, 3)
        result["jobs_per_s"] = round(len(mine) / duration, 1)
        # done within 10 % of the publishing time: the consumer side kept up with the producer,
        # so the rate measured is the publisher's and the consumer's ceiling is higher
        result["publisher_bound"] = end - published < 0.1 * (published - started)
    else:
        result["duration_s"] = None
        result["jobs_per_s"] = None
        result["publisher_bound"] = None
    result["latency_ms"] = latency_summary([(d.at - created[j]) * 1000 for j, d in mine.items()])
    result["finished_latency_ms"] = latency_summary(
        [(d.finished_at - created[j]) * 1000 for j, d in mine.items() if d.finished_at is not None]
    )
    result["handler_ms"] = latency_summary(
        [d.handler_ms for d in mine.values() if d.handler_ms is not None]
    )
    return result


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``vs_baseline`` on every result: jobs/s over the baseline's in this same run."""
    base = next(
        (r for r in results if r["name"] == "baseline" and r.get("jobs_per_s") and not r["error"]),
        None,
    )
    for r in results:
        if base is None or not r.get("jobs_per_s") or r["error"]:
            r["vs_baseline"] = None
        else:
            r["vs_baseline"] = round(r["jobs_per_s"] / base["jobs_per_s"], 3)
        expected = r.get("expected_jobs_s")
        ok = expected and r.get("jobs_per_s") and not r["error"]
        r["vs_expected"] = round(r["jobs_per_s"] / expected, 3) if ok else None


# -- output ----------------------------------------------------------------------------------

TABLE_HEADER = ("scenario", "replicas", "concurrency", "jobs", "jobs/s", "p50 ms", "p99 ms",
                "vs baseline")  # fmt: skip


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def render_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table printed at the end (and pasted into reports)."""
    rows = [TABLE_HEADER]
    for r in results:
        latency = r.get("latency_ms") or {}
        rate = "failed" if r.get("error") else _fmt(r.get("jobs_per_s"), ",.1f")
        if r["name"] == "baseline":
            ratio = "1.00 (ref)" if r.get("jobs_per_s") and not r.get("error") else "-"
        else:
            ratio = _fmt(r.get("vs_baseline"), ".2f")
            ratio = ratio if ratio == "-" else f"{ratio}x"
        rows.append(
            (
                r["name"],
                str(r["replicas"]),
                _fmt(r.get("concurrency"), "d"),
                f"{r.get('completed', 0):,}/{r['jobs']:,}"
                if r.get("completed", 0) != r["jobs"]
                else f"{r['jobs']:,}",
                rate,
                _fmt(latency.get("p50"), ",.0f"),
                _fmt(latency.get("p99"), ",.0f"),
                ratio,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if k == 0:
            marks = ["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
            lines.append("| " + " | ".join(marks) + " |")
    return "\n".join(lines)


def render_notes(results: Sequence[Mapping[str, Any]]) -> str:
    """What the table cannot show but a reader needs before trusting it: how busy the machine
    was, CPU per job, and whether the publisher or the upstream was the limit."""
    lines = []
    for r in results:
        cpu = r.get("cpu") or {}
        parts = []
        if cpu.get("consumer_cpu_ms_per_job") is not None:
            parts.append(f"{cpu['consumer_cpu_ms_per_job']:.2f} CPU ms/job")
        if cpu.get("machine_busy") is not None:
            parts.append(f"machine {cpu['machine_busy']:.0%} busy")
        if r.get("publisher_bound"):
            parts.append("kept up with the publisher (rate is the publisher's)")
        if r.get("vs_expected") is not None:
            parts.append(f"{r['vs_expected']:.0%} of the {r['expected_jobs_s']:g}/s ceiling")
        upstream = r.get("upstream") or {}
        if upstream.get("max_in_flight") is not None:
            parts.append(f"upstream max in flight {upstream['max_in_flight']}")
        if r.get("error"):
            parts.append(f"error: {r['error'].splitlines()[0][:200]}")
        if parts:
            lines.append(f"- {r['name']}: " + "; ".join(parts))
    return "\n".join(lines)


RESULT_KEYS: tuple[str, ...] = (
    "name", "kind", "job_type", "summary", "replicas", "concurrency", "partitions",
    "worker_settings", "jobs", "completed", "warmup_jobs", "topic_prefix", "started_at",
    "jobs_per_s", "duration_s", "publish_s", "publish_jobs_per_s", "publisher_bound",
    "latency_ms", "finished_latency_ms", "handler_ms", "statuses",
    "expected_jobs_s", "vs_expected", "vs_baseline",
    "outputs", "rows", "exit_codes", "cpu", "upstream", "worker_metrics", "logs", "error",
)  # fmt: skip
"""Every scenario result has exactly these keys, in this order, failed or not."""
REPORT_KEYS = frozenset(
    {"schema", "tool", "started_at", "finished_at", "complete", "machine", "services",
     "options", "method", "scenarios"}
)  # fmt: skip


def empty_result(spec: Scenario, *, jobs: int, warmup: int, partitions: int) -> dict[str, Any]:
    """Every key a scenario result has, so a failed scenario still has the full JSON shape."""
    result: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    result.update(
        name=spec.name,
        kind=spec.kind,
        job_type=spec.job_type,
        summary=spec.summary,
        replicas=spec.replicas,
        concurrency=spec.concurrency,
        partitions=partitions,
        jobs=jobs,
        completed=0,
        warmup_jobs=warmup,
        expected_jobs_s=spec.expected_jobs_s,
        latency_ms=latency_summary([]),
        finished_latency_ms=latency_summary([]),
        handler_ms=latency_summary([]),
        statuses={},
        outputs={"duplicates": 0, "reemitted": 0, "unparsable": 0},
        exit_codes=[],
        cpu={},
        logs=[],
    )
    return result


METHOD = {
    "throughput": "completed jobs / (last output record timestamp - first publish start)",
    "latency": "output record timestamp - job created_at (producer clock, same machine);"
    " all jobs published at once, so it includes queueing",
    "finished_latency": "jobs.finished_at (taken before the row write) - created_at",
    "warmup": "warm-up jobs are published and waited for before the timed part, then excluded",
    "baseline": "streams.dev.bench.baseline: 1 process, aiokafka consume -> produce -> commit",
    "rate_limit": "llm.chat uses a per-run limiter key (policy file) with an unreachable rate"
    " and the production lease size (unless --lease), so the limiter runs but does not limit,"
    " and the shared 'openrouter' bucket of other users is untouched",
}


def build_report(
    *,
    started_at: str,
    finished_at: str,
    complete: bool,
    machine: Mapping[str, Any],
    services: Mapping[str, Any],
    options: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "tool": "python -m streams.dev.bench",
        "started_at": started_at,
        "finished_at": finished_at,
        "complete": complete,
        "machine": dict(machine),
        "services": dict(services),
        "options": dict(options),
        "method": METHOD,
        "scenarios": [dict(r) for r in results],
    }


def write_report(report: Mapping[str, Any], out: Path, *, latest: bool) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, default=str) + "\n"
    out.write_text(text)
    written = [out]
    if latest:
        link = out.parent / "latest.json"
        link.write_text(text)
        written.append(link)
    return written
