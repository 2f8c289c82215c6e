"""Development only: the local Kafka + PostgreSQL stack, replicas, the demo, a fake OpenRouter and
the benchmark. Production code never imports this package.
"""
