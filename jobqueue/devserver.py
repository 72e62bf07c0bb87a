"""`make dev` (`python -m jobqueue.devserver`): the API on embedded defaults, with a local tick and a kick.

With nothing configured it needs nothing installed beyond the virtualenv:

- Postgres: `DATABASE_URL`, else an embedded server (`pgserver`) with its data in
  `$JOBQUEUE_DEV_DATA/pg` (default `.dev-data/pg`, git-ignored). Postgres refuses to run as root;
  pgserver handles that itself by running the server as a `pgserver` system user it creates
  (`useradd`) and by opening the data directory's parents to it (o+rx), which is why this works in
  root containers and CI without a workaround here.
- Redis: `UPSTASH_REDIS_REST_URL`/`TOKEN` (or `KV_REST_API_*`) or `REDIS_URL`; else a Redis that
  answers on 127.0.0.1:6379 (database 0, key prefix `dev` unless JOBQUEUE_PREFIX is set); else an
  in-process one (fakeredis, which runs the same Lua). `JOBQUEUE_DEV_REDIS=memory|local|auto`
  (default auto) forces the choice when nothing is configured.
- A tick in the same event loop as the app drains once a second, as cron would, one drain at a
  time; the app's kicker wakes it at once after an enqueue, so a job starts within milliseconds
  instead of waiting for the next second. The two share the loop because the in-process Redis and
  the asyncpg pool both belong to it.
- `JOBS_API_TOKEN` and `WORKER_SECRET` default to fixed development values, in this process only.

Ctrl-C or SIGTERM stops the server, lets the tick finish its drain (running jobs complete, claimed
but unstarted ones are released), closes the engine and stops the embedded Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from jobqueue.errors import JobQueueError
from jobqueue.settings import Settings

log = logging.getLogger("jobqueue.dev")

# Fixed on purpose: printed in the banner, used only by this local process.
DEV_API_TOKEN = "dev-token"  # noqa: S105
DEV_WORKER_SECRET = "dev-worker-secret"  # noqa: S105
TICK_S = 1.0
# The kick debounce protects QStash's bill in production; here a kick is an Event.set(), so every
# enqueue may wake the tick (bursts still coalesce into one drain). An explicit setting wins.
DEV_KICK_INTERVAL_MS = 0
LOCAL_REDIS = ("127.0.0.1", 6379)


class DevError(Exception):
    """A setup problem worth one line on stderr rather than a traceback."""


@dataclass
class Services:
    settings: Settings
    postgres: str  # how each dependency is described in the banner
    redis: str
    embedded_redis: bool = False
    pg_server: Any = None  # the pgserver handle, stopped at exit
    defaults: dict[str, str] = field(default_factory=dict)  # dev credentials we made up

    def stop(self) -> None:
        if self.pg_server is not None:
            server, self.pg_server = self.pg_server, None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server.cleanup()


def _local_redis_answers(timeout_s: float = 0.3) -> bool:
    import redis

    client = redis.Redis(*LOCAL_REDIS, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:  # refused, timed out, or a Redis that wants a password
        return False
    finally:
        client.close()


def _start_pgserver(data_dir: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server

            data_dir.mkdir(parents=True, exist_ok=True)
            return get_server(data_dir / "pg")
    except ImportError:
        raise DevError(
            "DATABASE_URL is not set and pgserver is not installed: pip install 'jobqueue[embedded]'"
        ) from None
    except Exception as e:  # initdb or pg_ctl failed; pgserver has logged the server's log
        raise DevError(f"the embedded Postgres did not start ({type(e).__name__}: {e}); set DATABASE_URL") from e


def resolve(env: Mapping[str, str]) -> Services:
    """Decide what to run on, starting the embedded Postgres if needed."""
    base = Settings()
    overrides: dict[str, Any] = {}
    defaults: dict[str, str] = {}
    if not env.get("JOBS_API_TOKEN"):
        defaults["JOBS_API_TOKEN"] = DEV_API_TOKEN
    if not env.get("WORKER_SECRET"):
        defaults["WORKER_SECRET"] = DEV_WORKER_SECRET
    overrides.update(defaults)
    if not env.get("JOBQUEUE_KICK_INTERVAL_MS"):
        overrides["JOBQUEUE_KICK_INTERVAL_MS"] = DEV_KICK_INTERVAL_MS

    mode = env.get("JOBQUEUE_DEV_REDIS", "auto").lower()
    if mode not in ("auto", "memory", "local"):
        raise DevError(f"JOBQUEUE_DEV_REDIS must be auto, memory or local, not {mode!r}")
    embedded = False
    if base.upstash_url and base.upstash_token:
        redis_label = f"Upstash REST at {base.upstash_url}"
    elif base.redis_url:
        redis_label = "REDIS_URL"
    elif mode != "memory" and _local_redis_answers():
        overrides["REDIS_URL"] = "redis://{}:{}/0".format(*LOCAL_REDIS)
        if not env.get("JOBQUEUE_PREFIX"):
            overrides["JOBQUEUE_PREFIX"] = "dev"  # keep clear of other apps' keys in database 0
        redis_label = "redis://{}:{}/0 (local server)".format(*LOCAL_REDIS)
    elif mode == "local":
        raise DevError("JOBQUEUE_DEV_REDIS=local but no Redis answers on {}:{}".format(*LOCAL_REDIS))
    else:
        embedded = True
        redis_label = "in-memory (embedded fakeredis: Redis state goes with this process; Postgres keeps every job)"

    pg_server = None
    if base.database_url:
        pg_label = "DATABASE_URL"
    else:
        data_dir = Path(env.get("JOBQUEUE_DEV_DATA", ".dev-data")).resolve()
        pg_server = _start_pgserver(data_dir)
        overrides["DATABASE_URL"] = pg_server.get_uri()
        pg_label = f"embedded (pgserver, data in {data_dir / 'pg'})"
    try:
        settings = Settings(**overrides)
    except Exception:
        if pg_server is not None:
            pg_server.cleanup()
        raise
    return Services(settings, pg_label, redis_label, embedded, pg_server, defaults)


def build_engine(services: Services) -> Any:
    """The JobQueue the app and the tick share (one engine, one pool, one Redis)."""
    from jobqueue.engine import JobQueue
    from jobqueue.registry import load_registry
    from jobqueue.transports import embedded_redis

    s = services.settings
    registry = load_registry(s.registry)
    return JobQueue.from_settings(s, registry, redis=embedded_redis() if services.embedded_redis else None)


class Tick:
    """Drains once a second, or at once when kicked; never two drains at a time (the same loop as
    `jobqueue worker`, jobqueue/worker.py)."""

    def __init__(self, jq: Any, interval_s: float = TICK_S) -> None:
        self.jq = jq
        self.interval_s = interval_s
        self.wake = asyncio.Event()
        self.stop = asyncio.Event()

    async def kick(self) -> None:
        self.wake.set()

    def shutdown(self) -> None:
        self.stop.set()
        self.wake.set()

    async def run(self) -> None:
        from jobqueue.worker import run_worker

        await run_worker(
            self.jq,
            stop=self.stop,
            budget_s=self.jq.settings.budget_s,
            idle_s=self.interval_s,
            wake=self.wake,
            on_report=self._log,
        )

    @staticmethod
    def _log(report: Any) -> None:
        if not report.idle:
            log.info(
                "tick: claimed %d, completed %d, retried %d, failed %d, released %d (%d ms)",
                report.claimed,
                report.completed,
                report.retried,
                report.failed,
                report.released,
                report.duration_ms,
            )


def masked(url: str | None) -> str:
    """A URL with its password replaced, for the banner."""
    if not url:
        return "(none)"
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def banner(services: Services, url: str) -> str:
    def cred(name: str) -> str:
        value = services.defaults.get(name)
        return f"{name}={value}" if value else f"{name}: (from the environment)"

    s = services.settings
    token = services.defaults.get("JOBS_API_TOKEN") or "$JOBS_API_TOKEN"
    auth = f"-H 'Authorization: Bearer {token}'"
    redis_env = "" if services.embedded_redis or not s.redis_url else f" REDIS_URL={masked(s.redis_url)}"
    cli = (
        "  (the in-memory Redis lives in this process: the jobqueue CLI cannot reach it; set REDIS_URL)"
        if services.embedded_redis
        else f"  export DATABASE_URL='{masked(s.database_url)}'{redis_env} JOBQUEUE_PREFIX={s.prefix}"
    )
    return f"""
