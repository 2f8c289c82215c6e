"""Cancelling a running job from the console in a real browser (Debian's Chromium driven by
Playwright, headless) against a real worker process, Kafka and PostgreSQL.

A viewer watches the job's progress bar move and has no cancel button; an operator cancels the
job (with a confirmation), and the page turns ``cancelled`` by itself. Screenshots go to
``test-artifacts/console/``.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from jobstream.streams.producer.client import JobClient
from tests.integration.console_support import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    console_settings,
    private_database,
    running_console,
)
from tests.integration.harness import WorkerFactory, wait_for
from tests.integration.test_console_browser import ARTIFACTS, _login, browser

__all__ = ["browser"]  # the fixture, shared with the console's other browser test


async def test_an_operator_cancels_a_running_job_in_the_browser(
    browser: Any,
    workers: WorkerFactory,
    kafka_bootstrap: str,
    database_url: str,
    prefix: str,
) -> None:
    from tests.control_app import app

    async with private_database(database_url) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            worker = workers.start(
                JOBSTREAM_DATABASE_URL=dsn, JOBSTREAM_APP="tests.control_app:app"
            )
            await worker.wait_assigned()
            async with JobClient(
                kafka_bootstrap, topic_prefix=prefix, app=app, database_url=dsn
            ) as client:
                job_id = await client.submit("steps", {"steps": 240, "seconds": 120})

                async def progressing() -> bool:
                    p = await pool.fetchval("SELECT progress FROM jobs WHERE job_id = $1", job_id)
                    return p is not None

                await wait_for(progressing, timeout=30, what="the job reporting progress")
                settings = console_settings(kafka_bootstrap, dsn, prefix)
                async with running_console(settings) as base:
                    await _viewer_watches(browser, base, job_id)
                    await _operator_cancels(browser, base, job_id)
                ended = await client.result(job_id, timeout=30)
            assert ended.status.value == "cancelled"
            row = await pool.fetchrow(
                "SELECT status, executions, error FROM jobs WHERE job_id = $1", job_id
            )
            assert row is not None
            assert (row["status"], row["executions"]) == ("cancelled", 1)
            assert row["error"] == "cancelled on request while it ran"
            by = await pool.fetchval("SELECT by FROM control_audit WHERE job_id = $1", job_id)
            assert by.startswith("console:operator@")
        finally:
            await pool.close()


async def _viewer_watches(browser: Any, base: str, job_id: str) -> None:
    page = await _login(browser, base, VIEWER_TOKEN)
    await page.goto(f"{base}jobs/{job_id}")
    await page.wait_for_selector("#job-progress:not([hidden])")
    first = float(await page.get_attribute("#job-progress", "value") or 0)
    # the bar moves without a reload
    await page.wait_for_function(
        "v => Number(document.getElementById('job-progress').value) > v", arg=first
    )
    assert "step " in await page.inner_text("#job-progress-text")
    assert await page.locator("#job-cancel").count() == 0
    await page.screenshot(path=str(ARTIFACTS / "20-job-progress-viewer.png"), full_page=True)
    await page.context.close()


async def _operator_cancels(browser: Any, base: str, job_id: str) -> None:
    page = await _login(browser, base, OPERATOR_TOKEN)
    await page.goto(f"{base}jobs/{job_id}")
    assert await page.inner_text("#job-status") == "running"
    marker = await page.evaluate("() => (window.__loaded = performance.timeOrigin)")
    await page.click("#job-cancel")
    await page.wait_for_selector("#job-cancel-confirm:not([hidden])")
    await page.screenshot(path=str(ARTIFACTS / "21-job-cancel-confirm.png"), full_page=True)
    await page.click("#job-cancel-yes")
    await page.wait_for_function(
        "() => document.getElementById('job-cancel-result').textContent"
        ".startsWith('Cancel requested')"
    )
    # the page turns cancelled by itself
    await page.wait_for_function(
        "() => document.getElementById('job-status').textContent === 'cancelled'"
    )
    assert await page.evaluate("() => window.__loaded") == marker  # the same document
    assert await page.is_hidden("#job-cancel-panel")
    assert "asked at" in await page.inner_text("#job-cancel-state")
    await page.screenshot(path=str(ARTIFACTS / "22-job-cancelled.png"), full_page=True)
    await page.reload()
    assert "console:operator@" in await page.inner_text("#control-audit")
    await page.context.close()
