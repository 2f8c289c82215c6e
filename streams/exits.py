"""The exit codes of every ``jobstream`` command, in one place.

They are part of the interface: scripts and runbooks branch on them.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    """The command ran and the answer is no: a check failed, a job has no row, nothing matched."""
    USAGE = 2
    """Bad arguments or settings that cannot work together."""
    UNREACHABLE = 3
    """Kafka or PostgreSQL is not configured, cannot be reached, or refused us."""
    PARTIAL = 4
    """Some of the work was done and some failed (``dlq replay``)."""
