"""The soak scenario of the benchmark: two replicas under a steady mixed load for half an hour,
to see whether anything that should stay flat grows (memory, asyncio tasks, lag, latency).

It is not part of ``all``, so neither ``make bench`` nor CI runs it; run it on its own:
``make bench BENCH_ARGS="--scenarios soak"`` (30 minutes), or shorter to try it,
``--scenarios soak --soak-minutes 4``. ``--soak-rate`` sets the jobs/s (default 60) and
``--soak-sample-s`` the time between samples (default 10).

The load is open loop: job i is published at ``i / rate`` seconds after the start whatever the
replicas do (``Bench._publish``, as for mixed-1), ``rate x minutes`` jobs in all. Of every 100
(:func:`job_at`, spread over the 100 rather than in runs):

* 75 ``echo``;
* 10 ``sleep`` of 0.5 to 2 s;
* 10 ``llm.chat`` against the fake OpenRouter (500 ms), under a limiter key of this run whose
  limit is never reached;
* 3 ``sleep`` jobs that fail retryably once or twice, then succeed (``retried``);
* 1 ``sleep`` job that fails fatally: dead-lettered at once (``fatal``);
* 1 ``sleep`` job that always fails retryably: dead-lettered when its 5 attempts are spent
  (``exhausted``).

The workers run with retry tiers of 2 s and 5 s (``JOBSTREAM_RETRY_TIERS_S``), so a retried
job is done within seconds, and an exhausted one 17 s of tiers after its first attempt.

Every ``sample_s`` the benchmark samples each replica: its RSS (psutil) and CPU time, and from
its ``/metrics`` the asyncio tasks on its event loop (``jobstream_event_loop_tasks``), the jobs
in flight, running and waiting for a slot, its consumer lag (events, summed over the partitions
it owns, and the age of the oldest unfinished one) and the events its retry tiers hold. After
the run, each sample gets the jobs published and done by then and the latency of the jobs whose
outcome came in since the sample before (the outcome record's timestamp minus the job's
``created_at``, as in the other scenarios): every sample is in the JSON (``soak.samples``), so
the whole run can be plotted.

The report compares two windows of ``window_s`` (10 % of the run, at least one sample interval,
at most 60 s): the start window opens after a warm-up of 10 % of the run (3 minutes of 30),
the end window closes with the load. For each: the mean RSS, tasks, jobs in flight and lag of
each replica, the CPU it used, the outcomes per second and the p99 latency of each kind of job.
The verdict is on memory: each replica's mean RSS over the end window is within 10 % of its
mean over the start window. Jobs are also counted by status (succeeded, of which after a retry;
dead-lettered) and every job's status is checked against its kind: a job with no outcome, or
with the wrong one, fails the scenario after its figures are stored.

In the common table the soak has a row like any scenario (its jobs/s runs to the last outcome,
so it includes the wait for the last retries; its peak RSS is the highest sample) and a row
per kind of job over the whole run. A run stopped while it publishes keeps its samples
(``soak.samples``) but has no latency or verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from jobstream.streams.dev.bench.report import (
    FAKE_LATENCY_MS,
    Done,
    Scenario,
    cpu_ms_per_job,
    latency_summary,
    markdown_table,
    payload_for,
    peak_rss_mb,
    summarize,
)
from jobstream.streams.dev.bench.sampling import RssSampler, metrics_text

if TYPE_CHECKING:
    from jobstream.streams.dev.bench.outputs import OutputCollector
    from jobstream.streams.dev.bench.run import Bench, Published
    from jobstream.streams.dev.process import Child

RETRY_TIERS_S = (2.0, 5.0)
MEMORY_TOLERANCE = 0.10
"""The most a replica's RSS may change from the start window to the end window."""
WARMUP_SHARE = 0.10
WINDOW_MAX_S = 60.0
LOG_EVERY_S = 60.0
"""How often the benchmark says on stderr how the soak is going."""

# -- the load --------------------------------------------------------------------------------

