"""``make bench``: end-to-end throughput and latency of jobstream, next to a bare Kafka loop.

Why end to end: what a user of jobstream waits for is a durable result, so every number here
runs from the first publish to the last job whose row is committed and whose outcome record was
handed to Kafka. Workers are real ``python -m jobstream worker`` processes, exactly as
deployed, and each scenario gets its own topic prefix and consumer group (a fresh uuid), so runs
and scenarios never read each other's events.

How a scenario runs: topics are created with the configured partition count; the replicas are
started and waited for until they answer ``GET /ready``, have logged faust's "Worker ready" and
the consumer group is ``Stable`` with one member per replica; a warm-up batch is published and
waited for (it opens the database and HTTP connections, starts the fetchers and proves the
assignment works) and then excluded from every number; the timed batch of N jobs is published with
``JobClient.submit_many`` in chunks while a group-less consumer reads the outcome topic.

What the numbers are:

* ``jobs/s`` = N / (time the last outcome record was created - time the first publish began).
* latency per job = outcome record timestamp (the worker stamps it after the row is committed)
  minus the job's ``created_at`` (stamped by the producer just before its chunk is published).
  All N jobs are published as fast as possible, so with a slow handler most of the latency is
  time spent queued: it is latency under full load, not the latency of an idle system.
  ``finished_latency_ms`` (the row's ``finished_at`` minus ``created_at``, taken before the
  row write) and ``handler_ms`` (the handler alone) are in the JSON too.
* CPU ms/job = user+system CPU of the replicas over the timed window / jobs; peak RSS = the
  highest resident memory of any replica, sampled every 0.2 s over the window.
* two baselines run in the same run, over the same kind of echo events on the same number of
  partitions, each in its own process: ``faust``
  (:mod:`jobstream.streams.dev.bench.faust_baseline`, a bare faust agent that only counts, the
  ceiling of anything built on faust) and ``aiokafka`` (:mod:`jobstream.streams.dev.bench.baseline`,
  a bare consume-produce-commit loop); ``vs faust`` and ``vs aiokafka`` are a scenario's jobs/s
  divided by theirs.
* ``upstream`` is the fake OpenRouter alone (:mod:`jobstream.streams.dev.bench.upstream`); an llm
  scenario's ceiling is the lower of that and replicas x concurrency / latency.
* ``mixed-1`` publishes a 2 s ``sleep`` job every 20th among echo jobs and reports each type's
  rate and latency on its own row: with no head-of-line blocking the echo jobs do not wait
  for the sleeps.
* ``--profile`` samples the first replica of each jobstream scenario with py-spy over the
  timed window and prints its top frames (the collapsed stacks are saved next to the JSON).
* ``soak`` (:mod:`jobstream.streams.dev.bench.soak`, not in ``all``) is half an hour of a
  steady mixed load on two replicas, with their memory, tasks, lag and p99 at its start and end.

The machine is usually shared and small, so the JSON also records the load average and the CPU
used by each process (workers, fake upstream, this process) and by the whole machine during the
timed window: a low ratio with the machine at 100 % says "CPU-bound", not "slow design".

Usage: ``python -m jobstream.streams.dev.bench [--quick] [--scenarios echo-1,llm] [--profile]
[--out PATH]``;
``--list`` shows the scenarios, ``--help`` the rest. Other ``JOBSTREAM_*`` variables in the
environment reach the workers, so ``JOBSTREAM_BATCH_MAX_DELAY_MS=2 make bench`` is an experiment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobstream.streams.dev.bench import faust_baseline
from jobstream.streams.dev.bench.machine import load_avg, machine_cpu, machine_info, service_info
from jobstream.streams.dev.bench.outputs import OutputCollector, parse_baseline, parse_outcome
from jobstream.streams.dev.bench.report import (
    FAKE_LATENCY_MS,
    SCENARIOS,
    Done,
    Scenario,
    add_ratios,
    build_report,
    cpu_ms_per_job,
    empty_result,
    latency_summary,
    pace_wait,
    parse_scenarios,
    peak_rss_mb,
    render_notes,
    render_profile,
    render_table,
    render_timed_table,
    summarize,
    summarize_count,
    write_report,
)
from jobstream.streams.dev.bench.sampling import Profiler, RssSampler, metrics_text
from jobstream.streams.dev.bench.soak import (
    SoakOptions,
    add_soak_arguments,
    render_soak_table,
    run_soak,
)
from jobstream.streams.dev.process import Child
from jobstream.streams.dev.replicas import free_port
from jobstream.streams.output import Progress
from jobstream.streams.polling import wait_until

DEFAULT_OUT_DIR = Path("bench-results")
PUBLISH_CHUNK = 1000
UNLIMITED = {"rate": 100_000, "per": 1}
"""The rate limit given to the benchmark's own limiter key: far above anything measured, so the
limiter is exercised (every llm.chat job still takes a token) but never makes a job wait."""


def _is_secret(name: str) -> bool:
    return any(word in name for word in ("KEY", "TOKEN", "PASSWORD", "SECRET", "URL", "DSN"))


def passthrough_env(environ: Mapping[str, str], owned: Iterable[str]) -> dict[str, str]:
    """``JOBSTREAM_*`` variables of the caller that reach the workers (for experiments such as
    ``JOBSTREAM_BATCH_MAX_DELAY_MS=2 make bench``), with secrets masked for the report."""
    owned = set(owned)
    return {
        k: ("***" if _is_secret(k) else v)
        for k, v in sorted(environ.items())
        if k.startswith("JOBSTREAM_") and k not in owned
    }


_PER_PROCESS = frozenset(
    {"JOBSTREAM_KAFKA_BOOTSTRAP", "JOBSTREAM_DATABASE_URL", "JOBSTREAM_TOPIC_PREFIX",
     "JOBSTREAM_GROUP_ID", "JOBSTREAM_WORKER_NAME", "JOBSTREAM_WEB_HOST", "JOBSTREAM_WEB_PORT",
     "JOBSTREAM_STATE_DIR", "JOBSTREAM_POLICY_FILE"}
)  # fmt: skip


def worker_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The knobs a scenario ran with (secrets masked, per-process plumbing left out), so two
    result files can be compared setting by setting."""
    return {
        k.removeprefix("JOBSTREAM_").lower(): ("***" if _is_secret(k) else v)
        for k, v in sorted(env.items())
        if k.startswith("JOBSTREAM_") and k not in _PER_PROCESS
    }


