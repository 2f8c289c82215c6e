"""The dead-letter tool: filters, a bounded snapshot of the DLQ, audited replay, and the
``jobstream dlq`` commands.
"""
