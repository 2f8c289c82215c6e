"""Sentry and logging set-up, done once by the process entry points."""

from __future__ import annotations

import logging

from streams.settings import Settings


def init_sentry(settings: Settings) -> bool:
    """Report errors to Sentry when a DSN is configured; never send payloads or secrets."""
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        send_default_pii=False,
        traces_sample_rate=0.0,
        server_name=settings.worker_name,
    )
    return True


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
