"""The built wheel, used by an application of its own (issue 9's "Done when").

The wheel is built from a copy of the package's sources and must hold exactly the `jobqueue`
package with its data files (migrations, queries, Lua, the dashboard's templates and assets,
py.typed): none of this repository's deployment files. It is installed with `pip install
--no-deps --target` into a folder outside the repository; `wheel_app/` (a Vercel-style app with
its own FastAPI app, routes, job module and business table) is copied to another, and both run as
real processes from there with this environment's interpreter (whose site-packages hold the
dependencies) and `PYTHONPATH=<wheel folder>:<app folder>`: `jobqueue migrate` applies the wheel's
migrations to an empty database, uvicorn serves the app, jobs are enqueued over HTTP through the
mounted router and inside the app's own transactions (one of which rolls back), one drain over
`/jobs/api/workers` runs them with the app's handler.

A second test runs the wheel with every extra's modules made unimportable (a `sitecustomize`
refuses them), standing in for `pip install jobqueue` without extras: the package, the web app,
the built-ins, the client and the CLI (`migrate`, `enqueue`, `drain`) work, and what needs an extra
says which one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from email.parser import HeaderParser
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis as redis_sync

from jobqueue.keys import Keys
from tests.conftest import ADMIN_URL, _db_url, _free_port

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().parent / "wheel_app"
API_TOKEN = "wheel-api-token-0123456789abcdef"
WORKER_SECRET = "wheel-worker-secret-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

# The top-level modules each extra brings (and what they pull in themselves); none may be needed
# by the core. `uvicorn` itself is core: the dev server and `jobqueue upstash-proxy` use it.
EXTRA_MODULES = {
    "server": ["uvloop", "httptools", "watchfiles", "websockets"],
    "lambda": ["mangum"],
    "sqlmodel": ["sqlmodel", "sqlalchemy", "greenlet"],
    "embedded": ["fakeredis", "lupa", "pgserver"],
    "(removed)": ["qstash"],
}
BLOCKER = """\
import importlib.abc
import sys

BLOCKED = {blocked!r}


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""


def package_files() -> set[str]:
    """Every file of the package's source tree, as the wheel names them."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "jobqueue").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # From a copy: setuptools leaves build/ and *.egg-info in the tree it builds, and a stale
    # build/lib (files since deleted) would end up in the wheel.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "jobqueue", src / "jobqueue", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    # No build isolation: the dev extra installs the backend (setuptools) and `build`, so a run
    # downloads nothing.
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = out.glob("jobqueue-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed on its own (its dependencies are this environment's)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--no-deps", "--no-index", "--no-compile", "--target", str(target), str(wheel)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert (target / "jobqueue" / "__init__.py").is_file()
    return target


def app_env(pythonpath: list[Path], **extra: str) -> dict[str, str]:
    """The test's environment without anything that configures jobqueue or points into this
    repository, plus `extra`."""
    drop = ("JOBQUEUE_", "UPSTASH_", "KV_", "QSTASH_", "DATABASE_URL", "REDIS_URL", "JOBS_", "WORKER_SECRET", "CRON_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath), **extra)
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def jobqueue_cli(site: Path) -> list[str]:
    """The `jobqueue` script pip installed with the wheel (its shebang is this interpreter)."""
    script = site / "bin" / "jobqueue"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "jobqueue"]


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with nothing in it: the wheel's migrations make the queue's schema."""
    name = f"jq_wheel_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as e:
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_URL}: {e}")
    yield _db_url(name)
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def test_the_wheel_holds_the_package_with_its_data_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = HeaderParser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
    assert {n.split("/")[0] for n in names - dist_info} == {"jobqueue"}  # no api/, handlers/, tests/, bench/
    # Exactly the package's source tree: every module and every data file, nothing else.
    assert names - dist_info == package_files(), {
        "missing": sorted(package_files() - names),
        "extra": sorted(names - dist_info - package_files()),
    }
    for data in ("py.typed", "sql/queries.sql", "sql/migrations/0001_initial.sql", "lua/claim.lua"):
        assert f"jobqueue/{data}" in names
    assert any(n.startswith("jobqueue/web/templates/") for n in names)
    assert any(n.startswith("jobqueue/web/static/") for n in names)
    assert wheel.stat().st_size < 1_000_000, wheel.stat().st_size

    # The core requires no extra's package; each extra is declared.
    requires = metadata.get_all("Requires-Dist") or []
    core = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert core.isdisjoint({"mangum", "sqlmodel", "sqlalchemy", "qstash", "fakeredis", "pgserver", "uvloop"}), core
    assert {"fastapi", "uvicorn", "asyncpg", "jinja2", "python-multipart"} <= core
    assert not any(r.startswith("uvicorn[") and "extra ==" not in r for r in requires)  # plain uvicorn only
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert {"server", "lambda", "sqlmodel", "embedded", "all", "dev"} <= extras