MIX: tuple[tuple[str, int], ...] = (
    ("echo", 75),
    ("sleep", 10),
    ("llm.chat", 10),
    ("retried", 3),
    ("fatal", 1),
    ("exhausted", 1),
)
"""Each kind of job and how many of every 100 are of that kind."""
KINDS = tuple(kind for kind, _ in MIX)
EXPECTED_STATUS = {kind: "succeeded" for kind in KINDS} | {
    "fatal": "dead_lettered",
    "exhausted": "dead_lettered",
}
_CYCLE = sum(weight for _, weight in MIX)
_SPREAD = 37
"""Coprime with the cycle of 100: job i takes slot ``i * 37 % 100``, so each hundred jobs has
each kind's exact share and the rare kinds are not published back to back."""


def kind_at(i: int) -> str:
    slot = i * _SPREAD % _CYCLE
    for kind, weight in MIX:
        if slot < weight:
            return kind
        slot -= weight
    raise AssertionError("the weights add up to the cycle")


def job_at(i: int) -> tuple[str, dict[str, Any]]:
    """The type and payload of the soak's i-th job."""
    kind = kind_at(i)
    if kind == "echo" or kind == "llm.chat":
        return kind, payload_for(kind, i)
    if kind == "sleep":
        return "sleep", {"seconds": round(0.5 + (i % 16) / 10, 1)}
    if kind == "retried":
        return "sleep", {"seconds": 0.1, "fail_attempts": 1 + i % 2}
    if kind == "fatal":
        return "sleep", {"seconds": 0.1, "fatal": True}
    return "sleep", {"seconds": 0.1, "fail_attempts": 1000}  # more than any max_attempts


@dataclass(frozen=True)
class SoakLoad(Scenario):
    """The soak scenario as ``Bench`` publishes it: the mix instead of one type, at a rate."""

    def job_at(self, i: int) -> tuple[str, dict[str, Any]]:
        return job_at(i)

    @classmethod
    def of(cls, spec: Scenario, rate: float) -> SoakLoad:
        fields = asdict(spec) | {"publish_rate": rate, "upstream_latency_ms": FAKE_LATENCY_MS}
        return cls(**fields)


# -- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 30.0
    rate: float = 60.0
    """Jobs published per second."""
    sample_s: float = 10.0

    @property
    def duration_s(self) -> float:
        return self.minutes * 60

    @property
    def jobs(self) -> int:
        return max(1, round(self.rate * self.duration_s))

    @property
    def warmup_s(self) -> float:
        return WARMUP_SHARE * self.duration_s

    @property
    def window_s(self) -> float:
        return min(max(WARMUP_SHARE * self.duration_s, self.sample_s), WINDOW_MAX_S)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SoakOptions:
        return cls(minutes=args.soak_minutes, rate=args.soak_rate, sample_s=args.soak_sample_s)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("soak", "the soak scenario (--scenarios soak)")
    group.add_argument(
        "--soak-minutes", type=_positive, default=30.0, help="minutes of load (default 30)"
    )
    group.add_argument(
        "--soak-rate", type=_positive, default=60.0, help="jobs/s published (default 60)"
    )
    group.add_argument(
        "--soak-sample-s", type=_positive, default=10.0, help="seconds between samples"
    )


# -- what a replica says about itself --------------------------------------------------------

GAUGES: dict[str, tuple[str, Callable[[Sequence[float]], float]]] = {
    "jobstream_event_loop_tasks": ("tasks", sum),
    "jobstream_in_flight_jobs": ("in_flight", sum),
    "jobstream_running_jobs": ("running", sum),
    "jobstream_waiting_jobs": ("waiting", sum),
    "jobstream_consumer_lag_events": ("lag_events", sum),
    "jobstream_consumer_lag_seconds": ("lag_s", max),
    "jobstream_retry_waiting_events": ("retry_waiting", sum),
}
"""The gauges sampled, each folded over its labels (partitions) into one figure."""


