"""A kick as QStash receives it, over a real socket, with no QStash SDK: the kicker built from the
environment publishes to `$QSTASH_URL/v2/publish/$JOBQUEUE_PUBLIC_URL/api/workers` (the regional
endpoint, not the default one) with the token and `Upstash-Retries: 0`, and an empty body."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobqueue.settings import Settings
from jobqueue.web.kick import QStashKicker, qstash_kicker


class FakeQStash(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"messageId": "msg_1"}')

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def qstash_url() -> Iterator[str]:
    FakeQStash.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeQStash)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"  # a trailing slash, as pasted from a console
    server.shutdown()
    server.server_close()


async def test_a_kick_goes_to_the_regional_qstash_url_without_retries(
    qstash_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QSTASH_URL", qstash_url)
    monkeypatch.setenv("QSTASH_TOKEN", "qstash-token-us-east-1")
    monkeypatch.setenv("JOBQUEUE_PUBLIC_URL", "https://shop.example.test/jobs/")
    kicker = qstash_kicker(Settings())
    assert isinstance(kicker, QStashKicker)
    await kicker()
    await kicker(at_ms=1_767_225_600_001)  # a delayed kick: not before that second (rounded up)

    (path, headers, body), (_, delayed, _) = FakeQStash.received
    assert path == "/v2/publish/https://shop.example.test/jobs/api/workers"
    assert headers["authorization"] == "Bearer qstash-token-us-east-1"
    assert headers["upstash-retries"] == "0"  # the next kick or tick is the retry
    assert body == b""
    assert "upstash-not-before" not in headers
    assert (delayed["upstash-not-before"], delayed["upstash-retries"]) == ("1767225601", "0")
