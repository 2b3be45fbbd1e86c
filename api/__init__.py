"""The REST API: a Quart (quart-trio) app served by hypercorn, with the coordinator
and the worker websocket endpoint in the same process, or (on PostgreSQL) split
into API and coordinator processes (roles.py). See api/README.md."""
from __future__ import annotations

from .access import DEFAULT_TIERS, Tier
from .app import ApiConfig, create_app
from .roles import create_role_app
from .store import open_store

__all__ = ["ApiConfig", "DEFAULT_TIERS", "Tier", "create_app", "create_role_app", "open_store"]
