"""This repository's Vercel entry point: the runtime finds the top-level `app` here.

A thin deployment file: the app is `jobqueue.web.create_app()`, and this reference app's job
types are `handlers.registry()`, named rather than imported so that a cold start imports the job
modules only when the first request needs them. An app of your own does the same in its own
`api/index.py`, or mounts `jobqueue.web.router()` into the FastAPI app it already has (README).
"""

from __future__ import annotations

from jobqueue.web import create_app

app = create_app(registry="handlers:registry")
