"""The benchmark's scenarios and its arithmetic: percentiles, ratios, the table, the JSON.

Pure functions, kept apart from :mod:`jobstream.streams.dev.bench` (which runs processes and
measures) so the numbers and their presentation are unit-tested without Kafka.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
FAKE_LATENCY_MS = 500.0
BASELINES = ("faust", "aiokafka")
"""The yardsticks every jobstream scenario is divided by, in the same run."""


# -- scenarios -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One measured configuration. N is per scenario because an llm.chat job lasts 500 ms: the
    N that makes an echo run long enough to be stable would keep llm-25 busy for minutes, and
    the bare consumers need five times an echo run's N to run for more than a second or two
    (and so that faust's one stall of ~1.2 s per run, when the publisher stops and its fetch
    waits out ``fetch_max_wait_ms=1500`` on idle partitions, weighs less)."""

    name: str
    kind: str  # "jobstream", "baseline" (a bare consumer), "upstream" (the fake server alone)
    # or "soak" (streams/dev/bench/soak.py)
    job_type: str
    replicas: int
    concurrency: int | None
    jobs: int
    quick_jobs: int
    warmup: int
    quick_warmup: int
    upstream_latency_ms: float | None = None
    summary: str = ""
    slow_every: int | None = None
    """Every this many jobs one is a ``sleep`` of ``slow_s`` instead of ``job_type``."""
    slow_s: float = 2.0
    publish_rate: float | None = None
    """Jobs per second the timed part is published at (open loop); None: all at once."""

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

    def job_at(self, i: int) -> tuple[str, dict[str, Any]]:
        """The type and payload of the scenario's i-th job (timed or warm-up alike)."""
        if self.slow_every and i % self.slow_every == self.slow_every - 1:
            return "sleep", {"seconds": self.slow_s}
        return self.job_type, payload_for(self.job_type, i)

    @property
    def slow_slots(self) -> float | None:
        """Slots the slow jobs hold on average when published at ``publish_rate`` (Little's
        law); below the concurrency, an echo job never waits for a free slot, so any wait it
        shows is head-of-line blocking behind a slow job."""
        if not self.slow_every or not self.publish_rate:
            return None
        return self.publish_rate / self.slow_every * self.slow_s

    @property
    def slow_bound_jobs_s(self) -> float | None:
        """What the slow jobs alone allow: each holds a slot for ``slow_s`` once every
        ``slow_every`` jobs, so even with instant fast jobs the whole mix cannot go faster."""
        if not self.slow_every or self.concurrency is None:
            return None
        return self.replicas * self.concurrency * self.slow_every / self.slow_s


def pace_wait(started: float, sent: int, rate: float | None, now: float) -> float:
    """Seconds to wait before sending job number ``sent`` (0-based) of a batch published at
    ``rate`` jobs/s from ``started``: the schedule is fixed in advance (open loop), so a late
    send is not made up for by sending the next ones later too."""
    if not rate:
        return 0.0
    return max(0.0, started + sent / rate - now)


