"""The development commands of ``jobstream``: ``dev``, ``demo`` and ``fake-openrouter``.

:mod:`streams.cli` loads this module only inside those commands, so no production command ever
imports :mod:`streams.dev`.
"""

from __future__ import annotations

import argparse

from streams.settings import Settings


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dev.stack import local_bootstrap
    from streams.dev.stack import main as devstack_main

    if args.action == "kafka-tool":
        from streams.dev.kafka_tools import main as tool_main

        return tool_main(args.rest, find_bootstrap=lambda: local_bootstrap(settings.state_dir))

    return devstack_main([args.action, "--state-dir", str(settings.state_dir)])


def cmd_fake_openrouter(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dev.fake_openrouter import main as fake_main

    return fake_main(args.rest)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dev.demo import run_demo

    return run_demo(settings, jobs=args.jobs, job_type=args.type, replicas=args.replicas)
