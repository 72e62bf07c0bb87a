"""`make bench`: every benchmark in turn, each printing its own figures (see bench/README.md).
Run it alone on the machine: the figures share two cores with Postgres and Redis.

    python -m bench.run [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

QUICK = {
    "bench.engine": ["--jobs", "20000"],
    "bench.drain": ["--jobs", "20000"],
    "bench.groups": ["--jobs", "5000", "--workload", "echo"],
    "bench.http": [],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller runs (a few minutes in all)")
    p.add_argument("--only", nargs="*", help="module names, e.g. bench.drain")
    args = p.parse_args()
    modules = [
        "bench.engine",
        "bench.drain",
        "bench.webhook",
        "bench.groups",
        "bench.schedules",
        "bench.http",
        "bench.metrics_large",
    ]
    failed = []
    for module in args.only or modules:
        extra = QUICK.get(module, []) if args.quick else []
        print(f"\n=== python -m {module} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, "-m", module, *extra], check=False).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