def replica_figures(text: str) -> dict[str, float]:
    """The :data:`GAUGES` of one ``/metrics`` text (0 for one with no series yet, such as the
    lag before the first measurement) and the jobs finished so far by outcome
    (``completed_succeeded``, ``completed_retried``, ...)."""
    values: dict[str, list[float]] = {label: [] for label, _ in GAUGES.values()}
    completed: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in GAUGES:
            label, _ = GAUGES[family.name]
            values[label].extend(s.value for s in family.samples if s.name == family.name)
        elif family.name == "jobstream_jobs_completed":
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = f"completed_{s.labels['outcome']}"
                    completed[key] = completed.get(key, 0.0) + s.value
    out = {label: fold(values[label]) if values[label] else 0.0 for label, fold in GAUGES.values()}
    return out | dict(sorted(completed.items()))


# -- windows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    at: float
    """Epoch seconds of the job's outcome record."""
    latency_ms: float
    kind: str
    status: str


class Completions:
    """Every job's outcome in the order they came in, to cut into windows of time."""

    def __init__(
        self, created: Mapping[str, float], done: Mapping[str, Done], kinds: Mapping[str, str]
    ) -> None:
        rows = [
            Completion(d.at, (d.at - created[job_id]) * 1000, kinds[job_id], d.status)
            for job_id, d in ((j, done.get(j)) for j in created)
            if d is not None
        ]
        self.rows = sorted(rows, key=lambda c: c.at)
        self.ats = [c.at for c in self.rows]

    def done_by(self, t: float) -> int:
        return bisect_right(self.ats, t)

    def between(self, t0: float, t1: float) -> list[Completion]:
        """The outcomes that came in after ``t0`` and by ``t1``."""
        return self.rows[bisect_right(self.ats, t0) : bisect_right(self.ats, t1)]


def window_latency(part: Sequence[Completion]) -> dict[str, Any]:
    """The latency of the jobs done in one window: all of them and each kind."""
    by_kind = {
        kind: latency_summary([c.latency_ms for c in part if c.kind == kind]) for kind in KINDS
    }
    return {"all": latency_summary([c.latency_ms for c in part]), **by_kind}


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def cpu_cores(samples: Sequence[Mapping[str, Any]], name: str) -> float | None:
    """Cores one replica used from the first to the last of ``samples`` (1.0: one core busy),
    from the CPU time each sample read."""
    read: list[tuple[float, float]] = [
        (s["at"], s["replicas"][name]["cpu_s"])
        for s in samples
        if s["replicas"].get(name, {}).get("cpu_s") is not None
    ]
    if len(read) < 2 or read[-1][0] <= read[0][0]:
        return None
    return round((read[-1][1] - read[0][1]) / (read[-1][0] - read[0][0]), 2)


def phase_figures(
    samples: Sequence[Mapping[str, Any]], done: Completions, t0: float, t1: float
) -> dict[str, Any]:
    """One window of the run, from epoch ``t0`` to ``t1``: per replica the means of the
    samples taken in it (and the highest tasks and lag) and the CPU cores it used (from the
    sample before the window, which opens its first interval), and the jobs done in it, their
    rate and latency."""
    inside = [s for s in samples if t0 <= s["at"] <= t1]
    opening = [s for s in samples if s["at"] < t0][-1:]
    names = sorted({name for s in inside for name in s["replicas"]})
    replicas: dict[str, Any] = {}
    for name in names:
        seen = [s["replicas"][name] for s in inside if name in s["replicas"]]

        def values(key: str, seen: list[dict[str, Any]] = seen) -> list[float]:
            return [v[key] for v in seen if v.get(key) is not None]

        replicas[name] = {
            "rss_mb": _mean(values("rss_mb")),
            "tasks": _mean(values("tasks")),
            "tasks_max": max(values("tasks"), default=None),
            "in_flight": _mean(values("in_flight")),
            "waiting": _mean(values("waiting")),
            "lag_events": _mean(values("lag_events")),
            "lag_events_max": max(values("lag_events"), default=None),
            "lag_s_max": max(values("lag_s"), default=None),
            "cpu_cores": cpu_cores([*opening, *inside], name),
        }
    part = done.between(t0, t1)
    return {
        "from_at": t0,
        "to_at": t1,
        "samples": len(inside),
        "replicas": replicas,
        "jobs_done": len(part),
        "jobs_per_s": round(len(part) / (t1 - t0), 1) if t1 > t0 else None,
        "statuses": {
            status: sum(1 for c in part if c.status == status)
            for status in sorted({c.status for c in part})
        },
        "latency_ms": window_latency(part),
    }


