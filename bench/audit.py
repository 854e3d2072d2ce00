#!/usr/bin/env python3
"""Audit benchmark: starts a real ClickHouse (the Debian server, as the tests
do) and runs the audit_bench example against it: request-path cost of a
record (enqueue, durable group commit) and the spool → ClickHouse shipping
rate. Usage: python3 bench/audit.py (after `make bench`'s build of the audit_bench example)."""
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402

with tempfile.TemporaryDirectory() as d:
    ch = harness.ClickHouse(d)
    try:
        subprocess.run([str(ROOT / "target" / harness.PROFILE / "examples/audit_bench"), "--clickhouse", ch.url], check=True)
    finally:
        ch.stop()
