"""The deployed entry point: Vercel's Python runtime finds the top-level `app` here.

Settings come from the environment (DESIGN.md section 6); nothing connects until a request needs
it, so a cold start pays only for imports.
"""

from __future__ import annotations

from api._app import create_app

app = create_app()
