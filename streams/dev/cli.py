"""The development commands of ``jobstream``: ``dev``, ``demo`` and ``fake-openrouter``.

:mod:`jobstream.streams.cli` loads this module only when one of them (or the command list) is asked
for, and this module loads the dev tooling only inside the commands, so no production command
ever imports :mod:`jobstream.streams.dev`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import click

from jobstream.streams.command import KAFKA, SettingsCommand, command, names, with_settings
from jobstream.streams.settings import Settings

STACK_VARIABLES = ("state_dir",)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(
    "dev",
    short_help="the local Kafka + PostgreSQL stack (development only)",
    help="The local Kafka + PostgreSQL stack on 127.0.0.1, for development and tests. "
    "Production never uses it: every other command takes its services from the settings.",
    context_settings=CONTEXT,
)
def dev_group() -> None:
    pass


def _stack(action: str, settings: Settings, state_dir: Path | None, *extra: str) -> int:
    from jobstream.streams.dev.stack import main as stack_main

    return stack_main([action, "--state-dir", str(state_dir or settings.state_dir), *extra])


_state_dir = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="where the stack keeps its data (default: JOBSTREAM_STATE_DIR)",
)


@dev_group.command(
    "up",
    cls=SettingsCommand,
    variables=STACK_VARIABLES,
    help="Start the local stack (or find it running) and print its addresses.",
)
@_state_dir
@click.option(
    "--kafka-port", type=int, default=None, help="default: JOBSTREAM_KAFKA_PORT or a free one"
)
@click.option("--pg-port", type=int, default=None, help="default: JOBSTREAM_PG_PORT or a free one")
@with_settings
def dev_up(
    settings: Settings, state_dir: Path | None, kafka_port: int | None, pg_port: int | None
) -> int:
    extra = ["--kafka-port", str(kafka_port)] if kafka_port else []
    extra += ["--pg-port", str(pg_port)] if pg_port else []
    return _stack("up", settings, state_dir, *extra)


def _simple(action: str, help_text: str) -> None:
    @dev_group.command(action, cls=SettingsCommand, variables=STACK_VARIABLES, help=help_text)
    @_state_dir
    @with_settings
    def run(settings: Settings, state_dir: Path | None) -> int:
        return _stack(action, settings, state_dir)


_simple("down", "Stop the local stack (its data stays in the state dir).")
_simple("status", "Describe the running local stack; exits 1 when it is not running.")
_simple("env", 'Print its addresses as exports: eval "$(jobstream dev env)".')
_simple("fetch", "Download the Kafka jars (broker and tools) into the cache, nothing else.")


@dev_group.command(
    "kafka-tool",
    cls=SettingsCommand,
    variables=names(("kafka_bootstrap", "state_dir")),
    help="Run one of Kafka's own tools (kafka-topics, kafka-consumer-groups, kafka-configs) "
    "with ARGS; without --bootstrap-server it talks to JOBSTREAM_KAFKA_BOOTSTRAP or else the "
    "local stack of the state dir.",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@with_settings
def dev_kafka_tool(settings: Settings, name: str, args: tuple[str, ...]) -> int:
    from jobstream.streams.dev.kafka_tools import main as tool_main
    from jobstream.streams.dev.stack import local_bootstrap

    return tool_main([name, *args], find_bootstrap=lambda: local_bootstrap(settings.state_dir))


DEMO_VARIABLES = names(("state_dir", "console_port", "log_level"), KAFKA, ("database_url",))


@command(
    "demo",
    variables=DEMO_VARIABLES,
    short_help="stack + worker(s) + a batch of jobs, with progress (development only)",
    help="Start (or reuse) the local stack, the fake OpenRouter server and worker replicas, "
    "submit a batch of jobs and show their progress from the database; exits 0 when every "
    "job succeeded.",
)
@click.option("--jobs", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option(
    "--type", "job_type", type=click.Choice(["echo", "llm.chat"]), default="echo",
    show_default=True,
)  # fmt: skip
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@with_settings
def demo_command(settings: Settings, jobs: int, job_type: str, replicas: int) -> int:
    from jobstream.streams.dev.demo import run_demo

    return run_demo(settings, jobs=jobs, job_type=job_type, replicas=replicas)


@cache
def commands() -> dict[str, click.Command]:
    """The development commands by name, for :mod:`jobstream.streams.cli`."""
    from jobstream.streams.dev.fake_openrouter import fake_openrouter_command

    return {"dev": dev_group, "demo": demo_command, "fake-openrouter": fake_openrouter_command}
