"""The web application's own models, in a top-level ``models`` module as Flask and FastAPI
applications often have it (jobstream once installed one of that name)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Order:
    id: int
    amount_cents: int
