"""The REST API: a Quart (quart-trio) app served by hypercorn, with the coordinator
and the worker websocket endpoint in the same process. See api/README.md."""
from __future__ import annotations

from .access import DEFAULT_TIERS, Tier
from .app import ApiConfig, create_app
from .store import open_store

__all__ = ["ApiConfig", "DEFAULT_TIERS", "Tier", "create_app", "open_store"]