def payload_for(job_type: str, i: int) -> dict[str, Any]:
    """Shaped like a real caller's: an llm.chat request with a short prompt, a small echo."""
    if job_type == "llm.chat":
        return {
            "messages": [{"role": "user", "content": f"benchmark job {i}: say hello back"}],
            "max_tokens": 16,
        }
    return {"n": i, "text": "benchmark"}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "faust", "baseline", "echo", 1, 1, 100_000, 30_000, 500, 100,
        summary="bare faust agent (kafka:// transport, raw serializers): consume and count only",
    ),
    Scenario(
        "aiokafka", "baseline", "echo", 1, None, 100_000, 30_000, 500, 100,
        summary="bare aiokafka consume-produce-commit loop, no PostgreSQL",
    ),
    Scenario(
        "upstream", "upstream", "llm.chat", 1, 500, 10_000, 1_500, 500, 500,
        upstream_latency_ms=FAKE_LATENCY_MS,
        summary="the fake OpenRouter alone (500 ms), driven by one aiohttp client at 500",
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
        "mixed-1", "jobstream", "echo", 1, 25, 4_500, 1_500, 500, 100,
        slow_every=20, slow_s=2.0, publish_rate=150.0,
        summary="echo, a 2 s sleep every 20th, published at 150/s: do sleeps hold back echo?",
    ),
    Scenario(
        "echo-c2000", "jobstream", "echo", 1, 2000, 20_000, 3_000, 500, 100,
        summary="echo, 1 replica at concurrency 2000: memory under load",
    ),
    Scenario(
        "soak", "soak", "echo", 2, 25, 108_000, 108_000, 0, 0,
        summary="30 min of a steady mix (echo, sleep, llm.chat, retries, dead letters) at 60/s:"
        " memory, tasks, lag and p99 at the start and the end (not in all)",
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
    Scenario(
        "timed-100k", "timed", "echo", 2, 100, 100_000, 20_000, 0, 0,
        summary="100,000 scheduled rows due across one minute, published by the dispatcher",
    ),
    Scenario(
        "timed-burst", "timed", "echo", 2, 100, 100_000, 20_000, 0, 0,
        summary="100,000 scheduled rows all due at the same instant: the dispatcher's rate",
    ),
    Scenario(
        "timed-tier", "timed", "echo", 2, 100, 100_000, 20_000, 0, 0,
        summary="the same minute held by a retry tier's forwarders (5000 a replica) instead",
    ),
)  # fmt: skip
BY_NAME = {s.name: s for s in SCENARIOS}
ALIASES: dict[str, tuple[str, ...]] = {
    "all": tuple(s.name for s in SCENARIOS if s.kind == "jobstream"),
    "echo": ("echo-1", "echo-2"),
    "llm": ("llm-25", "llm-500"),
    "baseline": BASELINES,
    "timed": ("timed-100k", "timed-burst", "timed-tier"),
    # the numbering of the original request, so "1,3" means what the issue said
    "1": ("echo-1",),
    "2": ("echo-2",),
    "3": ("llm-25",),
    "4": ("llm-500",),
    "5": BASELINES,
}


def parse_scenarios(text: str | None, *, with_baseline: bool = True) -> list[Scenario]:
    """Comma-separated names or aliases, in the canonical run order.

    The baselines are added whenever a jobstream scenario is selected, and the fake server
    alone whenever an llm one is (unless ``with_baseline`` is false), because a ratio to a
    baseline measured in another run would compare two different machine states.
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
        wanted.update(BASELINES)
    if with_baseline and any(BY_NAME[n].upstream_latency_ms for n in wanted):
        wanted.add("upstream")
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


def summarize_count(
    n: int,
    counted: Mapping[str, Any] | None,
    *,
    started: float,
    published: float,
) -> dict[str, Any]:
    """The measured part of a consumer that reports only when it has seen the first and the
    n-th event (the bare faust agent, which has no output topic to time jobs by): throughput
    from the first publish to the n-th event; no latency per job."""
    result: dict[str, Any] = {
        "jobs": n,
        "publish_s": round(published - started, 3),
        "publish_jobs_per_s": round(n / (published - started), 1) if published > started else None,
        "duration_s": None,
        "jobs_per_s": None,
        "publisher_bound": None,
    }
    if not counted:
        result["completed"] = 0
        return result
    result["completed"] = int(counted["events"])
    end = float(counted["last_at"])
    duration = max(end - started, 1e-6)
    result["duration_s"] = round(duration, 3)
    result["jobs_per_s"] = round(result["completed"] / duration, 1)
    result["publisher_bound"] = end - published < 0.1 * (published - started)
    return result


def _ok(r: Mapping[str, Any] | None) -> bool:
    return r is not None and bool(r.get("jobs_per_s")) and not r.get("error")


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Each result's jobs/s over each baseline's in this same run (``vs_faust``,
    ``vs_aiokafka``), and over its ceiling: the lower of what its concurrency allows
    (``expected_jobs_s``, Little's law) and what the fake server sustained alone
    (the ``upstream`` result), when it talks to one."""
    by_name = {r["name"]: r for r in results}
    upstream = by_name.get("upstream")
    for r in results:
        for base_name in BASELINES:
            base = by_name.get(base_name)
            key = f"vs_{base_name}"
            consumer = r.get("kind") != "upstream"  # requests/s of a server: not comparable
            if consumer and _ok(r) and base is not None and _ok(base):
                r[key] = round(r["jobs_per_s"] / base["jobs_per_s"], 3)
            else:
                r[key] = None
        ceilings = [r.get("expected_jobs_s")]
        if r.get("kind") == "jobstream" and r.get("expected_jobs_s") and _ok(upstream):
            assert upstream is not None
            ceilings.append(upstream["jobs_per_s"])
        known = [c for c in ceilings if c]
        r["ceiling_jobs_s"] = min(known) if known else None
        ok = r["ceiling_jobs_s"] and _ok(r)
        r["vs_ceiling"] = round(r["jobs_per_s"] / r["ceiling_jobs_s"], 3) if ok else None