def memory_verdict(
    start: Mapping[str, float | None],
    end: Mapping[str, float | None],
    tolerance: float = MEMORY_TOLERANCE,
) -> dict[str, Any]:
    """Whether each replica's RSS at the end is within ``tolerance`` of its RSS at the start;
    ``within`` is None when a replica has no figure for either window."""
    replicas: dict[str, Any] = {}
    changes: list[float | None] = []
    for name in sorted(set(start) | set(end)):
        a, b = start.get(name), end.get(name)
        change = (b - a) / a if a and b is not None else None
        changes.append(change)
        replicas[name] = {
            "start_mb": a,
            "end_mb": b,
            "change_pct": round(change * 100, 1) if change is not None else None,
        }
    within = None
    if changes and all(c is not None for c in changes):
        within = all(abs(c) <= tolerance for c in changes if c is not None)
    return {"tolerance_pct": round(tolerance * 100, 1), "within": within, "replicas": replicas}


def verdict_line(verdict: Mapping[str, Any]) -> str:
    answer = {True: "yes", False: "no", None: "unknown"}[verdict["within"]]
    parts = []
    for name, r in verdict["replicas"].items():
        change = "-" if r["change_pct"] is None else f"{r['change_pct']:+.1f} %"
        start = "-" if r["start_mb"] is None else f"{r['start_mb']:.1f} MB"
        end = "-" if r["end_mb"] is None else f"{r['end_mb']:.1f} MB"
        parts.append(f"{name}: start {start}, end {end}, change {change}")
    tolerance = f"±{verdict['tolerance_pct']:g} %"
    return f"memory within {tolerance} after warm-up: {answer} ({'; '.join(parts)})"


def status_check(
    ids: Sequence[str], kinds: Mapping[str, str], done: Mapping[str, Done]
) -> dict[str, int]:
    """How many jobs have no outcome, and how many an outcome their kind should not have."""
    missing = sum(1 for j in ids if j not in done)
    unexpected = sum(1 for j in ids if j in done and done[j].status != EXPECTED_STATUS[kinds[j]])
    return {"missing": missing, "unexpected": unexpected}


def soak_figures(
    samples: Sequence[Mapping[str, Any]],
    created: Mapping[str, float],
    done: Mapping[str, Done],
    kinds: Mapping[str, str],
    *,
    started: float,
    ended: float,
    options: SoakOptions,
) -> dict[str, Any]:
    """Everything the soak adds to its result, from the raw samples and outcomes: the start and
    end windows, the memory verdict, and every sample with the jobs published and done by then
    and the latency of the window that closes with it (times in seconds from the start)."""
    completions = Completions(created, done, kinds)
    sent = sorted(created.values())
    window = options.window_s
    start = phase_figures(
        samples, completions, started + options.warmup_s, started + options.warmup_s + window
    )
    end = phase_figures(samples, completions, ended - window, ended)
    for phase in (start, end):
        phase["from_s"] = round(phase.pop("from_at") - started, 1)
        phase["to_s"] = round(phase.pop("to_at") - started, 1)
    series = []
    before = started
    for s in samples:
        part = completions.between(before, s["at"])
        before = s["at"]
        latency = window_latency(part)
        series.append(
            {
                "t": round(s["at"] - started, 1),
                "published": bisect_right(sent, s["at"]),
                "done": completions.done_by(s["at"]),
                "window_jobs": len(part),
                "p99_ms": {k: v["p99"] for k, v in latency.items() if v["count"]},
                "replicas": s["replicas"],
            }
        )
    return {
        "ran_s": round(ended - started, 1),
        "warmup_s": round(options.warmup_s, 1),
        "window_s": round(window, 1),
        "start": start,
        "end": end,
        "memory": memory_verdict(
            {n: r["rss_mb"] for n, r in start["replicas"].items()},
            {n: r["rss_mb"] for n, r in end["replicas"].items()},
        ),
        "samples": series,
    }


