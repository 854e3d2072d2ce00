"""Several gateways, one service: three `veil serve` replicas sharing the
session key, policies, one PostgreSQL approval store and one ClickHouse,
behind a real TCP load balancer (nginx's stream module, round robin, TLS
passed through). boto3 and the AWS CLI reach them through one address.

The tests run in order on one cluster: a call held on one replica and
approved on another, retries landing anywhere, 20 concurrent retries racing
for one grant, PostgreSQL stopped under load, a replica killed mid-wait, the
two-person rule across replicas, and finally every audit record in
ClickHouse exactly once with the instance that wrote it."""
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import threading
import time
import types
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import harness

ADMIN_TOKEN = "c" * 40
NAMES = ("a", "b", "c")
WAIT_SECS = 3


class Cluster:
    def __init__(self, d, issuer, moto):
        self.d, self.issuer, self.moto = Path(d), issuer, moto
        self.pg = self.ch = self.lb = None
        self.replicas = {}
        try:
            self._start()
        except BaseException:
            # Nothing started here outlives a failed start.
            self.close()
            raise

    def _start(self):
        issuer, moto = self.issuer, self.moto
        self.pg = harness.Postgres()
        self.ch = harness.ClickHouse(self.d / "clickhouse")
        self.db = f"veil_cluster_{os.getpid()}"
        base, self.ca = harness.veil_config(self.d, issuer, moto)
        self.base = base.read_text()
        (self.d / "admin.token").write_text(ADMIN_TOKEN)
        self.pg_block = self.pg.config(self.d / "pg.password")
        self.ports = {n: (harness.free_port(), harness.free_port()) for n in NAMES}
        # What the tests did, for the audit check at the end: approval id →
        # {step: instance expected or None for any}.
        self.expected_steps = {}
        for n in NAMES:
            self.start(n)
        self.lb = harness.Balancer(self.d / "lb", {
            "aws": [f"127.0.0.1:{self.ports[n][0]}" for n in NAMES],
            "admin": [f"127.0.0.1:{self.ports[n][1]}" for n in NAMES],
        })
        self.url = self.lb.url("aws")
        self.admin_url = self.lb.url("admin")

    def config(self, name, min_approvals=1):
        """Replica `name`'s config: the shared one (keys, TLS, policies,
        roles, stores) with its own ports, instance name and spool."""
        port, admin_port = self.ports[name]
        text = self.base.replace('[listener]\naddress = "127.0.0.1:0"', f'[listener]\naddress = "127.0.0.1:{port}"', 1)
        text += f"""
[admin]
address = "127.0.0.1:{admin_port}"
token_file = "admin.token"

[audit]
instance = "veil-{name}"
spool_dir = "spool-{name}"
{harness.clickhouse_audit(self.ch, self.db)}
[approvals]
wait_secs = {WAIT_SECS}
ttl_secs = 600
min_approvals = {min_approvals}
{self.pg_block}"""
        cfg = self.d / f"veil-{name}.toml"
        cfg.write_text(text)
        return cfg

    def start(self, name, min_approvals=1):
        self.replicas[name] = harness.Veil(self.config(name, min_approvals))

    def stop(self, name, sig=signal.SIGTERM):
        return self.replicas[name].proc.stop(sig)

    def close(self):
        for r in self.replicas.values():
            r.stop()
        for part in (self.lb, self.ch):
            if part:
                part.stop()
        if self.pg:
            self.pg.close()

    def direct(self, name):
        """Replica `name` itself, bypassing the balancer."""
        return self.replicas[name]

    def credentials(self, tmp_path, sub, **claims):
        """Session credentials for an agent, from the STS emulation through the balancer."""
        with harness.agent_session(types.SimpleNamespace(url=self.url), self.ca, harness.mint(self.issuer, sub=sub, **claims), tmp_path) as s:
            return s.get_credentials().get_frozen_credentials()

    def client(self, creds, service="iam", url=None):
        """A client on its own connection (so the balancer picks a replica for it)."""
        return boto3.session.Session().client(
            service, endpoint_url=url or self.url, region_name="us-east-1", verify=str(self.ca),
            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key, aws_session_token=creds.token,
            config=BotoConfig(retries={"max_attempts": 1}, read_timeout=60, connect_timeout=5))

    def review(self, method, path, sub="alice", admin_url=None, **kw):
        token = harness.mint(self.issuer, sub=sub, groups=["security-reviewers"])
        return requests.request(method, (admin_url or self.admin_url) + path, headers={"Authorization": f"Bearer {token}"},
                                verify=str(self.ca), timeout=30, **kw)

    def cli(self, *args, sub="alice", admin_url=None):
        env = dict(os.environ, VEIL_REVIEWER_TOKEN=harness.mint(self.issuer, sub=sub, groups=["security-reviewers"]))
        return subprocess.run([str(harness.VEIL), "approvals", *args, "--admin", admin_url or self.admin_url, "--ca", str(self.ca)],
                              capture_output=True, text=True, env=env, timeout=60)

    def pending_for(self, subject, admin_url=None, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.review("GET", "/v1/approvals", admin_url=admin_url)
            if r.ok:
                mine = [e for e in r.json()["pending"] if e["subject"] == subject]
                if mine:
                    return mine
            time.sleep(0.1)
        raise AssertionError(f"no pending approval for {subject}")

    def records(self, where):
        return self.ch.rows(f"SELECT id, kind, instance, verdict, action, approval_id, subject, status FROM {self.db}.audit FINAL WHERE {where} ORDER BY ts_ms")


def approval_id(err):
    m = re.search(r"approval pending, id (apr-[0-9a-f]+)", err.response["Error"]["Message"])
    assert m, err.response["Error"]
    return m.group(1)


@pytest.fixture(scope="module")
def cluster(issuer, moto, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"), issuer, moto)
    yield c
    c.close()


def test_bad_postgres_settings_stop_the_gateway_and_change_nothing(cluster, tmp_path):
    pg = cluster.pg
    pg.sql("CREATE ROLE reader LOGIN PASSWORD 'reader-e2e-password'", db="postgres")
    pg.sql("CREATE DATABASE fresh", db="postgres")
    pg.sql("CREATE DATABASE newer OWNER veil", db="postgres")
    pg.sql("CREATE TABLE veil_schema_version (component text PRIMARY KEY, version integer NOT NULL, updated_at timestamptz)", db="newer")
    pg.sql("ALTER TABLE veil_schema_version OWNER TO veil; INSERT INTO veil_schema_version VALUES ('approvals', 99, now())", db="newer")
    base = f"postgres://veil@127.0.0.1:{pg.port}"
    cases = [
        # (url, password, extra environment, what the error says)
        ("mysql://veil@127.0.0.1/veil", "veil-e2e-password", {}, ["approvals.postgres.url", "must be a URL like postgres://"]),
        (f"postgres://veil:hunter22@127.0.0.1:{pg.port}/veil", "veil-e2e-password", {}, ["approvals.postgres.url", "must not contain a password"]),
        (f"{base}/veil?sslmode=require", "veil-e2e-password", {}, ["approvals.postgres.url", "TLS to PostgreSQL is not supported yet"]),
        (f"{base}/veil", "wrong-password-but-long", {}, ["approvals.postgres.url", "password authentication failed", "approvals.postgres.password_file"]),
        (f"{base}/veil", "short", {}, ["approvals.postgres.password_file", "at least 16"]),
        (f"{base}/veil", None, {"VEIL_APPROVALS_PG_PASSWORD": ""}, ["VEIL_APPROVALS_PG_PASSWORD", "is set but empty"]),
        (f"postgres://reader@127.0.0.1:{pg.port}/fresh", "reader-e2e-password", {}, ["approvals.postgres.url", "cannot prepare the approvals schema", "permission denied"]),
        (f"{base}/newer", "veil-e2e-password", {}, ["approvals.postgres.url", "version 99, newer than this Veil understands"]),
        (f"postgres://veil@127.0.0.1:{harness.free_port()}/veil", "veil-e2e-password", {}, ["approvals.postgres.url", "cannot connect to", "Connection refused"]),
    ]
    for i, (url, password, env, expect) in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        block = f'[approvals.postgres]\nurl = "{url}"\n'
        if password is not None:
            (d / "pg.password").write_text(password)
            block += 'password_file = "pg.password"\n'
        cfg, _ = harness.veil_config(d, cluster.issuer, cluster.moto, block)
        # Compiled policies from the cluster's cache: the point is the database.
        text = cfg.read_text().replace("[policies]\n", f'[policies]\ncache_dir = "{cluster.d / "veil-cache"}"\n', 1)
        cfg.write_text(text)
        r = subprocess.run([str(harness.VEIL), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=120,
                           env={**harness.UPSTREAM_ENV, "PATH": "/usr/bin:/bin", **env})
        assert r.returncode == 1, (url, r.stderr)
        for e in expect:
            assert e in r.stderr, (url, e, r.stderr)
        for secret in ("hunter22", "wrong-password-but-long", "reader-e2e-password", "veil-e2e-password"):
            assert secret not in r.stderr, r.stderr
        assert "panicked" not in r.stderr
    assert pg.sql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'veil_%'", db="fresh") == "0", "nothing half-migrated"
    assert pg.sql("SELECT version FROM veil_schema_version", db="newer") == "99", "a newer schema is left alone"


def test_held_on_a_approved_through_b_completes_on_a(cluster, tmp_path):
    creds = cluster.credentials(tmp_path, "agent-ab")
    a, b = cluster.direct("a"), cluster.direct("b")
    user = f"ab-{time.time_ns()}"
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        held = ex.submit(cluster.client(creds, url=a.url).create_user, UserName=user)
        entry = cluster.pending_for("agent-ab", admin_url=a.admin_url)[0]
        # Every replica's reviewer API shows the same entry.
        for n in NAMES:
            shown = cluster.review("GET", f"/v1/approvals/{entry['id']}", admin_url=cluster.direct(n).admin_url)
            assert shown.status_code == 200 and shown.json() == entry, (n, shown.text)
        out = cluster.cli("approve", entry["id"], "--reason", "OPS-7", admin_url=b.admin_url)
        assert out.returncode == 0, out.stdout + out.stderr
        approved_at = time.monotonic()
        assert held.result(timeout=30)["User"]["UserName"] == user
        woken = time.monotonic() - approved_at
    # Woken by the notification, not by the 5 s re-check.
    assert woken < 1.0, f"the waiting call on A completed {woken:.2f} s after the approval on B"
    assert harness.moto_client(cluster.moto, "iam").get_user(UserName=user)["User"]["UserName"] == user
    cluster.expected_steps[entry["id"]] = {"requested": "veil-a", "approved": "veil-b", "used": "veil-a", "call": "veil-a"}
    for n in NAMES:
        shown = cluster.review("GET", f"/v1/approvals/{entry['id']}", admin_url=cluster.direct(n).admin_url).json()
        assert shown["state"] == "used" and shown["decisions"][0]["reviewer"] == "alice", (n, shown)


def test_retry_after_a_timeout_goes_through_once_wherever_it_lands(cluster, tmp_path):
    """The AWS CLI through the balancer: each run is a new connection, so the
    retries land on other replicas."""
    token = tmp_path / "token"
    token.write_text(harness.mint(cluster.issuer, sub="agent-cli"))
    env = harness.agent_env(types.SimpleNamespace(url=cluster.url), cluster.ca, token)
    env["AWS_MAX_ATTEMPTS"] = "1"
    user = f"cli-{time.time_ns()}"
    first = harness.aws_cli(env, "iam", "create-user", "--user-name", user)
    assert first.returncode != 0 and "ApprovalRequired" in first.stderr, first.stderr
    apr = re.search(r"approval pending, id (apr-[0-9a-f]+)", first.stderr).group(1)
    again = harness.aws_cli(env, "iam", "create-user", "--user-name", user)
    assert apr in again.stderr, "a retry on another replica joins the same approval: " + again.stderr
    out = cluster.cli("approve", apr, "--reason", "ok")
    assert out.returncode == 0, out.stdout + out.stderr
    done = harness.aws_cli(env, "iam", "create-user", "--user-name", user)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["User"]["UserName"] == user
    replay = harness.aws_cli(env, "iam", "create-user", "--user-name", user)
    assert "ApprovalRequired" in replay.stderr and apr not in replay.stderr, "the grant admitted one call: " + replay.stderr
    cluster.expected_steps[apr] = {"requested": None, "approved": None, "used": None, "call": None}


def test_twenty_identical_retries_forward_exactly_one_call(cluster, tmp_path):
    user = f"keys-{time.time_ns()}"
    harness.moto_client(cluster.moto, "iam").create_user(UserName=user)
    creds = cluster.credentials(tmp_path, "agent-race")
    with pytest.raises(ClientError) as held:
        cluster.client(creds).create_access_key(UserName=user)
    apr = approval_id(held.value)
    assert cluster.cli("approve", apr).returncode == 0

    def retry(_):
        try:
            return "ok", cluster.client(creds).create_access_key(UserName=user)["AccessKey"]["UserName"]
        except ClientError as e:
            return e.response["Error"]["Code"], e.response["Error"]["Message"]

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        results = list(ex.map(retry, range(20)))
    codes = [r[0] for r in results]
    assert codes.count("ok") == 1, results
    assert codes.count("ApprovalRequired") == 19, results
    # The losers joined one new approval, on whichever replica they landed.
    new_ids = {re.search(r"id (apr-[0-9a-f]+)", m).group(1) for c, m in results if c == "ApprovalRequired"}
    assert len(new_ids) == 1 and apr not in new_ids, new_ids
    # What the emulator received: one CreateAccessKey, so one key.
    keys = harness.moto_client(cluster.moto, "iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
    assert len(keys) == 1, keys
    # The 20 calls were spread over the three replicas.
    assert cluster.ch.wait_count(f"SELECT count() FROM {cluster.db}.audit FINAL WHERE kind = 'call' AND action = 'CreateAccessKey' AND subject = 'agent-race'", 21) == 21
    instances = {r["instance"] for r in cluster.records("kind = 'call' AND action = 'CreateAccessKey' AND subject = 'agent-race'")}
    assert instances == {"veil-a", "veil-b", "veil-c"}, instances
    cluster.expected_steps[apr] = {"requested": None, "approved": None, "used": None, "call": None}
    cluster.expected_steps[new_ids.pop()] = {"requested": None}


def test_postgres_outage_refuses_held_calls_only_and_recovers(cluster, tmp_path):
    creds = cluster.credentials(tmp_path, "agent-outage")
    stop = threading.Event()
    served, failed = [], []

    def load():
        # Calls that need no approval, each on a new connection, round robin.
        while not stop.is_set():
            try:
                cluster.client(creds).list_users()
                served.append(time.monotonic())
            except Exception as e:  # noqa: BLE001 - any failure counts
                failed.append(repr(e))
            time.sleep(0.05)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(1)
        cluster.pg.stop()
        outage_started = time.monotonic()
        for _ in NAMES:
            with pytest.raises(ClientError) as e:
                cluster.client(creds).create_user(UserName=f"outage-{time.time_ns()}")
            err = e.value.response["Error"]
            assert err["Code"] == "ServiceUnavailable", err
            assert "approvals are unavailable" in err["Message"] and "PostgreSQL" in err["Message"], err
        r = cluster.review("GET", "/v1/approvals")
        assert r.status_code == 503 and "PostgreSQL" in r.json()["error"], r.text
        time.sleep(2)
        cluster.pg.start()
        outage_ended = time.monotonic()
        # Approvals work again, on every replica, without a restart.
        user = f"after-{time.time_ns()}"
        deadline = time.time() + 20
        while True:
            try:
                cluster.client(creds).create_user(UserName=user)
                raise AssertionError("a held call went through without approval")
            except ClientError as e:
                if e.response["Error"]["Code"] == "ApprovalRequired":
                    apr = approval_id(e)
                    break
                assert time.time() < deadline, e.response
                time.sleep(0.5)
        assert cluster.cli("approve", apr).returncode == 0
        assert cluster.client(creds).create_user(UserName=user)["User"]["UserName"] == user
        time.sleep(1)
    finally:
        stop.set()
        loader.join(30)
    assert failed == [], failed[:5]
    during = [t for t in served if outage_started <= t <= outage_ended]
    assert len(during) >= 5, f"only {len(during)} approval-free calls were served during the outage"
    cluster.expected_steps[apr] = {"requested": None, "approved": None, "used": None, "call": None}


def test_a_replica_killed_while_a_call_waits_loses_nothing(cluster, tmp_path):
    creds = cluster.credentials(tmp_path, "agent-kill")
    user = f"kill-{time.time_ns()}"
    a = cluster.direct("a")
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        held = ex.submit(cluster.client(creds, url=a.url).create_user, UserName=user)
        entry = cluster.pending_for("agent-kill")[0]
        cluster.stop("a", signal.SIGKILL)
        with pytest.raises(Exception):
            held.result(timeout=30)
    try:
        # The retry lands on B or C (the balancer skips the dead replica)
        # and joins the same approval.
        with pytest.raises(ClientError) as e:
            cluster.client(creds).create_user(UserName=user)
        assert approval_id(e.value) == entry["id"]
        assert cluster.cli("approve", entry["id"]).returncode == 0
        assert cluster.client(creds).create_user(UserName=user)["User"]["UserName"] == user
    finally:
        # Back on its spool: what it recorded before the kill ships now.
        cluster.start("a")
    cluster.expected_steps[entry["id"]] = {"requested": "veil-a", "approved": None, "used": None, "call": None}


def test_two_person_rule_across_replicas(cluster, tmp_path):
    for n in NAMES:
        cluster.stop(n)
        cluster.start(n, min_approvals=2)
    creds = cluster.credentials(tmp_path, "agent-two")
    user = f"two-{time.time_ns()}"
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        held = ex.submit(cluster.client(creds, url=cluster.direct("c").url).create_user, UserName=user)
        entry = cluster.pending_for("agent-two")[0]
        assert entry["min_approvals"] == 2
        first = cluster.review("POST", f"/v1/approvals/{entry['id']}/approve", admin_url=cluster.direct("a").admin_url, json={"reason": "one"})
        assert first.status_code == 200 and first.json()["state"] == "pending", first.text
        again = cluster.review("POST", f"/v1/approvals/{entry['id']}/approve", admin_url=cluster.direct("b").admin_url, json={"reason": "twice"})
        assert again.status_code == 409 and "already decided" in again.json()["error"], again.text
        own = cluster.review("POST", f"/v1/approvals/{entry['id']}/approve", sub="agent-two", admin_url=cluster.direct("b").admin_url)
        assert own.status_code == 403 and "own approval" in own.json()["error"], own.text
        second = cluster.review("POST", f"/v1/approvals/{entry['id']}/approve", sub="bob", admin_url=cluster.direct("b").admin_url, json={"reason": "two"})
        assert second.status_code == 200 and second.json()["state"] == "approved", second.text
        assert held.result(timeout=30)["User"]["UserName"] == user
    cluster.expected_steps[entry["id"]] = {"requested": "veil-c", "used": "veil-c", "call": "veil-c"}


def test_every_record_is_in_clickhouse_once_with_its_replicas_name(cluster):
    db = cluster.db
    # Shipping is asynchronous: wait until the counts settle.
    deadline, last = time.time() + 60, None
    while time.time() < deadline:
        now = cluster.ch.query(f"SELECT count() FROM {db}.audit").strip()
        if now == last:
            break
        last = now
        time.sleep(2)
    total, distinct = map(int, cluster.ch.query(f"SELECT count(), uniqExact(id) FROM {db}.audit FORMAT TSV").split())
    assert total == distinct, f"{total} rows for {distinct} record ids: a record was shipped twice"
    instances = {r["instance"] for r in cluster.ch.rows(f"SELECT DISTINCT instance FROM {db}.audit")}
    assert instances == {"veil-a", "veil-b", "veil-c"}, instances
    for apr, want in cluster.expected_steps.items():
        steps = cluster.records(f"kind = 'approval' AND approval_id = '{apr}'")
        for step in ("requested", "approved", "used"):
            if step not in want:
                continue
            got = [r for r in steps if r["verdict"] == step]
            assert len(got) == 1, f"{apr}: {step} recorded {len(got)} times: {steps}"
            if want[step]:
                assert got[0]["instance"] == want[step], (apr, step, got)
        if "call" in want:
            calls = cluster.records(f"kind = 'call' AND approval_id = '{apr}' AND verdict = 'allow'")
            assert len(calls) == 1, f"{apr}: {len(calls)} calls went through: {calls}"
            if want["call"]:
                assert calls[0]["instance"] == want["call"], (apr, calls)
