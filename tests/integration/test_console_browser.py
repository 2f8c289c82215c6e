"""The console in a real browser (Debian's Chromium driven by Playwright, headless) against a
real worker process, Kafka and PostgreSQL.

The operator's loop: webhook jobs are refused by their receiver and dead-lettered; a viewer
looks but cannot replay; the receiver is fixed; an operator filters the dead letters, previews
the replay, confirms it, and watches the jobs turn succeeded in the jobs view, without reloading.
Screenshots of every page go to ``test-artifacts/console/``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from jobstream.streams.dev.replicas import free_port
from jobstream.streams.producer.client import JobClient
from tests.conftest import IN_CI, ROOT
from tests.integration.console_support import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    console_settings,
    private_database,
    running_console,
)
from tests.integration.harness import WorkerFactory, wait_terminal

CHROMIUM = os.environ.get("JOBSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts" / "console"
TIMEOUT_MS = 30_000


def _need_browser() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        reason = "the playwright package is not installed (make venv installs it)"
    else:
        if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
            return async_playwright
        reason = f"no Chromium at {CHROMIUM} (scripts/install-prereqs.sh installs it)"
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async_playwright = _need_browser()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A webhook receiver that refuses (400) until the test fixes it."""
    state = {"status": 400, "calls": 0}

    async def hook(request: web.Request) -> web.Response:
        state["calls"] += 1
        return web.json_response({"ok": state["status"] == 200}, status=state["status"])

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}", state
    finally:
        await runner.cleanup()


async def _login(browser: Any, base: str, token: str, shot: str | None = None) -> Any:
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    await page.goto(base)
    assert page.url.endswith("/login")  # no session: the login page
    if shot:
        await page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    await page.fill("input[name=token]", token)
    await page.click("form[action='/login'] button[type=submit]")
    await page.wait_for_selector("#chart-throughput")
    return page


async def test_operator_loop_in_the_browser(
    browser: Any,
    workers: WorkerFactory,
    receiver: tuple[str, dict[str, int]],
    kafka_bootstrap: str,
    database_url: str,
    prefix: str,
) -> None:
    host, state = receiver
    async with private_database(database_url) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            worker = workers.start(
                JOBSTREAM_DATABASE_URL=dsn,
                JOBSTREAM_WEBHOOK_ALLOW_HOSTS=json.dumps([host]),
            )
            await worker.wait_assigned()
            url = f"http://{host}/hook"
            async with JobClient(kafka_bootstrap, topic_prefix=prefix) as client:
                echo_ids = await client.submit_many(
                    [client.build("echo", {"n": i}) for i in range(6)]
                )
                hook_ids = await client.submit_many(
                    [client.build("http.webhook", {"url": url, "body": {"n": i}}) for i in range(3)]
                )
            await wait_terminal(pool, echo_ids + hook_ids, timeout=60)
            settings = console_settings(kafka_bootstrap, dsn, prefix)
            async with running_console(settings) as base:
                await _as_viewer(browser, base, echo_ids[0], hook_ids)
                state["status"] = 200  # the receiver is fixed
                await _as_operator(browser, base, prefix, hook_ids)
            rows = await pool.fetch(
                "SELECT status, replay_of FROM jobs WHERE job_id = ANY($1)", hook_ids
            )
            assert {r["status"] for r in rows} == {"succeeded"}
            assert state["calls"] == 6  # each webhook called twice: refused, then replayed
        finally:
            await pool.close()


