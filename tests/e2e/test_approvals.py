"""Approvals end to end: real gateway, real OIDC issuer, boto3 against moto,
reviewers through `veil approvals` and the reviewer API."""
import concurrent.futures
import json
import os
import subprocess
import time

import pytest
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import harness

ADMIN_TOKEN = "t" * 40


def start(tmp_path, issuer, moto, wait=8, ttl=120, extra=""):
    cfg, ca = harness.veil_config(tmp_path, issuer, moto, harness.admin_block(tmp_path, ADMIN_TOKEN) + f"""
[approvals]
wait_secs = {wait}
ttl_secs = {ttl}
{extra}
""")
    return harness.Veil(cfg), cfg, ca


def reviewer(issuer, sub="alice"):
    return harness.mint(issuer, sub=sub, groups=["security-reviewers"])


def cli(veil, ca, token, *args):
    env = dict(os.environ, VEIL_REVIEWER_TOKEN=token)
    return subprocess.run([str(harness.VEIL), "approvals", *args, "--admin", veil.admin_url, "--ca", str(ca)],
                          capture_output=True, text=True, env=env, timeout=60)


def pending_for(veil, ca, token, subject, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = cli(veil, ca, token, "list")
        assert out.returncode == 0, out.stderr
        mine = [e for e in json.loads(out.stdout)["pending"] if e["subject"] == subject]
        if mine:
            return mine
        time.sleep(0.1)
    raise AssertionError(f"no pending approval for {subject}")


def iam(s):
    return s.client("iam", config=BotoConfig(retries={"max_attempts": 1}, read_timeout=60))


def records(cfg):
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    return [json.loads(l) for l in out.stdout.splitlines()]


def test_waiting_call_completes_after_a_cli_approval(tmp_path, issuer, moto):
    veil, cfg, ca = start(tmp_path, issuer, moto)
    try:
        user = f"approved-{time.time_ns()}"
        with harness.agent_session(veil, ca, harness.mint(issuer, sub="wait-agent"), tmp_path) as s:
            client = iam(s)
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                call = ex.submit(client.create_user, UserName=user)
                entry = pending_for(veil, ca, reviewer(issuer), "wait-agent")[0]
                assert entry["operation"] == "iam:CreateUser" and entry["params"]["UserName"] == user
                assert any("risky-actions" in r for r in entry["reasons"])
                out = cli(veil, ca, reviewer(issuer), "approve", entry["id"], "--reason", "ticket OPS-1")
                assert out.returncode == 0, out.stdout + out.stderr
                assert call.result(timeout=30)["User"]["UserName"] == user
        assert harness.moto_client(moto, "iam").get_user(UserName=user)["User"]["UserName"] == user
        recs = records(cfg)
        steps = [r["verdict"] for r in recs if r["kind"] == "approval" and r["approval_id"] == entry["id"]]
        assert steps == ["requested", "approved", "used"], steps
        call_rec = next(r for r in recs if r["kind"] == "call" and r["action"] == "CreateUser")
        assert call_rec["verdict"] == "allow" and call_rec["approval_id"] == entry["id"] and call_rec["approval_reviewers"] == ["alice"]
        out = subprocess.run([str(harness.VEIL), "audit", "query", "approvals", "--config", str(cfg), "--tsv"], capture_output=True, text=True)
        row = next(l for l in out.stdout.splitlines() if l.startswith(entry["id"]))
        assert "\twait-agent\tiam:CreateUser\talice\tapproved\t1\t" in row, row
    finally:
        veil.stop()


def test_webhook_hears_requests_and_decisions(tmp_path, issuer, moto):
    import http.server
    import threading
    heard = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            heard.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    veil, cfg, ca = start(tmp_path, issuer, moto, extra=f'webhook_url = "http://127.0.0.1:{server.server_port}/hook"')
    try:
        with harness.agent_session(veil, ca, harness.mint(issuer, sub="hook-agent"), tmp_path) as s:
            client = iam(s)
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                call = ex.submit(client.create_user, UserName=f"hooked-{time.time_ns()}")
                entry = pending_for(veil, ca, reviewer(issuer), "hook-agent")[0]
                assert cli(veil, ca, reviewer(issuer), "approve", entry["id"], "--reason", "fine").returncode == 0
                call.result(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and len(heard) < 2:
            time.sleep(0.1)
        steps = [(h["step"], h["approval_id"]) for h in heard]
        assert steps == [("requested", entry["id"]), ("approved", entry["id"])], heard
        assert "iam:CreateUser" in heard[0]["text"] and "hook-agent" in heard[0]["text"]
        assert "approved by alice: fine" in heard[1]["text"]
    finally:
        veil.stop()
        server.shutdown()


def test_denied_self_approval_and_non_reviewers(tmp_path, issuer, moto):
    veil, cfg, ca = start(tmp_path, issuer, moto)
    try:
        me = harness.mint(issuer, sub="bob", groups=["security-reviewers"])
        with harness.agent_session(veil, ca, me, tmp_path) as s:
            client = iam(s)
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                call = ex.submit(client.create_user, UserName="denied-user")
                entry = pending_for(veil, ca, reviewer(issuer), "bob")[0]
                own = cli(veil, ca, me, "approve", entry["id"])
                assert own.returncode == 1 and "cannot decide their own" in own.stdout
                outsider = cli(veil, ca, harness.mint(issuer, sub="mallory", groups=["dev"]), "approve", entry["id"])
                assert outsider.returncode == 1 and "not a reviewer" in outsider.stdout
                r = requests.get(veil.admin_url + "/v1/approvals", verify=str(ca), timeout=10)
                assert r.status_code == 401
                no_reason = cli(veil, ca, reviewer(issuer), "deny", entry["id"], "--reason", "")
                assert no_reason.returncode == 1 and "needs a reason" in no_reason.stdout
                out = cli(veil, ca, reviewer(issuer), "deny", entry["id"], "--reason", "no new users on Fridays")
                assert out.returncode == 0, out.stdout
                with pytest.raises(ClientError) as e:
                    call.result(timeout=30)
        err = e.value.response["Error"]
        assert err["Code"] == "AccessDenied" and "no new users on Fridays" in err["Message"] and "alice" in err["Message"]
        with pytest.raises(Exception):
            harness.moto_client(moto, "iam").get_user(UserName="denied-user")
    finally:
        veil.stop()


def test_timeout_retry_once_replay_and_changed_parameters(tmp_path, issuer, moto):
    veil, cfg, ca = start(tmp_path, issuer, moto, wait=1)
    try:
        user = f"retry-{time.time_ns()}"
        with harness.agent_session(veil, ca, harness.mint(issuer, sub="retry-agent"), tmp_path) as s:
            client = iam(s)
            with pytest.raises(ClientError) as e:
                client.create_user(UserName=user)
            err = e.value.response["Error"]
            assert err["Code"] == "ApprovalRequired" and "approval pending, id apr-" in err["Message"] and "retry" in err["Message"]
            apr = err["Message"].split("id ")[1].split(":")[0]
            # An identical retry joins the same approval; a changed parameter needs a new one.
            with pytest.raises(ClientError) as again:
                client.create_user(UserName=user)
            assert apr in again.value.response["Error"]["Message"]
            with pytest.raises(ClientError) as other:
                client.create_user(UserName=user + "-x")
            assert apr not in other.value.response["Error"]["Message"]
            assert cli(veil, ca, reviewer(issuer), "approve", apr).returncode == 0
            assert client.create_user(UserName=user)["User"]["UserName"] == user, "the retry after approval goes through"
            with pytest.raises(ClientError) as replay:
                client.create_user(UserName=user)
            assert replay.value.response["Error"]["Code"] == "ApprovalRequired", "a used approval admits nothing more"
            assert apr not in replay.value.response["Error"]["Message"]
        shown = json.loads(cli(veil, ca, reviewer(issuer), "show", apr).stdout)
        assert shown["state"] == "used"
    finally:
        veil.stop()


def test_pending_survives_restart_and_stale_approvals_expire(tmp_path, issuer, moto):
    veil, cfg, ca = start(tmp_path, issuer, moto, wait=1, ttl=4)
    token = harness.mint(issuer, sub="restart-agent")
    user = f"restart-{time.time_ns()}"
    try:
        with harness.agent_session(veil, ca, token, tmp_path) as s:
            with pytest.raises(ClientError) as e:
                iam(s).create_user(UserName=user)
        apr = e.value.response["Error"]["Message"].split("id ")[1].split(":")[0]
    finally:
        veil.stop()
    veil = harness.Veil(cfg)
    try:
        assert cli(veil, ca, reviewer(issuer), "approve", apr).returncode == 0, "pending across a restart"
        with harness.agent_session(veil, ca, token, tmp_path) as s:
            assert iam(s).create_user(UserName=user)["User"]["UserName"] == user
            with pytest.raises(ClientError) as e2:
                iam(s).create_user(UserName=user + "-late")
        stale = e2.value.response["Error"]["Message"].split("id ")[1].split(":")[0]
        time.sleep(6)
        out = cli(veil, ca, reviewer(issuer), "approve", stale)
        assert out.returncode == 1 and ("Expired" in out.stdout or "expired" in out.stdout), out.stdout
        deadline = time.time() + 10
        while time.time() < deadline and not any(r["verdict"] == "expired" and r["approval_id"] == stale for r in records(cfg)):
            time.sleep(0.5)
        assert any(r["verdict"] == "expired" and r["approval_id"] == stale for r in records(cfg))
    finally:
        veil.stop()