# -- processes -------------------------------------------------------------------------------


async def http_status(url: str) -> int | None:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
            s.get(url) as r,
        ):
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def http_json(url: str) -> Any:
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get(url) as r,
    ):
        r.raise_for_status()
        return await r.json()


# -- Kafka helpers ---------------------------------------------------------------------------


async def group_state(admin: Any, group: str) -> tuple[str, int]:
    """(state, member count) of a consumer group, e.g. ("Stable", 2)."""
    responses = await admin.describe_consumer_groups([group])
    for response in responses:
        for g in response.groups:
            if g[1] == group:
                return str(g[2]), len(g[5])
    return "Dead", 0


# -- the run ---------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _type_figures(
    created: Mapping[str, float], done: Mapping[str, Done], *, started: float, published: float
) -> dict[str, Any]:
    """One job type's share of a mixed run: its own rate (its jobs over the time until its last
    one was done) and latency."""
    full = summarize(created, done, started=started, published=published)
    return {k: full[k] for k in ("jobs", "completed", "duration_s", "jobs_per_s", "latency_ms")}


@dataclass
class Published:
    """One batch as it was sent: ids in order, each job's ``created_at`` and type."""

    ids: list[str]
    created: dict[str, float]
    types: dict[str, str]
    started: float
    finished: float