# -- the run ---------------------------------------------------------------------------------


async def take_sample(workers: Sequence[Child], rss: RssSampler) -> dict[str, Any]:
    """One sample of every replica: RSS, CPU time and what its ``/metrics`` says."""
    import aiohttp

    for w in workers:
        if not w.alive:
            raise RuntimeError(f"{w.name} exited during the soak:\n{w.tail()}")
    counts = {name: len(values) for name, values in rss.samples.items()}
    rss.sample()
    at = time.time()
    texts = await asyncio.gather(
        *(metrics_text(w.port or 0) for w in workers), return_exceptions=True
    )
    replicas: dict[str, Any] = {}
    for w, text in zip(workers, texts, strict=True):
        values = rss.samples[w.name]
        figures: dict[str, Any] = {
            "rss_mb": round(values[-1] / 1e6, 1) if len(values) > counts[w.name] else None,
            "cpu_s": w.cpu_s(),
        }
        if isinstance(text, aiohttp.ClientError | TimeoutError):
            figures["error"] = repr(text)
        elif isinstance(text, BaseException):
            raise text
        else:
            figures |= replica_figures(text)
        replicas[w.name] = figures
    return {"at": at, "replicas": replicas}


def _progress_line(sample: Mapping[str, Any], t: float, total_s: float, done: int) -> str:
    replicas = sample["replicas"].values()

    def each(key: str, spec: str) -> str:
        return "/".join("-" if r.get(key) is None else format(r[key], spec) for r in replicas)

    return (
        f"soak {t:.0f}/{total_s:.0f} s: RSS {each('rss_mb', '.0f')} MB, tasks"
        f" {each('tasks', '.0f')}, in flight {each('in_flight', '.0f')}, lag"
        f" {each('lag_events', '.0f')} events, {done:,} outcomes"
    )


async def _sample_every(
    options: SoakOptions,
    workers: Sequence[Child],
    rss: RssSampler,
    collector: OutputCollector,
    samples: list[dict[str, Any]],
    started: float,
) -> None:
    """A sample at ``started`` and every ``sample_s`` after it on a fixed schedule, until
    cancelled."""
    from jobstream.streams.dev.bench.run import _say

    logged = started
    k = 0
    while True:
        await asyncio.sleep(max(0.0, started + k * options.sample_s - time.time()))
        k += 1
        sample = await take_sample(workers, rss)
        samples.append(sample)
        if sample["at"] - logged >= LOG_EVERY_S:
            logged = sample["at"]
            t = sample["at"] - started
            _say(_progress_line(sample, t, options.duration_s, len(collector.done)))


async def _rows(bench: Bench, prefix: str) -> dict[str, Any]:
    """The jobs' rows by status, with how many of each took more than one attempt."""
    rows = await bench.pool.fetch(
        "SELECT status, count(*) AS n, count(*) FILTER (WHERE attempt > 1) AS retried"
        " FROM jobs WHERE job_id LIKE $1 GROUP BY 1 ORDER BY 1",
        f"{prefix}-%",
    )
    return {r["status"]: {"jobs": int(r["n"]), "retried": int(r["retried"])} for r in rows}


