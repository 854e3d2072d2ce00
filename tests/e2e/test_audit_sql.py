"""The audit schema and compliance queries on a current ClickHouse engine
(chdb, in-process), besides the Debian 18.16 server the other audit tests use.
Rows come from a real gateway's spool (`veil audit export`)."""
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

import harness

SQL = harness.ROOT / "gateway" / "sql"


def quote(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render(sql, since=0, until=2**32 - 1, subject="", session="", id=""):
    return (sql.replace("{db}", "veil").replace("{since}", str(since)).replace("{until}", str(until))
            .replace("{subject}", quote(subject)).replace("{session}", quote(session)).replace("{id}", quote(id)))


def schema_statements():
    text = "\n".join(l for l in (SQL / "schema.sql").read_text().splitlines() if not l.strip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def test_schema_and_every_query_run_on_a_current_engine(tmp_path, stack):
    chdb_session = pytest.importorskip("chdb.session")
    # Real records: a few calls through the shared gateway, read from its spool.
    with harness.agent(stack, tmp_path, sub="sql-agent", groups=["search"]) as s:
        s.client("sts").get_caller_identity()
        try:
            s.client("cloudtrail").stop_logging(Name="t")
        except Exception:
            pass
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(stack["dir"] / "veil.toml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(l) for l in out.stdout.splitlines()]
    assert any(r["subject"] == "sql-agent" and r["verdict"] == "deny" for r in rows)

    sess = chdb_session.Session(str(tmp_path / "chdb"))
    for stmt in schema_statements():
        sess.query(render(stmt))
    sess.query("INSERT INTO veil.audit FORMAT JSONEachRow " + "\n".join(json.dumps(r) for r in rows))
    assert int(str(sess.query("SELECT count() FROM veil.audit FINAL", "CSV")).strip()) == len(rows)
    deny = next(r for r in rows if r["subject"] == "sql-agent" and r["verdict"] == "deny")
    args = {"subject": "sql-agent", "session": deny["role_session"], "id": deny["id"]}
    for f in sorted((SQL / "queries").glob("*.sql")):
        res = str(sess.query(render(f.read_text(), **args), "TSVWithNames"))
        assert res.splitlines(), f"{f.name}: no header"
        if f.name in ("denials-by-policy.sql", "calls-by-identity.sql", "policy-for-call.sql", "agent-session.sql"):
            assert len(res.splitlines()) >= 2, f"{f.name} found nothing:\n{res}"
    assert "risky-actions" in str(sess.query(render((SQL / "queries" / "denials-by-policy.sql").read_text()), "TSV"))
