"""The audit trail end to end: real gateway, real ClickHouse (the Debian
server), real boto3. One record per call, no secret in any record, nothing
lost when ClickHouse or the gateway goes down, compliance queries through
`veil audit query`."""
import concurrent.futures
import itertools
import json
import os
import signal
import subprocess
import time

import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import harness

_db = itertools.count()


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory):
    ch = harness.ClickHouse(tmp_path_factory.mktemp("clickhouse"))
    yield ch
    ch.stop()


def audited_veil(issuer, moto, d, ch, extra=""):
    db = f"veil_{os.getpid()}_{next(_db)}"
    cfg, ca = harness.veil_config(d, issuer, moto, extra + harness.clickhouse_audit(ch, db))
    return harness.Veil(cfg), cfg, ca, db


def veil_cli(*args):
    return subprocess.run([str(harness.VEIL), *args], capture_output=True, text=True, timeout=60)


def test_every_call_is_recorded_in_clickhouse_without_secrets(issuer, moto, clickhouse, tmp_path):
    veil, cfg, ca, db = audited_veil(issuer, moto, tmp_path, clickhouse)
    try:
        secret_name = f"prod/payments/db-{time.time_ns()}"
        harness.moto_client(moto, "secretsmanager").create_secret(Name=secret_name, SecretString='{"password":"audit-hunter2"}')
        os.environ["AWS_SDK_UA_APP_ID"] = "research-agent-7"
        try:
            with harness.agent_session(veil, ca, harness.mint(issuer, sub="search-agent", groups=["search"]), tmp_path) as s:
                sm = s.client("secretsmanager")
                assert sm.get_secret_value(SecretId=secret_name)["SecretString"] == "***"
                with pytest.raises(ClientError):
                    s.client("cloudtrail").stop_logging(Name="org-trail")
            with harness.agent_session(veil, ca, harness.mint(issuer, sub="payments-agent", groups=["payments"]), tmp_path) as s:
                # The owner sees the plaintext; the audit record must not.
                assert "audit-hunter2" in s.client("secretsmanager").get_secret_value(SecretId=secret_name)["SecretString"]
                s.client("secretsmanager").create_secret(Name=f"new-{time.time_ns()}", SecretString="audit-param-secret")
        finally:
            os.environ.pop("AWS_SDK_UA_APP_ID", None)
        # Two STS calls, four service calls.
        assert clickhouse.wait_count(f"SELECT count() FROM {db}.audit FINAL", 6) == 6
        rows = clickhouse.rows(f"SELECT * FROM {db}.audit FINAL ORDER BY ts_ms")
        everything = json.dumps(rows)
        assert "audit-hunter2" not in everything and "audit-param-secret" not in everything
        by_action = {(r["subject"], r["action"]): r for r in rows}
        read = by_action[("search-agent", "GetSecretValue")]
        assert read["verdict"] == "allow" and read["status"] == 200 and read["masked_fields"] >= 1
        assert read["resource"] == secret_name and json.loads(read["params"])["SecretId"] == secret_name
        assert read["app_id"] == "research-agent-7" and "app/research-agent-7" in read["user_agent"]
        assert set(read["policy_names"]) >= {"aws-sensitive", "secrets-by-team", "risky-actions"}
        assert all(len(s) == 64 for s in read["policy_sha256s"])
        assert read["aws_request_id"] and read["source_ip"] == "127.0.0.1"
        assert int(read["upstream_us"]) > 0 and int(read["total_us"]) >= int(read["upstream_us"])
        assert json.loads(read["claims"])["groups"] == ["search"]
        denied = by_action[("search-agent", "StopLogging")]
        assert denied["verdict"] == "deny" and denied["status"] == 403
        assert any(r.startswith("risky-actions:") for r in denied["reasons"])
        owner = by_action[("payments-agent", "GetSecretValue")]
        assert owner["masked_fields"] == 0 and json.loads(owner["response"])["SecretString"] == "***"
        assert by_action[("search-agent", "AssumeRoleWithWebIdentity")]["verdict"] == "allow"
        assert {r["role"] for r in rows} == {harness.ROLE_ARN}, "every record names the role the call ran as"

        # The compliance queries, through the CLI, against this ClickHouse.
        out = veil_cli("audit", "query", "secrets-accessed", "--config", str(cfg), "--since", "1h")
        assert out.returncode == 0, out.stderr
        assert "search-agent" in out.stdout and "payments-agent" in out.stdout and secret_name in out.stdout
        out = veil_cli("audit", "query", "denials-by-policy", "--config", str(cfg), "--tsv")
        assert out.stdout.splitlines()[1].startswith("risky-actions\t1\t1\t"), out.stdout + out.stderr
        out = veil_cli("audit", "query", "agent-session", "--config", str(cfg), "--session", "research-agent-7", "--tsv")
        assert len(out.stdout.splitlines()) == 1 + 6, out.stdout  # header + every call made with that app id
        out = veil_cli("audit", "query", "policy-for-call", "--config", str(cfg), "--id", read["id"], "--tsv")
        assert "aws-sensitive" in out.stdout and read["policy_sha256s"][0] in out.stdout
        out = veil_cli("audit", "query", "masked-by-identity", "--config", str(cfg), "--tsv")
        assert any(l.startswith("search-agent\t1\t1\t") for l in out.stdout.splitlines()), out.stdout + out.stderr
        out = veil_cli("audit", "query", "approvals", "--config", str(cfg), "--tsv")
        assert out.returncode == 0 and out.stdout.startswith("approval_id\t"), out.stderr
        out = veil_cli("audit", "query", "calls-by-identity", "--config", str(cfg))
        assert out.returncode == 1 and "needs --subject" in out.stderr
    finally:
        veil.stop()


