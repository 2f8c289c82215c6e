"""The job pipeline: the faust agents (topology), decode, policy, registry, retry forwarding and
the handlers.
"""