def test_the_core_runs_without_any_extra_and_an_extra_names_itself(
    site: Path, database_url: str, redis_server: str, prefix: str, tmp_path: Path
) -> None:
    blocked = sorted(m for mods in EXTRA_MODULES.values() for m in mods)
    hooks = tmp_path / "no-extras"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(blocked)))
    env = app_env([hooks, site], DATABASE_URL=database_url, REDIS_URL=redis_server, JOBQUEUE_PREFIX=prefix)
    check = f"""
import sys
import jobqueue, jobqueue.web, jobqueue.builtins, jobqueue.client, jobqueue.cli, jobqueue.worker
import jobqueue.devserver, jobqueue.testing, jobqueue.enqueue, jobqueue.web.aws_lambda
assert jobqueue.__file__.startswith({str(site)!r}), jobqueue.__file__
app = jobqueue.web.create_app(registry="jobqueue.builtins:default_registry")
router = jobqueue.web.router()
assert sys.modules.get("sitecustomize") is not None

def refused(call):
    try:
        call()
    except ModuleNotFoundError as e:
        return str(e)
    raise AssertionError("imported without its extra")

def lambda_http():
    from jobqueue.web.aws_lambda import LambdaHandler
    LambdaHandler(app)({{"version": "2.0", "rawPath": "/api/health"}}, None)

def table():
    import jobqueue.table

def embedded():
    from jobqueue.transports import embedded_redis
    embedded_redis()

print(refused(lambda_http))
print(refused(table))
print(refused(embedded))
"""
    out = run([sys.executable, "-c", check], env, tmp_path).stdout.splitlines()
    assert "pip install 'jobqueue[lambda]'" in out[0], out
    assert "pip install 'jobqueue[sqlmodel]'" in out[1], out
    assert "pip install 'jobqueue[embedded]'" in out[2], out

    cli = jobqueue_cli(site)
    run([*cli, "migrate"], env, tmp_path)
    job = json.loads(run([*cli, "enqueue", "echo", '{"core": true}'], env, tmp_path).stdout)["job"]
    report = json.loads(run([*cli, "drain", "--budget", "10"], env, tmp_path).stdout)
    assert (report["claimed"], report["completed"], report["failed"]) == (1, 1, 0), report
    done = json.loads(run([*cli, "status", str(job["id"])], env, tmp_path).stdout)
    assert (done["status"], done["result"]) == ("completed", {"core": True})


