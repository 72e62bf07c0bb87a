"""Every engine contract test runs over both Redis transports (redis-py and the Upstash REST one,
through a real `jobqueue upstash-proxy`), as saq runs its whole suite per backend: any test here
that builds an engine with `make_jq` (or uses `jq`) is parametrized by `transport_kind`."""

from __future__ import annotations

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "make_jq" in metafunc.fixturenames and "transport_kind" not in metafunc.fixturenames:
        metafunc.fixturenames.append("transport_kind")
        metafunc.parametrize("transport_kind", ["redis", "upstash"], indirect=True)
