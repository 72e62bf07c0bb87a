"""What Vercel would deploy of this repository: the tracked files less what `.vercelignore`
excludes (git applies the same gitignore syntax: `git ls-files --ignored --exclude-from`). The
function needs `api/index.py`, the package, the job modules and what the install reads
(`pyproject.toml` and its readme); tests, benchmarks, docs and the Lambda entry point stay behind,
and every entry of `.vercelignore` still names something."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Generated locally, never tracked: listed so that a CLI deploy from a working folder leaves them out.
UNTRACKED_ENTRIES = {
    "/.dev-data",
    "/test-artifacts",
    "/build",
    "/dist",
    "/*.egg-info",
    "/.mypy_cache",
    "/.ruff_cache",
    "/.pytest_cache",
    "/.import_linter_cache",
    "/.hypothesis",
    "/.coverage",
}


def git_files(*args: str) -> set[str]:
    done = subprocess.run(["git", "ls-files", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"not a git checkout: {done.stderr.strip()}")
    return set(done.stdout.splitlines())


@pytest.fixture
def uploaded() -> set[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    tracked = git_files()
    ignored = git_files("--cached", "--ignored", "--exclude-from=.vercelignore")
    return tracked - ignored


def test_vercel_uploads_the_function_its_package_and_its_job_modules(uploaded: set[str]) -> None:
    package = git_files("jobqueue", "handlers")
    assert package <= uploaded, sorted(package - uploaded)
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert {"api/index.py", "pyproject.toml", readme, "vercel.json"} <= uploaded

    top = {f.split("/")[0] for f in uploaded}
    assert top - {".gitignore", ".vercelignore"} == {
        "api",
        "handlers",
        "jobqueue",
        "pyproject.toml",
        readme,
        "vercel.json",
    }
    assert {f for f in uploaded if f.startswith("api/")} == {"api/__init__.py", "api/index.py"}  # no api/lambda.py


def test_every_vercelignore_entry_names_a_tracked_path_or_a_local_artifact() -> None:
    entries = [
        line.strip()
        for line in (ROOT / ".vercelignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    stale = [e for e in entries if e not in UNTRACKED_ENTRIES and not (ROOT / e.lstrip("/")).exists()]
    assert stale == [], f"{stale} no longer exist"
