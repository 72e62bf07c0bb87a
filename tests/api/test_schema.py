"""Property-based: schemathesis generates requests (valid and invalid) from our own OpenAPI
document and checks that nothing answers a 5xx, and that every answer (status, content type,
body) is one the document declares. Bounded per operation so the run stays well under a minute.

The app is built from settings here, not around the test's engine: schemathesis drives it on its
own event-loop thread, and the engine's connections must be made on the loop that uses them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobqueue.registry import Registry
from jobqueue.settings import Settings
from jobqueue.web.app import create_app

from .conftest import APP_SETTINGS, AUTH, WORKER_AUTH

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api_app(database_url: str, redis_server: str, prefix: str, registry: Registry) -> Iterator[FastAPI]:
    s = Settings(DATABASE_URL=database_url, REDIS_URL=redis_server, JOBQUEUE_PREFIX=prefix, **APP_SETTINGS)
    yield create_app(s, registry=registry)
    # Close the engine (lifespan shutdown) before the test database is dropped.
    asgi.shutdown_lifespans()


# The document only: building it needs no database. Each test sends its cases to `api_app`.
schema = schemathesis.openapi.from_dict(create_app(Settings(**APP_SETTINGS)).openapi())
schema.app = FastAPI()  # selects the in-process ASGI transport; the real app is passed per call


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the repository
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi(case: schemathesis.Case, api_app: FastAPI) -> None:
    # Valid credentials: the point is the handlers, not the 401 (test_auth.py covers that).
    headers = WORKER_AUTH if case.path == "/api/workers" else AUTH
    case.call_and_validate(headers=headers, checks=CHECKS, app=api_app)
