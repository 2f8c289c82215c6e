"""Development only: the local Kafka + PostgreSQL stack, replicas, the demo, a fake OpenRouter and
the benchmark. Production code never imports this package.

It is not in the jobstream wheel: it is the jobstream-dev distribution (``pyproject.toml`` in this
folder), which jobstream's ``[dev]`` extra installs; a checkout's editable install has it too.
"""
