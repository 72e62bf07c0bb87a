"""The scratch install of `bench.peers`, outside the repository: a venv with the Python peers, and
bullmq with ioredis from npm. Reused when present; nothing of it is ever committed.

    $BENCH_PEERS_DIR (default ~/.cache/jobqueue-bench-peers)/venv   python -m venv; pip install
    $BENCH_PEERS_DIR/node                                            npm install (node on PATH)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PEERS_DIR = Path(os.environ.get("BENCH_PEERS_DIR", "~/.cache/jobqueue-bench-peers")).expanduser()
PY_PACKAGES = ["pgqueuer", "procrastinate", "rq", "asyncpg"]  # asyncpg: pgqueuer's driver here
JS_PACKAGES = ["bullmq", "ioredis"]  # ioredis: bullmq's Redis client, an optional peer dependency


def scratch_python() -> Path:
    return PEERS_DIR / "venv" / "bin" / "python"


def node_modules() -> Path:
    return PEERS_DIR / "node" / "node_modules"


def node_version() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    return "?"


def run_checked(cmd: list[str], timeout: float, **kw: Any) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")


def install(python_peers: bool, node_peers: bool, log: Callable[[str], None]) -> None:
    base = PEERS_DIR.resolve()
    if base == REPO or REPO in base.parents:
        raise SystemExit(f"BENCH_PEERS_DIR must be outside the repository, not {base}")
    if python_peers:
        py = scratch_python()
        if not py.exists():
            log(f"creating a venv in {base / 'venv'}")
            run_checked([sys.executable, "-m", "venv", str(base / "venv")], 300)
        probe = subprocess.run([str(py), "-c", "import " + ", ".join(PY_PACKAGES)], capture_output=True, timeout=60)
        if probe.returncode != 0:
            log("pip install " + " ".join(PY_PACKAGES))
            run_checked([str(py), "-m", "pip", "install", "-q", *PY_PACKAGES], 900)
    if node_peers and not all((node_modules() / p / "package.json").exists() for p in JS_PACKAGES):
        folder = base / "node"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "package.json").exists():
            (folder / "package.json").write_text('{"private": true}\n')
        log("npm install " + " ".join(JS_PACKAGES))
        run_checked(["npm", "install", "--no-audit", "--no-fund", *JS_PACKAGES], 900, cwd=folder)


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version(), "node": node_version()}
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        out["jobqueue"] = version("jobqueue")
    if scratch_python().exists():
        names = [*PY_PACKAGES, "psycopg", "redis"]
        code = f"import json, importlib.metadata as m\nprint(json.dumps({{p: m.version(p) for p in {names!r}}}))"
        with contextlib.suppress(Exception):
            r = subprocess.run([str(scratch_python()), "-c", code], capture_output=True, text=True, timeout=60)
            out |= {f"peers-venv:{k}": v for k, v in json.loads(r.stdout).items()}
    for p in JS_PACKAGES:
        with contextlib.suppress(Exception):
            out[f"npm:{p}"] = json.loads((node_modules() / p / "package.json").read_text())["version"]
    return out