jobqueue dev server
  API        {url}   (docs: {url}/api/docs)
  Postgres   {services.postgres}: {masked(s.database_url)}
  Redis      {services.redis}, key prefix {s.prefix!r} (JOBQUEUE_PREFIX)
  Worker     a local tick drains every {TICK_S:g} s and at once after each enqueue
  {cred("JOBS_API_TOKEN")}
  {cred("WORKER_SECRET")}

The jobqueue CLI acts on this queue with the same settings:
{cli}

Enqueue an echo job and poll its status:
  id=$(curl -s -X POST {url}/api/jobs {auth} -H 'Content-Type: application/json' \\
       -d '{{"type": "echo", "payload": {{"hello": "world"}}}}' \\
       | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  curl -s {url}/api/jobs/$id {auth}
""".rstrip()


async def serve(services: Services, host: str, port: int) -> int:
    import uvicorn

    from jobqueue.web.app import create_app
    from jobqueue.web.kick import install_kicker

    jq = build_engine(services)
    try:
        await jq.store.migrate()
    except JobQueueError as e:
        await jq.close()
        raise DevError(f"cannot migrate the database: {e.message}") from e
    app = create_app(jq=jq)  # handed in, so the app leaves closing it to us
    tick = Tick(jq)
    install_kicker(app, tick.kick)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on"))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"http://{shown}:{port}"

    async def announce() -> None:
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.05)
        if server.started:
            print(banner(services, url), flush=True)

    # uvicorn handles SIGINT/SIGTERM during serve() and re-raises them through the previous
    # handlers once it has shut down; no-op handlers here let that re-raise land softly, so
    # the tick gets to finish its drain below instead of the process dying mid-job.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    ticker = asyncio.create_task(tick.run(), name="jobqueue-dev-tick")
    announcer = asyncio.create_task(announce())
    try:
        await server.serve()
    finally:
        announcer.cancel()
        print("stopping: letting the current drain finish (Ctrl-C again to abandon it)", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, ticker.cancel)
        tick.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await jq.close()
    return 0


def port_free(host: str, port: int) -> bool:
    """Whether the server could listen there: checked before anything starts, so a clash is one
    clear line instead of a traceback after the embedded Postgres has come up."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobqueue.devserver", description="the API on embedded defaults")
    p.add_argument("--host", default=env.get("HOST", "127.0.0.1"), help="address to listen on (HOST; 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(env.get("PORT", "8000")), help="port (PORT; 8000)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # The tick logs busy drains itself, one line each.
    logging.getLogger("jobqueue.drain").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every initdb/pg_ctl line
    try:
        args = parse_args(argv, os.environ)
    except ValueError:
        print("make dev: PORT must be a number", file=sys.stderr)
        return 2
    host, port = args.host, args.port
    if not port_free(host, port):
        print(f"make dev: port {port} on {host} is in use (another server?); set PORT or pass --port", file=sys.stderr)
        return 2
    # Until uvicorn takes over the signals, SIGTERM unwinds like Ctrl-C so the embedded Postgres
    # is still stopped (the default action would kill the process without any cleanup).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    services: Services | None = None
    try:
        services = resolve(os.environ)
        return asyncio.run(serve(services, host, port))
    except DevError as e:
        print(f"make dev: {e}", file=sys.stderr)
        return 2
    except JobQueueError as e:  # a setting the engine refuses (a malformed URL, say)
        print(f"make dev: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if services is not None:
            services.stop()


if __name__ == "__main__":
    sys.exit(main())