async def run_soak(
    bench: Bench,
    spec: Scenario,
    prefix: str,
    children: list[Child],
    extra_cleanup: list[Callable[[], Awaitable[None]]],
    result: dict[str, Any],
) -> None:
    """The soak scenario; its own figures go into ``result["soak"]``, the common ones (jobs/s,
    latency, CPU, peak RSS, statuses) where every scenario has them."""
    from jobstream.streams.dev.bench.outputs import OutputCollector, parse_outcome
    from jobstream.streams.dev.bench.run import _say
    from jobstream.streams.producer.client import JobClient
    from jobstream.streams.topics import topic_names

    options = bench.soak
    load = SoakLoad.of(spec, options.rate)
    topics = topic_names(prefix, RETRY_TIERS_S)
    await bench._ensure_topics(topics.all())
    fake, env = await bench._start_fake(load, prefix)
    children.append(fake)
    extra_cleanup.append(lambda: bench._drop_bucket(prefix))
    env["JOBSTREAM_RETRY_TIERS_S"] = json.dumps(RETRY_TIERS_S)
    workers = await bench._start_workers(load, prefix, env, result, children)
    result["logs"] = [str(c.log_path) for c in children]
    result["jobs"] = options.jobs
    result["publish_rate"] = options.rate
    collector = await OutputCollector(
        bench.bootstrap, topics.outcomes, parse_outcome, bench.kafka_options
    ).start()
    samples: list[dict[str, Any]] = []
    rss = RssSampler({w.name: w.pid for w in workers}, interval_s=options.sample_s)
    published: Published | None = None
    _say(
        f"{spec.name}: {options.jobs:,} jobs at {options.rate:g}/s for {options.minutes:g} min,"
        f" a sample every {options.sample_s:g} s"
    )
    try:
        async with JobClient(
            bench.bootstrap, topic_prefix=prefix, options=bench.kafka_options
        ) as client:
            cpu_before = bench._cpu_snapshot(children)
            started = time.time()
            sampling = asyncio.create_task(
                _sample_every(options, workers, rss, collector, samples, started)
            )
            publishing = asyncio.create_task(bench._publish(client, load, prefix, options.jobs))
            try:
                await asyncio.wait({sampling, publishing}, return_when=asyncio.FIRST_COMPLETED)
                if sampling.done():
                    sampling.result()  # a replica died: say so
                published = await publishing
                ran = time.time() - started
                _say(f"{spec.name}: load done after {ran:.0f} s; waiting for the last outcomes")
                await collector.wait_all(published.ids, within_s=bench.timeout_s)
                sampling.cancel()
                await asyncio.gather(sampling, return_exceptions=True)
                samples.append(await take_sample(workers, rss))  # after the drain
            finally:
                for task in (publishing, sampling):
                    task.cancel()
                await asyncio.gather(publishing, sampling, return_exceptions=True)
                cpu_after = bench._cpu_snapshot(children)
                result["rss_mb"] = peak_rss_mb(rss.samples)
                if published is not None:
                    wall = time.time() - published.started
                    result["cpu"] = bench._cpu_usage(cpu_before, cpu_after, children, wall)
                    _store_figures(result, samples, published, collector, options)
                else:  # interrupted while publishing: the samples are still worth keeping
                    result["soak"] = {"samples": samples}
        assert published is not None
        result["rows"] = await _rows(bench, prefix)
        result["upstream"] = await bench._fake_stats(fake)
        result["worker_metrics"] = await bench._worker_metrics(workers)
        check = result["soak"]["jobs"]
        if check["missing"] or check["unexpected"]:
            raise RuntimeError(
                f"{check['missing']} jobs without an outcome, {check['unexpected']} with one"
                f" their kind should not have: {result['statuses']}"
            )
    finally:
        await collector.stop()


def _store_figures(
    result: dict[str, Any],
    samples: Sequence[Mapping[str, Any]],
    published: Published,
    collector: OutputCollector,
    options: SoakOptions,
) -> None:
    from jobstream.streams.dev.bench.run import _type_figures

    kinds = {j: kind_at(int(j.rpartition("-")[2])) for j in published.ids}  # <prefix>-<i>
    at = {"started": published.started, "published": published.finished}
    result.update(summarize(published.created, collector.done, **at))
    result["by_type"] = {
        kind: _type_figures(
            {j: c for j, c in published.created.items() if kinds[j] == kind}, collector.done, **at
        )
        for kind in KINDS
    }
    result["outputs"] = {
        "duplicates": collector.duplicates,
        "reemitted": sum(1 for d in collector.done.values() if d.reemitted),
        "unparsable": collector.unparsable,
    }
    result["cpu"]["consumer_cpu_ms_per_job"] = cpu_ms_per_job(
        result["cpu"].get("consumer_cpu_s"), result["completed"]
    )
    soak = soak_figures(
        samples,
        published.created,
        collector.done,
        kinds,
        started=published.started,
        ended=published.finished,
        options=options,
    )
    last = samples[-1]["replicas"] if samples else {}
    soak["jobs"] = {
        "published": len(published.ids),
        **status_check(published.ids, kinds, collector.done),
        "retries": int(sum(r.get("completed_retried", 0) for r in last.values())),
    }
    soak["options"] = asdict(options) | {
        "retry_tiers_s": list(RETRY_TIERS_S),
        "mix": dict(MIX),
        "memory_tolerance_pct": MEMORY_TOLERANCE * 100,
    }
    result["soak"] = soak