def ratio_of(results: Sequence[Mapping[str, Any]], top: str, bottom: str) -> float | None:
    """jobs/s of one scenario over another's (``echo-2 / echo-1``: what a second replica
    adds), or None when either is missing or failed."""
    by_name = {r["name"]: r for r in results}
    a, b = by_name.get(top), by_name.get(bottom)
    if a is None or b is None or not _ok(a) or not _ok(b):
        return None
    return round(float(a["jobs_per_s"]) / float(b["jobs_per_s"]), 3)


def peak_rss_mb(samples: Mapping[str, Sequence[int]]) -> dict[str, float | None]:
    """Highest RSS per process over the timed window, in MB (10^6 bytes), and the highest of
    them (``max``): the figure a replica's memory limit has to cover."""
    peaks: dict[str, float | None] = {
        name: round(max(values) / 1e6, 1) if values else None for name, values in samples.items()
    }
    known = [v for v in peaks.values() if v is not None]
    peaks["max"] = max(known) if known else None
    return peaks


def cpu_ms_per_job(cpu_s: float | None, jobs: int) -> float | None:
    if cpu_s is None or jobs <= 0:
        return None
    return round(cpu_s * 1000 / jobs, 3)


# -- profiles --------------------------------------------------------------------------------


def parse_collapsed(text: str) -> dict[tuple[str, ...], int]:
    """py-spy's raw (collapsed) format: one ``outer;...;inner COUNT`` line per distinct stack,
    outermost frame first. Line numbers are dropped from each frame (``f (mod.py:12)`` becomes
    ``f (mod.py)``) so that a function's samples add up however many lines of it were sampled.
    Lines that do not end in a count are skipped: a truncated file still yields what it has."""
    stacks: dict[tuple[str, ...], int] = {}
    for line in text.splitlines():
        head, sep, count = line.rstrip().rpartition(" ")
        if not sep or not head or not count.isdigit():
            continue
        frames = tuple(_without_line(f) for f in head.split(";") if f)
        if frames:
            stacks[frames] = stacks.get(frames, 0) + int(count)
    return stacks


def _without_line(frame: str) -> str:
    name, sep, where = frame.rpartition(" (")
    if not sep or not where.endswith(")"):
        return frame
    path, colon, line = where[:-1].rpartition(":")
    return f"{name} ({path})" if colon and line.isdigit() else frame


TRUNK = ("<frozen runpy>", "click/core.py", "asyncio/runners.py", "asyncio/base_events.py",
         "asyncio/events.py", "threading.py", "mode/worker.py", "mode/threads.py",
         "streams/cli.py", "streams/command.py", "streams/worker/service.py")  # fmt: skip
