"""Operator tools: the production-readiness check (doctor) and backup, restore and prune."""