# -- output ----------------------------------------------------------------------------------


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _phase_rows(start: Mapping[str, Any], end: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    names = sorted(set(start["replicas"]) | set(end["replicas"]))
    for key, label, spec in (
        ("rss_mb", "RSS MB", ".1f"),
        ("tasks", "event-loop tasks", ".0f"),
        ("in_flight", "jobs in flight", ".1f"),
        ("lag_events", "lag, events", ".1f"),
        ("lag_s_max", "lag, oldest s (max)", ".1f"),
        ("cpu_cores", "CPU cores", ".2f"),
    ):
        for name in names:
            a = start["replicas"].get(name, {}).get(key)
            b = end["replicas"].get(name, {}).get(key)
            rows.append((f"{label} {name}", _cell(a, spec), _cell(b, spec)))
    rows.append(
        ("outcomes/s", _cell(start["jobs_per_s"], ",.1f"), _cell(end["jobs_per_s"], ",.1f"))
    )
    for kind in ("all", *KINDS):
        a, b = start["latency_ms"][kind], end["latency_ms"][kind]
        rows.append(
            (
                f"p99 ms {kind} (jobs)",
                f"{_cell(a['p99'], ',.0f')} ({a['count']})",
                f"{_cell(b['p99'], ',.0f')} ({b['count']})",
            )
        )
    return rows


def _jobs_line(r: Mapping[str, Any]) -> str:
    jobs = r["soak"].get("jobs", {})
    rows = r.get("rows") or {}
    succeeded = rows.get("succeeded", {})
    dead = rows.get("dead_lettered", {})
    return (
        f"jobs: {jobs.get('published', 0):,} published, {r.get('completed') or 0:,} with an"
        f" outcome; rows: succeeded {succeeded.get('jobs', 0):,} (after a retry"
        f" {succeeded.get('retried', 0):,}), dead_lettered {dead.get('jobs', 0):,} (after"
        f" retries {dead.get('retried', 0):,}); {jobs.get('retries', 0):,} retries;"
        f" {jobs.get('missing', 0):,} missing, {jobs.get('unexpected', 0):,} unexpected"
    )


def render_soak_table(results: Sequence[Mapping[str, Any]]) -> str | None:
    """Each soak scenario's start and end side by side, its jobs and its memory verdict."""
    blocks = []
    for r in results:
        if r.get("kind") != "soak":
            continue
        soak = r.get("soak") or {}
        if "start" not in soak:
            blocks.append(f"{r['name']}: no figures ({r.get('error') or 'not finished'})")
            continue
        options = soak["options"]
        start, end = soak["start"], soak["end"]
        head = (
            f"{r['name']}: {r['replicas']} replicas, {options['rate']:g} jobs/s for"
            f" {soak['ran_s'] / 60:.1f} min (asked {options['minutes']:g}), warm-up"
            f" {soak['warmup_s']:g} s, a sample every {options['sample_s']:g} s"
        )
        table = markdown_table(
            [
                (r["name"], f"start {start['from_s']:g}-{start['to_s']:g} s",
                 f"end {end['from_s']:g}-{end['to_s']:g} s"),
                *_phase_rows(start, end),
            ]
        )  # fmt: skip
        blocks.append("\n".join([head, "", table, "", _jobs_line(r), verdict_line(soak["memory"])]))
    return "\n\n".join(blocks) if blocks else None