"""Files of the frames under nearly every sample of their thread (interpreter and thread start,
the command line, the worker's entry, the event loop's dispatch of a callback): at the top of
an inclusive ranking they would hide the frames that tell where the time goes, so they are
ranked by self time only."""


def _in_trunk(frame: str) -> bool:
    _, sep, where = frame.rpartition(" (")
    return bool(sep) and where.removesuffix(")").endswith(TRUNK)


def top_frames(stacks: Mapping[tuple[str, ...], int], n: int = 15) -> dict[str, Any]:
    """The ``n`` functions with the most samples, by self time (innermost frame) and by
    inclusive time (anywhere on the stack, counted once per sample even when recursive, the
    :data:`TRUNK` left out), each as a percentage of all samples."""
    total = sum(stacks.values())
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        own[frames[-1]] += count
        for frame in set(frames):
            if not _in_trunk(frame):
                inclusive[frame] += count

    def ranked(counter: Counter[str]) -> list[dict[str, Any]]:
        order = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        return [
            {"frame": frame, "samples": c, "pct": round(100 * c / total, 1)} for frame, c in order
        ]

    return {"samples": total, "self": ranked(own), "inclusive": ranked(inclusive)}


def render_profile(name: str, profile: Mapping[str, Any]) -> str:
    """The two rankings side by side in text, for the terminal."""
    if profile.get("error"):
        return f"profile of {name}: not recorded: {profile['error']}"
    lines = [f"profile of {name} ({profile['samples']:,} samples, {profile.get('file', '-')}):"]
    for label in ("self", "inclusive"):
        lines.append(f"  by {label} time:")
        lines.extend(f"    {f['pct']:5.1f}%  {f['frame']}" for f in profile[label])
    return "\n".join(lines)


# -- output ----------------------------------------------------------------------------------

TABLE_HEADER = ("scenario", "replicas", "concurrency", "jobs", "jobs/s", "p50 ms", "p99 ms",
                "CPU ms/job", "peak RSS MB", "vs faust", "vs aiokafka", "% ceiling")  # fmt: skip


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _ratio_cell(r: Mapping[str, Any], base_name: str) -> str:
    if r["name"] == base_name:
        return "1.00 (ref)" if _ok(r) else "-"
    ratio = _fmt(r.get(f"vs_{base_name}"), ".2f")
    return ratio if ratio == "-" else f"{ratio}x"


def _jobs_cell(completed: int, jobs: int) -> str:
    return f"{completed:,}/{jobs:,}" if completed != jobs else f"{jobs:,}"