async def _as_viewer(browser: Any, base: str, echo_id: str, hook_ids: list[str]) -> None:
    page = await _login(browser, base, VIEWER_TOKEN, shot="01-login.png")
    assert await page.inner_text("#role") == "viewer"
    # the overview chart shows the jobs just run: 6 succeeded, 3 dead-lettered
    await page.wait_for_function(
        "() => document.getElementById('t-succeeded').textContent === '6'"
        " && document.getElementById('t-dead_lettered').textContent === '3'"
    )
    assert await page.locator("#chart-throughput rect.succeeded").count() >= 1
    assert await page.locator("#chart-throughput rect.dead_lettered").count() >= 1
    await page.wait_for_selector("#members tbody tr:not(.empty)")  # the worker in the group
    await page.screenshot(path=str(ARTIFACTS / "02-overview-viewer.png"), full_page=True)

    # find a job by its exact id and open its detail
    await page.fill("form.find input[name=id]", echo_id)
    await page.click("form.find button")
    await page.wait_for_selector("#job-id")
    assert await page.inner_text("#job-id") == echo_id
    assert await page.inner_text("#job-status") == "succeeded"
    await page.screenshot(path=str(ARTIFACTS / "03-job-detail.png"), full_page=True)

    # filter the dead letters: a viewer sees them but gets no replay button
    await page.goto(base + "dead-letters")
    await page.fill("#dl-filters input[name=type]", "http.webhook")
    await page.click("#dl-filters button[type=submit]")
    await page.wait_for_selector("#dead-letters tbody tr:not(.empty)")
    assert await page.locator("#dead-letters tbody tr:not(.empty)").count() == 3
    assert await page.locator("#replay-panel").count() == 0
    assert await page.locator("#replay-preview").count() == 0
    await page.screenshot(path=str(ARTIFACTS / "04-dead-letters-viewer.png"), full_page=True)
    # and the API refuses a viewer's replay even with a valid CSRF token
    status = await page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name=csrf-token]').content;
            const r = await fetch('/api/replay', {method: 'POST', headers: {
                'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                body: JSON.stringify({dry_run: true, type: 'http.webhook'})});
            return r.status;
        }"""
    )
    assert status == 403
    # a dead letter in detail: traceback and event, payload hidden from a viewer
    await page.click("#dead-letters tbody tr a")
    await page.wait_for_selector("#dl-detail")
    assert "hidden" in await page.inner_text("#original-event")
    await page.screenshot(path=str(ARTIFACTS / "05-dead-letter-viewer.png"), full_page=True)
    await page.context.close()


async def _as_operator(browser: Any, base: str, prefix: str, hook_ids: list[str]) -> None:
    page = await _login(browser, base, OPERATOR_TOKEN)
    assert await page.inner_text("#role") == "operator"
    # the jobs view, open in its own tab while the replay happens in another
    jobs = await page.context.new_page()
    await jobs.goto(base + "jobs?type=http.webhook")
    for job_id in hook_ids:
        assert await jobs.inner_text(f"#jobs tr[data-job='{job_id}'] .st") == "dead_lettered"
    marker = await jobs.evaluate("() => (window.__loaded = performance.timeOrigin)")
    await jobs.screenshot(path=str(ARTIFACTS / "06-jobs-before-replay.png"), full_page=True)

    await page.goto(base + "dead-letters?type=http.webhook")
    await page.click("#replay-preview")
    await page.wait_for_selector("#replay-confirm:not([hidden])")
    summary = await page.inner_text("#replay-summary")
    assert "would replay 3" in summary, summary
    assert await page.locator("#replay-items tr").count() == 3
    await page.screenshot(path=str(ARTIFACTS / "07-replay-preview.png"), full_page=True)
    await page.click("#replay-confirm")
    await page.wait_for_function(
        "() => document.getElementById('replay-result').textContent.startsWith('Replayed')"
    )
    assert (await page.inner_text("#replay-result")).startswith("Replayed 3,")
    await page.screenshot(path=str(ARTIFACTS / "08-replay-done.png"), full_page=True)

    # the jobs view updates by itself: the three jobs turn succeeded without a reload
    await jobs.wait_for_function(
        """ids => ids.every(id => {
            const badge = document.querySelector(`#jobs tr[data-job="${id}"] .st`);
            return badge && badge.textContent === 'succeeded';
        })""",
        arg=hook_ids,
        timeout=60_000,
    )
    assert await jobs.evaluate("() => window.__loaded") == marker  # the same document
    await jobs.screenshot(path=str(ARTIFACTS / "09-jobs-succeeded.png"), full_page=True)

    # the job's lineage names the dead letter it was replayed from, and the audit the operator
    await jobs.click(f"#jobs tr[data-job='{hook_ids[0]}'] a")
    await jobs.wait_for_selector("#job-id")
    lineage = await jobs.inner_text("ul.lineage")
    assert f"Dead letter {prefix}.dlq" not in lineage  # it names the source coordinates
    assert f"Dead letter {prefix}:" in lineage, lineage
    assert "by console:operator@" in lineage, lineage
    assert "console:operator@" in await jobs.inner_text("table.audit")
    await jobs.screenshot(path=str(ARTIFACTS / "10-job-replayed.png"), full_page=True)

    await page.goto(base)
    await page.wait_for_function("() => document.getElementById('t-succeeded').textContent === '9'")
    await page.screenshot(path=str(ARTIFACTS / "11-overview-operator.png"), full_page=True)
    await page.context.close()