def test_a_table_from_before_the_role_columns_gains_them(issuer, moto, clickhouse, tmp_path):
    """ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: the gateway adds the
    columns an older release's table lacks, once, and ships into it."""
    db = f"veil_{os.getpid()}_{next(_db)}"
    schema = (harness.ROOT / "gateway" / "sql" / "schema.sql").read_text()
    older = schema.replace(",\n    role String,\n    params_truncated UInt8\n", "\n")
    assert older != schema
    for stmt in [s for s in "\n".join(l for l in older.splitlines() if not l.startswith("--")).split(";") if s.strip()]:
        clickhouse.query(stmt.replace("{db}", db))
    clickhouse.query(f"INSERT INTO {db}.audit (id, time, kind, subject) VALUES ('old-row', now(), 'call', 'before')")
    cfg, ca = harness.veil_config(tmp_path, issuer, moto, harness.clickhouse_audit(clickhouse, db))
    for attempt in range(2):  # a restart finds the column there
        veil = harness.Veil(cfg)
        try:
            with harness.agent_session(veil, ca, harness.mint(issuer, sub=f"role-agent-{attempt}"), tmp_path) as s:
                s.client("sts").get_caller_identity()
            clickhouse.wait_count(f"SELECT count() FROM {db}.audit FINAL WHERE subject = 'role-agent-{attempt}'", 2)
        finally:
            veil.stop()
    rows = clickhouse.rows(f"SELECT subject, role FROM {db}.audit FINAL ORDER BY ts_ms")
    assert {(r["subject"], r["role"]) for r in rows} == {("before", ""), ("role-agent-0", harness.ROLE_ARN), ("role-agent-1", harness.ROLE_ARN)}, rows
    columns = [r["name"] for r in clickhouse.rows(f"DESCRIBE TABLE {db}.audit")]
    assert (columns.count("role"), columns.count("params_truncated")) == (1, 1), columns