def _table_rows(r: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """A scenario's row, then one row per job type when it mixes them (rate and latency only:
    CPU and memory belong to the process, not to one type)."""
    latency = r.get("latency_ms") or {}
    cpu = r.get("cpu") or {}
    rss = r.get("rss_mb") or {}
    rows = [
        (
            r["name"],
            str(r["replicas"]),
            _fmt(r.get("concurrency"), "d"),
            _jobs_cell(r.get("completed") or 0, r["jobs"]),
            "failed" if r.get("error") else _fmt(r.get("jobs_per_s"), ",.1f"),
            _fmt(latency.get("p50"), ",.0f"),
            _fmt(latency.get("p99"), ",.0f"),
            _fmt(cpu.get("consumer_cpu_ms_per_job"), ".2f"),
            _fmt(rss.get("max"), ",.0f"),
            *(_ratio_cell(r, b) for b in BASELINES),
            _fmt(r["vs_ceiling"] * 100 if r.get("vs_ceiling") is not None else None, ".0f"),
        )
    ]
    for job_type, part in (r.get("by_type") or {}).items():
        lat = part.get("latency_ms") or {}
        rows.append(
            (
                f"  {r['name']} {job_type}",
                "",
                "",
                _jobs_cell(part.get("completed") or 0, part["jobs"]),
                _fmt(part.get("jobs_per_s"), ",.1f"),
                _fmt(lat.get("p50"), ",.0f"),
                _fmt(lat.get("p99"), ",.0f"),
                *([""] * (len(TABLE_HEADER) - 7)),
            )
        )
    return rows


def render_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table printed at the end (and pasted into reports)."""
    rows: list[tuple[str, ...]] = [TABLE_HEADER]
    for r in results:
        rows.extend(_table_rows(r))
    return markdown_table(rows)


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A header row and its rows as an aligned Markdown table: the first column to the left,
    the figures to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
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


TIMED_HEADER = ("timed scenario", "jobs", "due over s", "dispatch p50 ms", "dispatch p99 ms",
                "dispatched/s", "busiest s", "start p50 ms", "start p99 ms", "all done after s",
                "peak RSS MB")  # fmt: skip


def render_timed_table(results: Sequence[Mapping[str, Any]]) -> str | None:
    """The timed scenarios' own table (:mod:`jobstream.streams.dev.bench.timed`): the
    dispatcher's lateness and rate, and each job's start after its due time."""
    rows: list[tuple[str, ...]] = [TIMED_HEADER]
    for r in results:
        t = r.get("timed")
        if r.get("kind") != "timed":
            continue
        if not t:
            rows.append((r["name"], f"{r['jobs']:,}", *(["failed"] + [""] * 8)))
            continue
        dispatch = t.get("dispatch_lateness_ms") or {}
        start = t.get("start_lateness_ms") or {}
        rows.append(
            (
                r["name"],
                _jobs_cell(r.get("completed") or 0, r["jobs"]),
                _fmt(t.get("due_span_s"), ".0f"),
                _fmt(dispatch.get("p50"), ",.0f"),
                _fmt(dispatch.get("p99"), ",.0f"),
                _fmt(t.get("dispatch_rate_per_s"), ",.0f"),
                _fmt(t.get("dispatch_busiest_second"), ",d"),
                _fmt(start.get("p50"), ",.0f"),
                _fmt(start.get("p99"), ",.0f"),
                _fmt(t.get("last_succeeded_after_first_due_s"), ",.1f"),
                _fmt((r.get("rss_mb") or {}).get("max"), ",.0f"),
            )
        )
    if len(rows) == 1:
        return None
    widths = [max(len(row[i]) for row in rows) for i in range(len(TIMED_HEADER))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if k == 0:
            lines.append(
                "| "
                + " | ".join(
                    "-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)
                )
                + " |"
            )
    return "\n".join(lines)


def _ceiling_note(r: Mapping[str, Any]) -> str | None:
    if r.get("vs_ceiling") is None:
        return None
    why = f"{r['expected_jobs_s']:g}/s by concurrency"
    if r["ceiling_jobs_s"] != r["expected_jobs_s"]:
        why = f"{r['ceiling_jobs_s']:g}/s the fake server sustained alone, below {why}"
    return f"{r['vs_ceiling']:.0%} of its ceiling ({why})"


def _mix_note(r: Mapping[str, Any]) -> str | None:
    if r.get("slow_slots"):
        return (
            f"published at {r['publish_rate']:g}/s, the sleep jobs hold {r['slow_slots']:g}"
            f" of the {r['replicas'] * r['concurrency']} slots: an echo job that waits"
            " seconds waits behind a sleep, not for a slot"
        )
    if r.get("slow_bound_jobs_s"):
        return f"the sleep jobs alone bound the mix at {r['slow_bound_jobs_s']:g} jobs/s"
    return None


def render_notes(results: Sequence[Mapping[str, Any]]) -> str:
    """What the table cannot show but a reader needs before trusting it: how busy the machine
    was, whether the publisher or the upstream was the limit, what a second replica adds."""
    lines = []
    for r in results:
        cpu = r.get("cpu") or {}
        parts = []
        if r.get("kind") == "upstream" and cpu.get("consumer_cpu_ms_per_job") is not None:
            parts.append("CPU and RSS are the fake server's")
        if cpu.get("machine_busy") is not None:
            parts.append(f"machine {cpu['machine_busy']:.0%} busy")
        if r.get("publisher_bound"):
            parts.append("kept up with the publisher (rate is the publisher's)")
        ceiling = _ceiling_note(r)
        if ceiling:
            parts.append(ceiling)
        mix = _mix_note(r)
        if mix:
            parts.append(mix)
        upstream = r.get("upstream") or {}
        if upstream.get("max_in_flight") is not None:
            parts.append(f"upstream max in flight {upstream['max_in_flight']}")
        if r.get("profile"):
            error = r["profile"].get("error")
            parts.append(
                f"no profile: {error}" if error else "profiled (py-spy pauses it for each sample)"
            )
        if r.get("error"):
            parts.append(f"error: {r['error'].splitlines()[0][:200]}")
        if parts:
            lines.append(f"- {r['name']}: " + "; ".join(parts))
    scaling = ratio_of(results, "echo-2", "echo-1")
    if scaling is not None:
        lines.append(
            f"- echo-2 / echo-1 = {scaling:.2f} (both replicas share the machine's cores with"
            " the broker, PostgreSQL and the benchmark's own publisher and reader)"
        )
    return "\n".join(lines)


RESULT_KEYS: tuple[str, ...] = (
    "name", "kind", "job_type", "summary", "replicas", "concurrency", "partitions",
    "worker_settings", "jobs", "completed", "warmup_jobs", "topic_prefix", "started_at",
    "jobs_per_s", "duration_s", "publish_s", "publish_jobs_per_s", "publisher_bound",
    "latency_ms", "finished_latency_ms", "handler_ms", "statuses", "by_type", "publish_rate",
    "expected_jobs_s", "slow_slots", "slow_bound_jobs_s", "ceiling_jobs_s", "vs_ceiling",
    "vs_faust", "vs_aiokafka", "rss_mb", "soak",
    "outputs", "rows", "exit_codes", "cpu", "upstream", "worker_metrics", "profile", "logs",
    "timed", "timed_parked_s", "error",
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
        publish_rate=spec.publish_rate,
        slow_slots=spec.slow_slots,
        slow_bound_jobs_s=spec.slow_bound_jobs_s,
        rss_mb={},
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
    "aiokafka": "jobstream.streams.dev.bench.baseline: 1 process, aiokafka consume -> produce"
    " -> commit",
    "faust": "jobstream.streams.dev.bench.faust_baseline: 1 faust worker, one agent at"
    " concurrency 1"
    " iterating stream.events() and counting; it prints the wall time of the first and the"
    " n-th event it is told to expect, and throughput runs from the first publish to that n-th"
    " event (no output topic, so no latency per job)",
    "upstream": "the fake OpenRouter process alone, driven from the benchmark process by one"
    " aiohttp session at the llm-500 concurrency with requests shaped like llm.chat's;"
    " requests/s = N / (last answer - first request)",
    "ceiling": "min(replicas x concurrency / upstream latency, the upstream row's requests/s)",
    "cpu_ms_per_job": "user+system CPU of the consuming processes (replicas or baseline) over"
    " the timed window, divided by the jobs completed",
    "rss": "resident set size of each consuming process, sampled every 0.2 s with psutil during"
    " the timed window; the table shows the highest replica's peak (MB = 10^6 bytes)",
    "profile": "--profile: py-spy record --rate 100 --format raw of the first replica over the"
    " timed window (idle threads not sampled; py-spy pauses the process for each sample, so"
    " a profiled run's figures are a little lower than an unprofiled one's); self = samples"
    " whose innermost frame is the function, inclusive = samples with the function anywhere"
    " on the stack (the event loop's trunk left out)",
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
        "tool": "python -m jobstream.streams.dev.bench",
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
