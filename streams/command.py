"""What every ``jobstream`` command shares: click commands whose help lists the ``JOBSTREAM_*``
variables the command reads, and the settings handed to it.

Each command names the :class:`~jobstream.streams.settings.Settings` fields it reads
(``variables=``); its ``--help`` renders them as ``JOBSTREAM_<NAME>`` with the field's
description and default, so the help cannot drift from the settings class (a unit test checks
every name is a field). The groups below are the sets several commands read together.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click
from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from jobstream.streams.exits import Exit
from jobstream.streams.settings import Settings

KAFKA = (
    "kafka_bootstrap",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "kafka_ssl_key_password",
    "kafka_ssl_check_hostname",
)
POSTGRES = ("database_url", "db_pooler_mode")
POOL = ("db_pool_min", "db_pool_max")
TOPICS = (
    "topic_prefix",
    "retry_tiers_s",
    "partitions",
    "replication_factor",
    "main_retention_ms",
    "retry_retention_ms",
    "outcome_retention_ms",
    "dlq_retention_ms",
    "max_event_bytes",
)
JOB_TYPES = (
    "app",
    "policy_file",
    "max_attempts",
    "default_timeout_s",
    "openrouter_base_url",
    "openrouter_api_key",
    "openrouter_model",
    "webhook_allow_hosts",
    "rate_limits",
)
HTTP = (
    "http_header_timeout_s",
    "http_body_timeout_s",
    "http_keepalive_timeout_s",
    "http_max_connections",
)
API = ("web_host", "web_port", "api_token", "api_max_body_bytes", "metrics_token", "metrics_port")
CONSOLE = (
    "console_host",
    "console_port",
    "console_viewer_token",
    "console_operator_token",
    "console_dev_open",
    "console_secret_key",
    "console_session_ttl_s",
    "console_show_payloads",
    "console_replay_rate",
    "console_replay_max",
    "console_trusted_proxies",
    "console_secure_cookies",
)
RETENTION = (
    "retention_batch_size",
    "retention_succeeded_age_s",
    "retention_succeeded_max_rows",
    "retention_dead_lettered_age_s",
    "retention_dead_lettered_max_rows",
    "retention_include_unexpired_dead_letters",
)
LOGS = ("log_level", "sentry_dsn", "sentry_environment", "worker_name")


def names(*groups: Iterable[str]) -> tuple[str, ...]:
    """The fields of ``groups`` in order, each once."""
    return tuple(dict.fromkeys(name for group in groups for name in group))


def variable(name: str) -> str:
    return f"JOBSTREAM_{name.upper()}"


def describe(name: str) -> str:
    """The field's description and default, for the help."""
    field = Settings.model_fields[name]
    parts = [field.description] if field.description else []
    if field.default_factory is not None:
        if "default" not in (field.description or ""):
            parts.append("(default: computed)")
    elif field.default is not PydanticUndefined and field.default not in (None, (), ""):
        default = field.default
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        parts.append(f"(default: {default})")
    return " ".join(parts)


class SettingsCommand(click.Command):
    """A click command that lists its ``JOBSTREAM_*`` variables after the options, and keeps a
    preformatted epilog (exit codes, filter syntax) as written."""

    def __init__(self, *args: Any, variables: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        unknown = [n for n in variables if n not in Settings.model_fields]
        if unknown:
            raise ValueError(f"{self.name}: not Settings fields: {unknown}")
        self.variables = tuple(variables)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if self.variables:
            with formatter.section("Environment variables"):
                formatter.write_dl([(variable(n), describe(n)) for n in self.variables], col_max=40)
        if self.epilog:
            formatter.write_paragraph()
            for line in self.epilog.rstrip().splitlines():
                formatter.write(f"{line}\n" if line else "\n")


def command(
    name: str, *, variables: Sequence[str] = (), **kwargs: Any
) -> Callable[[Callable[..., Any]], SettingsCommand]:
    """``@click.command`` with the variables the command reads."""
    return click.command(name, cls=SettingsCommand, variables=variables, **kwargs)


class CommandError(click.ClickException):
    """Ends a command with its message as the one line on stderr and an exit code from
    :class:`jobstream.streams.exits.Exit`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


def load_settings() -> Settings:
    """The settings from the environment; values that cannot be parsed are a usage error."""
    try:
        return Settings()
    except ValidationError as exc:
        # the values are left out: one of them may be a secret
        problems = "; ".join(
            f"{variable(str(e['loc'][0])) if e['loc'] else 'JOBSTREAM_*'}: {e['msg']}"
            for e in exc.errors()
        )
        raise CommandError(f"invalid settings: {problems}", Exit.USAGE) from None


def with_settings(fn: Callable[..., int]) -> Callable[..., int]:
    """Hands the command its settings as the first argument, read only once the arguments
    parsed (so ``--help`` works whatever the environment holds). A command with
    :func:`app_option` gets ``--app`` in ``settings.app``, and a value that names no
    ``JobApp`` ends it with one line and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        settings = load_settings()
        if APP_OPTION in kwargs:
            spec = kwargs.pop(APP_OPTION)
            if spec:
                settings = settings.model_copy(update={"app": spec})
            check_app(settings)
        return fn(settings, *args, **kwargs)

    return wrapper


APP_OPTION = "app_spec"


def app_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--app MODULE:ATTR``, for the commands that need the job types."""
    return click.option(
        "--app",
        APP_OPTION,
        metavar="MODULE:APP",
        help="the team's JobApp, e.g. acme_jobs.jobs:app (default: JOBSTREAM_APP, else the"
        " built-in job types); the current directory is importable",
    )(fn)


def check_app(settings: Settings) -> None:
    """The app and its job types load (a bad ``--app`` or policy file: one line, exit 2)."""
    from jobstream.agents.catalog import default_registry
    from jobstream.models.errors import ConfigurationError

    try:
        default_registry(settings)
    except ConfigurationError as exc:
        raise CommandError(str(exc), Exit.USAGE) from None


def walk(group: click.Command, path: tuple[str, ...] = ()) -> Iterable[tuple[str, click.Command]]:
    """Every command under ``group`` with its full name (``dlq replay``), for help and tests."""
    if isinstance(group, click.Group):
        ctx = click.Context(group)
        for sub in group.list_commands(ctx):
            cmd = group.get_command(ctx, sub)
            if cmd is not None:
                yield from walk(cmd, (*path, sub))
    else:
        yield " ".join(path), group