def sts_clients(veil, ca, token, tmp_path, threads=8):
    """`threads` boto3 STS clients of one agent, their role already assumed."""
    import boto3
    token_file = tmp_path / f"token-{time.time_ns()}"
    token_file.write_text(token)
    env = harness.agent_env(veil, ca, token_file)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        clients = []
        for _ in range(threads):
            session = boto3.Session()
            session.get_credentials().get_frozen_credentials()
            clients.append(session.client("sts", config=BotoConfig(retries={"max_attempts": 1})))
        return clients
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load(clients, n):
    """n GetCallerIdentity calls spread over the clients' threads; returns
    the request ids (= audit record ids) of the answered ones."""
    def work(client):
        ids = []
        for _ in range(n // len(clients)):
            try:
                ids.append(client.get_caller_identity()["ResponseMetadata"]["RequestId"])
            except Exception:  # the gateway was killed mid-load
                break
        return ids

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as ex:
        return [x for ids in ex.map(work, clients) for x in ids]


def caller_identity_load(veil, ca, token, tmp_path, n, threads=8):
    return load(sts_clients(veil, ca, token, tmp_path, threads), n)


def test_clickhouse_outage_and_insert_errors_lose_nothing(issuer, moto, tmp_path):
    ch = harness.ClickHouse(tmp_path / "ch")
    try:
        veil, cfg, ca, db = audited_veil(issuer, moto, tmp_path, ch)
        try:
            token = harness.mint(issuer, sub="load-agent")
            first = caller_identity_load(veil, ca, token, tmp_path, 200)
            assert ch.wait_count(f"SELECT count() FROM {db}.audit FINAL WHERE action = 'GetCallerIdentity'", len(first)) == len(first)
            ch.stop()
            during = caller_identity_load(veil, ca, token, tmp_path, 10_000)
            assert len(during) == 10_000, "calls are served while ClickHouse is down"
            ch.start()
            want = len(first) + len(during)
            assert ch.wait_count(f"SELECT count() FROM {db}.audit FINAL WHERE action = 'GetCallerIdentity'", want, timeout=120) == want
            # Inserts failing (table gone) are retried until they succeed.
            ch.query(f"RENAME TABLE {db}.audit TO {db}.audit_hold")
            after = caller_identity_load(veil, ca, token, tmp_path, 100)
            time.sleep(1)
            ch.query(f"RENAME TABLE {db}.audit_hold TO {db}.audit")
            want += len(after)
            assert ch.wait_count(f"SELECT count() FROM {db}.audit FINAL WHERE action = 'GetCallerIdentity'", want, timeout=120) == want
            assert ch.wait_count(f"SELECT uniqExact(id) FROM {db}.audit WHERE action = 'GetCallerIdentity'", want) == want
            ids = set(r["id"] for r in ch.rows(f"SELECT id FROM {db}.audit"))
            assert set(first + during + after) <= ids
            metrics = __import__("requests").get(veil.metrics_url, timeout=5).text
            assert "veil_audit_ship_failures_total" in metrics
        finally:
            veil.stop()
    finally:
        ch.stop()


def test_sigkill_mid_load_loses_no_answered_call(issuer, moto, clickhouse, tmp_path):
    veil, cfg, ca, db = audited_veil(issuer, moto, tmp_path, clickhouse)
    token = harness.mint(issuer, sub="crash-agent")
    clients = sts_clients(veil, ca, token, tmp_path)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        running = ex.submit(load, clients, 4000)
        time.sleep(2)
        veil.proc.stop(sig=signal.SIGKILL)
        answered = running.result()
    assert answered, "some calls were answered before the kill"
    veil = harness.Veil(cfg)
    try:
        ids = set()
        deadline = time.time() + 60
        while time.time() < deadline and not set(answered) <= ids:
            ids = set(r["id"] for r in clickhouse.rows(f"SELECT id FROM {db}.audit FINAL"))
            time.sleep(0.3)
        missing = set(answered) - ids
        assert not missing, f"{len(missing)} answered calls have no record"
        dupes = clickhouse.rows(f"SELECT id, count() AS n FROM {db}.audit FINAL GROUP BY id HAVING n > 1")
        assert dupes == []
    finally:
        veil.stop()


def test_torn_spool_tail_is_cut_and_the_rest_shipped(issuer, moto, clickhouse, tmp_path):
    # No ClickHouse first: records stay in the spool.
    cfg, ca = harness.veil_config(tmp_path, issuer, moto)
    veil = harness.Veil(cfg)
    answered = caller_identity_load(veil, ca, harness.mint(issuer, sub="torn-agent"), tmp_path, 40, threads=2)
    veil.stop()
    out = veil_cli("audit", "query", "calls-by-identity", "--config", str(cfg), "--subject", "torn-agent", "--tsv")
    assert out.returncode == 0, out.stderr
    assert sum("sts:GetCallerIdentity" in line for line in out.stdout.splitlines()) == len(answered), "the spool answers queries without ClickHouse"
    seg = sorted((tmp_path / "veil-spool").glob("*.seg"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\xff\x00\x00\x00garbage-torn")
    db = f"veil_torn_{os.getpid()}"
    cfg.write_text(cfg.read_text() + harness.clickhouse_audit(clickhouse, db))
    veil = harness.Veil(cfg)
    try:
        assert "truncated a torn record" in veil.proc.output()
        want = len(answered)
        assert clickhouse.wait_count(f"SELECT count() FROM {db}.audit FINAL WHERE action = 'GetCallerIdentity'", want) == want
    finally:
        veil.stop()


def test_full_spool_fails_closed_with_a_clear_error(issuer, moto, tmp_path):
    cfg, ca = harness.veil_config(tmp_path, issuer, moto, "[audit]\nsegment_bytes = 4096\nmax_spool_bytes = 8192\n")
    veil = harness.Veil(cfg)
    try:
        with harness.agent_session(veil, ca, harness.mint(issuer, sub="full-agent"), tmp_path) as s:
            sts = s.client("sts", config=BotoConfig(retries={"max_attempts": 1}))
            err = None
            for _ in range(200):
                try:
                    sts.get_caller_identity()
                except ClientError as e:
                    err = e
                    break
            assert err is not None, "a full spool refuses calls"
            assert err.response["Error"]["Code"] == "ServiceUnavailable"
            assert "audit" in err.response["Error"]["Message"] and "full" in err.response["Error"]["Message"]
    finally:
        veil.stop()


def test_bad_audit_config_is_refused_with_the_key(tmp_path, issuer, moto):
    cfg, _ = harness.veil_config(tmp_path, issuer, moto, "[audit]\non_failure = \"ignore\"\n")
    out = subprocess.run([str(harness.VEIL), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "audit.on_failure" in out.stderr