def wait_up(proc: subprocess.Popen[bytes], url: str, log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/jobs/api/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the app did not answer within {timeout_s} s:\n{log.read_text()}")


def ready_ids(redis_url: str, prefix: str, queues: tuple[str, ...]) -> set[int]:
    r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    members = [m for q in queues for p in range(10) for m in r.lrange(keys.ready(q, p), 0, -1)]
    return {int(m.rsplit(":", 1)[1]) for m in members}


async def table_rows(database_url: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    conn = await asyncpg.connect(database_url)
    try:
        orders = [(r["item"], r["via"]) for r in await conn.fetch("SELECT item, via FROM orders ORDER BY id")]
        jobs = [
            (r["type"], r["status"], r["item"])
            for r in await conn.fetch("SELECT type, status, payload->>'item' AS item FROM jobs ORDER BY id")
        ]
        return orders, jobs
    finally:
        await conn.close()


def test_an_app_of_its_own_runs_on_the_installed_wheel(
    wheel: Path, site: Path, empty_database: str, redis_server: str, prefix: str, tmp_path: Path
) -> None:
    app_dir = tmp_path / "shop-app"
    shutil.copytree(APP, app_dir)
    assert not app_dir.resolve().is_relative_to(ROOT)
    env = app_env(
        [site, app_dir],
        DATABASE_URL=empty_database,
        REDIS_URL=redis_server,
        JOBQUEUE_PREFIX=prefix,
        JOBS_API_TOKEN=API_TOKEN,
        WORKER_SECRET=WORKER_SECRET,
    )

    # Deploy step: the queue's schema from the wheel's migrations, then the app's own table.
    migrated = run([*jobqueue_cli(site), "migrate"], env, app_dir).stdout
    with zipfile.ZipFile(wheel) as z:
        shipped = sorted(
            Path(n).stem for n in z.namelist() if n.startswith("jobqueue/sql/migrations/") and n.endswith(".sql")
        )
    assert re.findall(r"^applied (\S+)$", migrated, re.M) == shipped, migrated

    async def app_schema() -> None:
        conn = await asyncpg.connect(empty_database)
        try:
            await conn.execute((app_dir / "shop" / "schema.sql").read_text())
        finally:
            await conn.close()

    asyncio.run(app_schema())

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.index:app", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=app_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_up(proc, url, log)
        with httpx.Client(base_url=url, timeout=30) as http:
            home = http.get("/").json()
            assert home["app"] == "shop"
            assert Path(home["jobqueue"]).is_relative_to(site), home  # the wheel's code, not this checkout
            assert home["this_repository_importable"] is False

            # Over HTTP through the mounted router: the app's job type, validated by its model.
            over_http = http.post("/jobs/api/jobs", headers=AUTH, json={"type": "shop.receipt", "payload": {}})
            assert (over_http.status_code, over_http.json()["error"]["field"]) == (422, "payload.order_id")
            r = http.post(
                "/jobs/api/jobs", headers=AUTH, json={"type": "shop.receipt", "payload": {"order_id": 0, "item": "api"}}
            )
            assert r.status_code == 201, r.text
            by_http = r.json()

            # Inside the app's own transactions: asyncpg in jq.transaction(conn), a SQLModel session.
            committed = []
            for via in ("asyncpg", "session"):
                r = http.post("/orders", json={"item": f"book via {via}", "via": via})
                assert r.status_code == 201, r.text
                committed.append(r.json())
            for via in ("asyncpg", "session"):
                r = http.post("/orders", json={"item": f"declined via {via}", "via": via, "decline": True})
                assert r.status_code == 402, r.text

            ids = [by_http["id"], *(o["job"]["id"] for o in committed)]
            # Only committed jobs are in Redis (the rolled-back ones never reached it).
            assert ready_ids(redis_server, prefix, ("shop", "default")) == set(ids)

            # One drain over the mounted worker route, with the worker secret.
            r = http.post("/jobs/api/workers", headers={"Authorization": f"Bearer {WORKER_SECRET}"})
            assert r.status_code == 200, r.text
            report = r.json()
            counts = ("claimed", "completed", "retried", "failed", "released", "more")
            assert {k: report[k] for k in counts} == {
                "claimed": 3,
                "completed": 3,
                "retried": 0,
                "failed": 0,
                "released": 0,
                "more": False,
            }, report

            results = [http.get(f"/jobs/api/jobs/{i}", headers=AUTH).json() for i in ids]
            assert [(j["status"], j["queue"], j["attempts"]) for j in results] == [("completed", "shop", 1)] * 3
            expected = [
                (0, "api"),
                *((o["order_id"], f"book via {v}") for o, v in zip(committed, ("asyncpg", "session"), strict=True)),
            ]
            assert [j["result"] for j in results] == [
                {"receipt": f"order {order_id}: {item}", "handler": "shop.jobs", "attempt": 1}
                for order_id, item in expected
            ]
            unknown = http.post("/jobs/api/jobs", headers=AUTH, json={"type": "no.such", "payload": {}})
            assert unknown.status_code == 422
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    assert code == -signal.SIGTERM, log.read_text()
    assert "Finished server process" in log.read_text()

    # The rolled-back orders left nothing: no order row, no job row.
    orders, jobs = asyncio.run(table_rows(empty_database))
    assert orders == [("book via asyncpg", "asyncpg"), ("book via session", "session")]
    assert jobs == [("shop.receipt", "completed", "api"), *(("shop.receipt", "completed", o) for o, _ in orders)]