@dataclass
class Bench:
    """What every scenario of one run shares."""

    bootstrap: str
    dsn: str
    partitions: int
    timeout_s: float
    quick: bool
    jobs_override: int | None
    warmup_override: int | None
    chunk: int
    keep: bool
    lease: int | None
    log_dir: Path
    state_dir: Path
    profile_dir: Path | None = None
    """Where ``--profile`` writes each scenario's collapsed stacks; None: no profile."""
    profile_stem: str = "bench"
    soak: SoakOptions = field(default_factory=SoakOptions)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    pool: Any = None
    admin: Any = None
    kafka_options: dict[str, Any] = field(default_factory=dict)  # kafka_security.client_options

    # ---- shared setup

    async def start(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        from jobstream.streams.pg.migrations import migrate
        from jobstream.streams.pg.pool import create_pool

        self.pool = await create_pool(self.dsn, min_size=1, max_size=2)
        async with self.pool.acquire() as conn:
            await migrate(conn)  # the row checks run before the first worker would migrate
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.kafka_options)
        await self.admin.start()

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()
        if self.pool is not None:
            await self.pool.close()

    # ---- one scenario

    async def run(self, spec: Scenario, results: list[dict[str, Any]]) -> dict[str, Any]:
        """Run one scenario; its result is appended to ``results`` at once and filled in as it
        goes, so an interrupted run still reports how far the scenario got."""
        jobs = spec.job_count(quick=self.quick, override=self.jobs_override)
        warmup = (
            self.warmup_override
            if self.warmup_override is not None
            else spec.warmup_count(quick=self.quick)
        )
        result = empty_result(spec, jobs=jobs, warmup=warmup, partitions=self.partitions)
        results.append(result)
        prefix = f"bench-{spec.name.replace('.', '')}-{self.run_id}"
        result["topic_prefix"] = prefix
        result["started_at"] = datetime.now(UTC).isoformat()
        children: list[Child] = []
        collector: OutputCollector | None = None
        extra_cleanup: list[Callable[[], Awaitable[None]]] = []
        try:
            if spec.kind == "soak":
                await run_soak(self, spec, prefix, children, extra_cleanup, result)
            elif spec.kind == "upstream":
                await self._run_upstream(spec, prefix, jobs, warmup, children, result)
            elif spec.kind == "timed":
                from jobstream.streams.dev.bench.timed import run_timed

                await run_timed(self, spec, prefix, jobs, children, result)
            else:
                collector = await self._start_processes(
                    spec, prefix, jobs, warmup, result, children, extra_cleanup
                )
                result["logs"] = [str(c.log_path) for c in children]
                timed_ids = await self._measure(
                    spec, prefix, jobs, warmup, collector, children, result
                )
                if spec.kind == "jobstream":
                    await self._check_jobstream(jobs, timed_ids, children, result)
        except asyncio.CancelledError:
            result["error"] = "interrupted"
            raise
        except Exception as exc:  # noqa: BLE001 - one scenario's failure is recorded in its result; the others still run
            result["error"] = f"{type(exc).__name__}: {exc}"
            _say(f"{spec.name}: FAILED: {result['error']}")
            for c in children:
                if not c.alive and c.proc is not None:
                    _say(f"{c.name} exited with {c.proc.returncode}; log tail:\n{c.tail()}")
        finally:
            await self._stop_children(children, result)
            if collector is not None:
                await collector.stop()
            if not self.keep:
                await self._cleanup(prefix, extra_cleanup)
        return result

    async def _start_processes(
        self,
        spec: Scenario,
        prefix: str,
        jobs: int,
        warmup: int,
        result: dict[str, Any],
        children: list[Child],
        extra_cleanup: list[Callable[[], Awaitable[None]]],
    ) -> OutputCollector | None:
        """The scenario's topics and processes (appended to ``children`` as each starts), then the
        collector of their outputs once the group has settled (None for the faust baseline,
        which reports its own count instead)."""
        if spec.name == "faust":
            await self._ensure_topics([prefix])
            sizes = [n for n in (warmup, jobs) if n]
            children.append(self._start_faust(prefix, sizes))
            await self._wait_assigned(prefix, children, marker="Worker ready", web_ports=[])
            return None
        if spec.kind == "baseline":
            out_topic = f"{prefix}.out"
            await self._ensure_topics([prefix, out_topic])
            children.append(self._start_baseline(prefix, out_topic))
            await self._wait_assigned(prefix, children, marker="assigned ", web_ports=[])
            return await OutputCollector(
                self.bootstrap, out_topic, parse_baseline, self.kafka_options
            ).start()
        from jobstream.streams.topics import topic_names

        topics = topic_names(prefix)
        await self._ensure_topics(topics.all())
        env_extra: dict[str, str] = {}
        if spec.job_type == "llm.chat":
            fake, env_extra = await self._start_fake(spec, prefix)
            children.append(fake)
            extra_cleanup.append(lambda: self._drop_bucket(prefix))
        await self._start_workers(spec, prefix, env_extra, result, children)
        # started once the group has settled: new partitions have leaders by then
        return await OutputCollector(
            self.bootstrap, topics.outcomes, parse_outcome, self.kafka_options
        ).start()

    async def _start_workers(
        self,
        spec: Scenario,
        prefix: str,
        env_extra: Mapping[str, str],
        result: dict[str, Any],
        children: list[Child],
    ) -> list[Child]:
        """The scenario's replicas (appended to ``children`` as each starts), waited for until
        the group has settled with all of them."""
        ports = [free_port() for _ in range(spec.replicas)]
        workers = [
            self._start_worker(spec, prefix, i, port, env_extra) for i, port in enumerate(ports)
        ]
        children.extend(workers)
        result["worker_settings"] = worker_settings(workers[0].env)
        await self._wait_assigned(prefix, workers, marker="Worker ready", web_ports=ports)
        return workers

    async def _wait_done(
        self,
        published: Published,
        collector: OutputCollector | None,
        children: Sequence[Child],
        *,
        batch: int,
        within_s: float,
        progress: Progress | None = None,
    ) -> dict[str, Any] | None:
        """Until every job of ``published`` has its output, or (faust baseline) until the
        consumer has printed the count of ``batch``, which is then returned."""
        if collector is not None:
            await collector.wait_all(published.ids, within_s=within_s, progress=progress)
            return None
        (child,) = children
        seen: dict[str, Any] = {}

        async def counted() -> bool:
            if not child.alive:
                raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
            seen["report"] = faust_baseline.read_report(child.log_text(), batch)
            return seen["report"] is not None

        try:
            await wait_until(counted, within_s=within_s, interval_s=0.05, what="the count")
        except TimeoutError:
            raise TimeoutError(
                f"timed out after {within_s:g}s waiting for {child.name} to count batch {batch}"
            ) from None
        report: dict[str, Any] = seen["report"]
        return report

    async def _measure(
        self,
        spec: Scenario,
        prefix: str,
        jobs: int,
        warmup: int,
        collector: OutputCollector | None,
        children: list[Child],
        result: dict[str, Any],
    ) -> list[str]:
        """The warm-up, then the timed part; its figures go into ``result`` even when it fails.
        Returns the ids of the timed jobs."""
        from jobstream.streams.producer.client import JobClient

        consumers = [c for c in children if not c.name.startswith("fake")]
        async with JobClient(
            self.bootstrap, topic_prefix=prefix, options=self.kafka_options
        ) as client:
            if warmup:
                _say(f"{spec.name}: warm-up, {warmup} jobs")
                warm = await self._publish(client, spec, f"{prefix}-warm", warmup, paced=False)
                await self._wait_done(
                    warm, collector, consumers, batch=0, within_s=min(self.timeout_s, 180)
                )
            _say(f"{spec.name}: timed part, {jobs} jobs")
            cpu_before = self._cpu_snapshot(children)
            rss = RssSampler({c.name: c.pid for c in consumers}).start()
            profiler = self._start_profiler(spec, consumers)
            timed: Published | None = None
            counted: dict[str, Any] | None = None
            try:
                timed = await self._publish(client, spec, prefix, jobs)
                result["publish_s"] = round(timed.finished - timed.started, 3)
                # a live bar on a terminal, a line every 5 s in a pipe or a log
                with Progress(jobs, f"[bench] {spec.name}: done", file=sys.stderr) as progress:
                    counted = await self._wait_done(
                        timed,
                        collector,
                        consumers,
                        batch=1 if warmup else 0,
                        within_s=self.timeout_s,
                        progress=progress,
                    )
            finally:
                cpu_after, ended = self._cpu_snapshot(children), time.time()
                # stopped whatever happened: a failed publish must not leave py-spy attached
                result["rss_mb"] = peak_rss_mb(await rss.stop())
                if profiler is not None:
                    result["profile"] = await profiler.stop()
                if timed is not None:
                    wall = ended - timed.started
                    result["cpu"] = self._cpu_usage(cpu_before, cpu_after, children, wall)
                    self._figures(spec, timed, collector, counted, result)
        return timed.ids

    def _figures(
        self,
        spec: Scenario,
        timed: Published,
        collector: OutputCollector | None,
        counted: dict[str, Any] | None,
        result: dict[str, Any],
    ) -> None:
        """Throughput, latency (per job type when the scenario mixes them), CPU per job."""
        at = {"started": timed.started, "published": timed.finished}
        if collector is None:
            result.update(summarize_count(len(timed.ids), counted, **at))
        else:
            result.update(summarize(timed.created, collector.done, **at))
            result["outputs"] = {
                "duplicates": collector.duplicates,
                "reemitted": sum(1 for d in collector.done.values() if d.reemitted),
                "unparsable": collector.unparsable,
            }
            if spec.slow_every:
                order = sorted(set(timed.types.values()), key=lambda t: (t != spec.job_type, t))
                result["by_type"] = {
                    job_type: _type_figures(
                        {j: t for j, t in timed.created.items() if timed.types[j] == job_type},
                        collector.done,
                        **at,
                    )
                    for job_type in order
                }
        result["cpu"]["consumer_cpu_ms_per_job"] = cpu_ms_per_job(
            result["cpu"].get("consumer_cpu_s"), result["completed"]
        )

    async def _run_upstream(
        self,
        spec: Scenario,
        prefix: str,
        jobs: int,
        warmup: int,
        children: list[Child],
        result: dict[str, Any],
    ) -> None:
        """The fake server alone, started as for llm-500 and driven from this process."""
        from jobstream.streams.dev.bench.upstream import UpstreamClient
        from jobstream.streams.settings import Settings

        assert spec.concurrency is not None
        fake, env = await self._start_fake(spec, prefix)
        children.append(fake)
        result["logs"] = [str(fake.log_path)]
        client = UpstreamClient(
            env["JOBSTREAM_OPENROUTER_BASE_URL"],
            spec.concurrency,
            model=Settings().openrouter_model,
            api_key=env["JOBSTREAM_OPENROUTER_API_KEY"],
        )
        async with client:
            if warmup:
                _say(f"{spec.name}: warm-up, {warmup} requests")
                await client.drive(warmup)
            _say(f"{spec.name}: timed part, {jobs} requests at concurrency {spec.concurrency}")
            before = self._cpu_snapshot(children)
            rss = RssSampler({fake.name: fake.pid}).start()
            try:
                driven = await client.drive(jobs)
            finally:
                after = self._cpu_snapshot(children)
                result["rss_mb"] = peak_rss_mb(await rss.stop())
        result["cpu"] = self._cpu_usage(before, after, children, driven.finished - driven.started)
        fake_cpu = after["children"].get(fake.name), before["children"].get(fake.name)
        answered = driven.statuses.get("200", 0)
        if None not in fake_cpu:
            result["cpu"]["consumer_cpu_s"] = round(fake_cpu[0] - fake_cpu[1], 3)
            result["cpu"]["consumer_cpu_ms_per_job"] = cpu_ms_per_job(
                fake_cpu[0] - fake_cpu[1], answered
            )
        duration = max(driven.finished - driven.started, 1e-6)
        result.update(
            completed=answered,
            duration_s=round(duration, 3),
            jobs_per_s=round(answered / duration, 1),
            latency_ms=latency_summary(driven.latencies_ms),
            statuses=dict(sorted(driven.statuses.items())),
        )
        result["upstream"] = await self._fake_stats(fake)
        if answered != jobs:
            raise RuntimeError(f"{answered}/{jobs} requests answered 200: {result['statuses']}")

    async def _check_jobstream(
        self, jobs: int, timed_ids: list[str], children: list[Child], result: dict[str, Any]
    ) -> None:
        """Every timed job's row succeeded; the upstream's and the workers' own figures."""
        result["rows"] = await self._row_statuses(timed_ids)
        succeeded = result["rows"].get("succeeded", 0)
        if succeeded != jobs:
            raise RuntimeError(f"{succeeded}/{jobs} rows succeeded: {result['rows']}")
        for child in children:
            if child.name.startswith("fake"):
                result["upstream"] = await self._fake_stats(child)
        result["worker_metrics"] = await self._worker_metrics(
            [c for c in children if not c.name.startswith("fake")]
        )

    async def _stop_children(self, children: list[Child], result: dict[str, Any]) -> None:
        """Workers first (they drain into Kafka and PostgreSQL), then their upstream."""
        order = [c for c in children if not c.name.startswith("fake")]
        order += [c for c in children if c.name.startswith("fake")]
        codes = []
        for child in order:
            code = await child.stop_async(60)
            codes.append({"process": child.name, "exit_code": code})
            if code != 0 and not result["error"]:
                result["error"] = f"{child.name} exited with {code} after SIGTERM"
        result["exit_codes"] = codes

    # ---- processes

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start_baseline(self, prefix: str, out_topic: str) -> Child:
        argv = [sys.executable, "-m", "jobstream.streams.dev.bench.baseline",
                "--bootstrap", self.bootstrap,
                "--in-topic", prefix, "--out-topic", out_topic, "--group", prefix]  # fmt: skip
        return Child("aiokafka", argv, self._base_env(), self.log_dir / f"{prefix}.log").start()

    def _start_faust(self, prefix: str, sizes: Sequence[int]) -> Child:
        argv = [sys.executable, "-m", "jobstream.streams.dev.bench.faust_baseline",
                "--bootstrap", self.bootstrap, "--topic", prefix, "--group", prefix,
                "--expect", ",".join(str(n) for n in sizes)]  # fmt: skip
        return Child("faust", argv, self._base_env(), self.log_dir / f"{prefix}.log").start()

    def worker_env(
        self, spec: Scenario, prefix: str, index: int, port: int, extra: Mapping[str, str]
    ) -> dict[str, str]:
        env = self._base_env()
        env.update(
            {
                "JOBSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
                "JOBSTREAM_DATABASE_URL": self.dsn,
                "JOBSTREAM_TOPIC_PREFIX": prefix,
                "JOBSTREAM_GROUP_ID": prefix,
                "JOBSTREAM_WORKER_NAME": f"{prefix}-w{index + 1}",
                "JOBSTREAM_WEB_HOST": "127.0.0.1",
                "JOBSTREAM_WEB_PORT": str(port),
                "JOBSTREAM_STATE_DIR": str(self.state_dir),
                "JOBSTREAM_PARTITIONS": str(self.partitions),
                "JOBSTREAM_CONCURRENCY": str(spec.concurrency),
                "JOBSTREAM_LOG_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env

    def _start_worker(
        self, spec: Scenario, prefix: str, index: int, port: int, extra: Mapping[str, str]
    ) -> Child:
        argv = [sys.executable, "-m", "jobstream", "worker"]
        env = self.worker_env(spec, prefix, index, port, extra)
        log = self.log_dir / f"{prefix}-w{index + 1}.log"
        return Child(f"worker-{index + 1}", argv, env, log, port=port).start()

    async def _start_fake(self, spec: Scenario, prefix: str) -> tuple[Child, dict[str, str]]:
        """The fake upstream with no limit of its own; the env that points the workers at it.

        The limiter key is per run: the rate-limit row is shared by every process using the
        database, and the last process to start rewrites its configuration, so using the
        ``openrouter`` key would change the limit under anyone else's tests.
        """
        port = free_port()
        argv = [sys.executable, "-m", "jobstream.streams.dev.fake_openrouter", "--port", str(port),
                "--latency-ms", f"{spec.upstream_latency_ms:g}"]  # fmt: skip
        log = self.log_dir / f"{prefix}-fake.log"
        fake = Child("fake-openrouter", argv, self._base_env(), log, port=port).start()

        async def healthy() -> bool:
            if not fake.alive:
                raise RuntimeError(f"fake OpenRouter exited early:\n{fake.tail()}")
            return await http_status(f"http://127.0.0.1:{port}/health") == 200

        try:
            await wait_until(healthy, within_s=30, what="the fake OpenRouter")
        except BaseException:
            await fake.stop_async(10)
            raise
        key = prefix
        policy = self.state_dir / f"{prefix}-policy.json"
        policy.write_text(json.dumps({"llm.chat": {"rate_limit_key": key}}))
        env = {
            "JOBSTREAM_OPENROUTER_BASE_URL": f"http://127.0.0.1:{port}/api/v1",
            "JOBSTREAM_OPENROUTER_API_KEY": "sk-bench",
            "JOBSTREAM_RATE_LIMITS": json.dumps({key: UNLIMITED}),
            "JOBSTREAM_POLICY_FILE": str(policy),
        }
        if self.lease is not None:
            env["JOBSTREAM_RATE_LIMIT_LEASE"] = str(self.lease)
        return fake, env

    async def _wait_assigned(
        self, group: str, children: Sequence[Child], *, marker: str, web_ports: Sequence[int]
    ) -> None:
        """Ready, holding partitions, and the group settled with every replica in it: a job
        published before that would wait for a rebalance and be timed as slow processing."""

        seen: dict[str, Any] = {}

        async def ready() -> bool:
            for c in children:
                if not c.alive:
                    raise RuntimeError(f"{c.name} exited early:\n{c.tail()}")
            seen["/ready"] = [
                await http_status(f"http://127.0.0.1:{port}/ready") for port in web_ports
            ]
            seen["logged " + repr(marker)] = [marker in c.log_text() for c in children]
            seen["group"] = await group_state(self.admin, group)
            return (
                all(status == 200 for status in seen["/ready"])
                and all(seen["logged " + repr(marker)])
                and seen["group"] == ("Stable", len(children))
            )

        started = time.monotonic()
        try:
            await wait_until(ready, within_s=120, what=f"{len(children)} member(s) of {group}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last seen: {seen}") from None
        _say(f"{group}: {len(children)} replica(s) assigned in {time.monotonic() - started:.1f}s")

    # ---- publishing

    async def _publish(
        self, client: Any, spec: Scenario, id_prefix: str, n: int, *, paced: bool = True
    ) -> Published:
        """Publish ``n`` jobs in chunks; each chunk is built just before it is sent, so a job's
        ``created_at`` is its publish time and not the time the whole batch was prepared. A
        scenario with a ``publish_rate`` sends a chunk every 50 ms on a fixed schedule."""
        ids: list[str] = []
        created: dict[str, float] = {}
        types: dict[str, str] = {}
        rate = spec.publish_rate if paced else None
        chunk = max(1, round(rate / 20)) if rate else self.chunk
        started = time.time()
        for first in range(0, n, chunk):
            await asyncio.sleep(pace_wait(started, first, rate, time.time()))
            events = []
            for i in range(first, min(n, first + chunk)):
                job_type, payload = spec.job_at(i)
                events.append(client.build(job_type, payload, job_id=f"{id_prefix}-{i:07d}"))
            for e in events:
                created[e.id] = e.created_at.timestamp()
                types[e.id] = e.type
            ids.extend(await client.submit_many(events))
        return Published(ids, created, types, started, time.time())

    def _start_profiler(self, spec: Scenario, consumers: Sequence[Child]) -> Profiler | None:
        """py-spy on the first replica of a jobstream scenario, when ``--profile`` asked."""
        if self.profile_dir is None or spec.kind != "jobstream" or not consumers:
            return None
        first = consumers[0]
        out = self.profile_dir / f"{self.profile_stem}-{spec.name}.collapsed.txt"
        log = self.log_dir / f"{spec.name}-py-spy.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        return Profiler(first.pid, out, log, max_s=self.timeout_s + 60).start()

    # ---- measurements around the run

    def _cpu_snapshot(self, children: Sequence[Child]) -> dict[str, Any]:
        return {
            "children": {c.name: c.cpu_s() for c in children},
            "self": time.process_time(),
            "machine": machine_cpu(),
            "load_avg": load_avg(),
        }

    @staticmethod
    def _cpu_usage(
        before: Mapping[str, Any], after: Mapping[str, Any], children: Sequence[Child], wall: float
    ) -> dict[str, Any]:
        """Cores used by each process over the timed window (1.0 = one core fully busy), and
        the CPU seconds of the consuming processes (workers or the baseline): on a shared
        machine CPU per job is steadier than jobs/s, since it does not depend on how much CPU
        the other tenants left over."""
        usage: dict[str, Any] = {"window_s": round(wall, 3)}
        for c in children:
            a, b = before["children"].get(c.name), after["children"].get(c.name)
            usage[c.name] = round((b - a) / wall, 2) if a is not None and b is not None else None
        usage["bench"] = round((after["self"] - before["self"]) / wall, 2)
        spent = [
            after["children"][c.name] - before["children"][c.name]
            for c in children
            if not c.name.startswith("fake")
            and before["children"].get(c.name) is not None
            and after["children"].get(c.name) is not None
        ]
        usage["consumer_cpu_s"] = round(sum(spent), 3) if spent else None
        m0, m1 = before["machine"], after["machine"]
        if m0 and m1 and m1[1] > m0[1]:
            usage["machine_busy"] = round((m1[0] - m0[0]) / (m1[1] - m0[1]), 3)
        usage["load_avg_before"] = before.get("load_avg")
        usage["load_avg"] = after.get("load_avg")
        return usage

    async def _row_statuses(self, ids: Sequence[str]) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT status, count(*) AS n FROM jobs WHERE job_id = ANY($1::text[]) GROUP BY 1",
            list(ids),
        )
        return {r["status"]: int(r["n"]) for r in rows}

    async def _fake_stats(self, fake: Child) -> dict[str, Any]:
        try:
            stats = await http_json(f"http://127.0.0.1:{fake.port}/stats")
        except Exception as exc:  # noqa: BLE001 - diagnostics only; never fail a finished measurement on it
            return {"error": repr(exc)}
        return {k: stats.get(k) for k in ("total", "max_in_flight", "by_status", "rate_limited")}

    async def _worker_metrics(self, workers: Sequence[Child]) -> dict[str, Any]:
        """Means of a few histograms per worker: a first hint of where a job's time goes."""
        from prometheus_client.parser import text_string_to_metric_families

        wanted = {
            "jobstream_handler_duration_seconds": "handler_s",
            "jobstream_rate_limit_wait_seconds": "rate_limit_wait_s",
            "jobstream_result_batch_size": "result_batch_size",
            "jobstream_result_flush_seconds": "result_flush_s",
        }
        out: dict[str, Any] = {}
        import aiohttp

        for w in workers:
            assert w.port is not None
            means: dict[str, Any] = {}
            try:
                text = await metrics_text(w.port)
            except (aiohttp.ClientError, TimeoutError) as exc:
                out[w.name] = {"error": repr(exc)}
                continue
            sums: dict[str, float] = defaultdict(float)
            counts: dict[str, float] = defaultdict(float)
            for family in text_string_to_metric_families(text):
                label = wanted.get(family.name) or wanted.get(family.name + "_seconds")
                if label is None:
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_sum"):
                        sums[label] += sample.value
                    elif sample.name.endswith("_count"):
                        counts[label] += sample.value
            for label in wanted.values():
                if counts.get(label):
                    means[label] = {
                        "count": int(counts[label]),
                        "mean": round(sums[label] / counts[label], 6),
                    }
            out[w.name] = means
        return out

    # ---- topics and cleanup

    async def _ensure_topics(self, names: Sequence[str]) -> None:
        from jobstream.streams.kafka.admin import ensure_topics

        await ensure_topics(
            self.bootstrap, names, partitions=self.partitions, options=self.kafka_options
        )

    async def _cleanup(self, prefix: str, extra: Sequence[Callable[[], Awaitable[None]]]) -> None:
        """Delete this scenario's topics (faust's own included) and rows: a benchmark must not
        leave tens of thousands of rows and dozens of partitions in a shared dev stack."""
        try:
            names = [t for t in await self.admin.list_topics() if t.startswith(prefix)]
            if names:
                await self.admin.delete_topics(names)
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; the measurement is already taken
            _say(f"could not delete topics of {prefix}: {exc!r}")
        try:
            # by prefix rather than by the ids collected: a publish that failed half-way still
            # left rows of jobs whose ids this process never got back
            await self.pool.execute("DELETE FROM jobs WHERE job_id LIKE $1", f"{prefix}-%")
            await self.pool.execute("DELETE FROM leases WHERE name = $1", f"dispatcher:{prefix}")
            for step in extra:
                await step()
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; the measurement is already taken
            _say(f"could not delete rows of {prefix}: {exc!r}")

    async def _drop_bucket(self, key: str) -> None:
        await self.pool.execute("DELETE FROM rate_limit_buckets WHERE key = $1", key)


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobstream.streams.dev.bench",
        description="End-to-end throughput and latency of jobstream, with a bare-Kafka baseline.",
    )
    p.add_argument("--quick", action="store_true", help="small N: the whole run in < 3 min")
    p.add_argument(
        "--scenarios",
        default="all",
        help="comma-separated: faust, aiokafka, upstream, echo-1, echo-2, mixed-1, echo-c2000,"
        " llm-25, llm-500, soak (30 min, not in all), or baseline (both bare consumers), echo,"
        " llm, all, 1-5 (default all;"
        " faust and aiokafka are added for the ratios, upstream for an llm scenario's ceiling,"
        " unless --no-baseline)",
    )
    p.add_argument(
        "--no-baseline", action="store_true", help="do not add the baselines and upstream"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the first replica of each jobstream scenario over its timed window",
    )
    p.add_argument("--jobs", type=int, help="timed jobs per scenario (default: per scenario)")
    p.add_argument("--warmup", type=int, help="warm-up jobs per scenario (default: per scenario)")
    p.add_argument("--out", type=Path, help="result JSON (default bench-results/bench-<ts>.json)")
    p.add_argument("--partitions", type=int, help="default: JOBSTREAM_PARTITIONS or 8")
    p.add_argument("--chunk", type=int, default=PUBLISH_CHUNK, help="jobs per submit_many call")
    p.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for one scenario's jobs"
    )
    p.add_argument(
        "--lease",
        type=int,
        help="JOBSTREAM_RATE_LIMIT_LEASE for llm.chat (default: the production default)",
    )
    p.add_argument("--keep", action="store_true", help="keep topics and rows afterwards")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    add_soak_arguments(p)
    return p


