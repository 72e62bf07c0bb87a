"""`webhook.deliver` (being written)."""

from __future__ import annotations

from jobqueue.registry import Blueprint

blueprint = Blueprint()
