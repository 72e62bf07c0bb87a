"""The HTTP side of jobqueue: `create_app()` builds a whole FastAPI app (API, worker route,
dashboard); `router()` gives the same routes to mount in a FastAPI app you already have."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