def _check_at_least(
    parser: argparse.ArgumentParser, name: str, value: int | None, least: int = 1
) -> None:
    if value is not None and value < least:
        parser.error(f"--{name} must be at least {least}")


def describe_scenarios(*, quick: bool) -> str:
    lines = []
    for s in SCENARIOS:
        n = s.job_count(quick=quick, override=None)
        conc = "-" if s.concurrency is None else s.concurrency
        lines.append(
            f"{s.name:10} replicas={s.replicas} concurrency={conc} jobs={n} "
            f"warmup={s.warmup_count(quick=quick)}  {s.summary}"
        )
    return "\n".join(lines)


async def _run(args: argparse.Namespace, scenarios: list[Scenario]) -> int:
    from jobstream.streams.dev.stack import resolve_services
    from jobstream.streams.kafka.security import client_options
    from jobstream.streams.settings import Settings

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    # Both signals cancel the run so the same clean-up happens. asyncio's own SIGINT handling
    # is not relied on: a process started in the background inherits SIGINT ignored, and then
    # asyncio installs nothing and a Ctrl-C (or kill -INT) would leave the workers running.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)

    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: a JOBSTREAM_* value is wrong
        print(f"invalid JOBSTREAM_* settings: {exc}", file=sys.stderr)
        return 2
    try:
        bootstrap, dsn = await resolve_services(settings)
    except Exception as exc:  # noqa: BLE001 - the stack could not be found or started: nothing to measure
        print(f"Kafka/PostgreSQL unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    partitions = args.partitions or settings.partitions
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or DEFAULT_OUT_DIR / f"bench-{stamp}.json"
    log_dir = out.parent / "logs" / stamp
    state_dir = Path(tempfile.mkdtemp(prefix="jobstream-bench-"))
    started_at = datetime.now(UTC).isoformat()
    machine = machine_info()
    services = await service_info(bootstrap, dsn, settings.state_dir.resolve())
    soak = SoakOptions.from_args(args)
    owned = _PER_PROCESS | {"JOBSTREAM_PARTITIONS", "JOBSTREAM_CONCURRENCY", "JOBSTREAM_LOG_LEVEL"}
    options = {
        "quick": args.quick,
        "scenarios": [s.name for s in scenarios],
        "jobs_override": args.jobs,
        "warmup_override": args.warmup,
        "partitions": partitions,
        "publish_chunk": args.chunk,
        "timeout_s": args.timeout,
        "fake_latency_ms": FAKE_LATENCY_MS,
        "rate_limit_lease": args.lease or "default",
        "worker_env_passthrough": passthrough_env(os.environ, owned),
        "logs": str(log_dir),
        "profile": args.profile,
        "soak": asdict(soak),
    }
    bench = Bench(
        bootstrap=bootstrap,
        dsn=dsn,
        partitions=partitions,
        timeout_s=args.timeout,
        quick=args.quick,
        jobs_override=args.jobs,
        warmup_override=args.warmup,
        chunk=args.chunk,
        keep=args.keep,
        lease=args.lease,
        log_dir=log_dir,
        state_dir=state_dir,
        profile_dir=out.parent if args.profile else None,
        profile_stem=out.stem,
        kafka_options=client_options(settings),
        soak=soak,
    )
    results: list[dict[str, Any]] = []
    complete = False
    _say(f"Kafka {bootstrap}, {partitions} partitions; scenarios: {options['scenarios']}")
    try:
        await bench.start()
        for spec in scenarios:
            _say(f"--- {spec.name}: {spec.summary}")
            r = await bench.run(spec, results)
            if not r["error"]:
                p50 = r["latency_ms"]["p50"]
                _say(f"{spec.name}: {r['jobs_per_s']} jobs/s" + (f", p50 {p50} ms" if p50 else ""))
        complete = True
    finally:
        await bench.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        machine["load_avg_at_end"] = load_avg()
        if results:
            add_ratios(results)
            report = build_report(
                started_at=started_at,
                finished_at=datetime.now(UTC).isoformat(),
                complete=complete,
                machine=machine,
                services=services,
                options=options,
                results=results,
            )
            written = write_report(report, out, latest=args.out is None)
            print()
            print(render_table(results))
            print()
            timed_table = render_timed_table(results)
            if timed_table:
                print(timed_table)
                print()
            notes = render_notes(results)
            if notes:
                print(notes)
                print()
            soak_table = render_soak_table(results)
            if soak_table:
                print(soak_table)
                print()
            for r in results:
                if r.get("profile"):
                    print(render_profile(r["name"], r["profile"]))
                    print()
            note = "" if complete else " (interrupted: partial results)"
            print(f"results: {', '.join(str(p) for p in written)}{note}")
    return 0 if all(not r["error"] for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(describe_scenarios(quick=args.quick))
        return 0
    for name in ("jobs", "partitions", "chunk", "lease"):
        _check_at_least(parser, name, getattr(args, name))
    _check_at_least(parser, "warmup", args.warmup, least=0)
    try:
        scenarios = parse_scenarios(args.scenarios, with_baseline=not args.no_baseline)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(_run(args, scenarios))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; worker processes stopped", file=sys.stderr)
        return 130
    finally:
        Child.reap_all()


if __name__ == "__main__":
    sys.exit(main())
