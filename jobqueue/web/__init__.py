"""The HTTP side of jobqueue: `create_app()` builds a whole FastAPI app (API, worker route,
dashboard, docs); `router()` gives the same routes to include in a FastAPI app you already have,
and `close(router)` closes what it built."""

from __future__ import annotations

from .app import create_app
from .mount import close, router

__all__ = ["close", "create_app", "router"]
