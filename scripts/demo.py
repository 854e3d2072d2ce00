#!/usr/bin/env python3
"""The Veil demo: starts an OIDC issuer, an AWS emulator (moto) and Veil with
TLS and the shipped policies, then acts as an AI agent using plain boto3 with
only the web-identity environment variables. Shows a masked secret, the
owner's plaintext, a denial and a call held for approval."""
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import harness  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402


def show(title, fn):
    print(f"\n== {title}")
    try:
        print(f"   {fn()}")
    except ClientError as e:
        err = e.response["Error"]
        print(f"   refused: {err['Code']}: {err['Message']}")


def approve_first_pending(veil, ca, reviewer_token):
    """Act as the reviewer: list pending approvals, approve the first."""
    env = dict(os.environ, VEIL_REVIEWER_TOKEN=reviewer_token)
    run = lambda *a: subprocess.run([str(harness.VEIL), "approvals", *a, "--admin", veil.admin_url, "--ca", str(ca)],
                                    capture_output=True, text=True, env=env, timeout=30)
    for _ in range(100):
        pending = json.loads(run("list").stdout)["pending"]
        if pending:
            break
        time.sleep(0.1)
    e = pending[0]
    print(f"   reviewer alice sees: {e['id']} {e['operation']} by {e['subject']} ({'; '.join(e['reasons'])})")
    print(f"   $ veil approvals approve {e['id']} --reason 'onboarding ticket OPS-42'")
    run("approve", e["id"], "--reason", "onboarding ticket OPS-42")


def main():
    procs = []
    with tempfile.TemporaryDirectory() as d:
        try:
            issuer_proc, issuer = harness.start_issuer()
            procs.append(issuer_proc)
            moto_proc, moto = harness.start_moto()
            procs.append(moto_proc)
            cfg, ca = harness.veil_config(d, issuer, moto, '[admin]\naddress = "127.0.0.1:0"\n\n[approvals]\nwait_secs = 30\n')
            veil = harness.Veil(cfg)
            procs.append(veil.proc)
            print(f"Veil is listening on {veil.url} (TLS), in front of an AWS emulator at {moto}")
            print(f"Agents need only: AWS_ENDPOINT_URL={veil.url} AWS_WEB_IDENTITY_TOKEN_FILE=<token> "
                  f"AWS_ROLE_ARN={harness.ROLE_ARN} AWS_CA_BUNDLE={ca}")
            sm = harness.moto_client(moto, "secretsmanager")
            sm.create_secret(Name="prod/payments/db", SecretString='{"username":"payments","password":"correct-horse-battery-staple"}')
            search = harness.mint(issuer, sub="agent-search-7", groups=["search"])
            payments = harness.mint(issuer, sub="agent-payments-2", groups=["payments"])
            with harness.agent_session(veil, ca, search, d) as s:
                show("1. A search-team agent reads the payments database secret: masked",
                     lambda: s.client("secretsmanager").get_secret_value(SecretId="prod/payments/db")["SecretString"])
            with harness.agent_session(veil, ca, payments, d) as s:
                show("2. The payments team's own agent reads it: plaintext",
                     lambda: s.client("secretsmanager").get_secret_value(SecretId="prod/payments/db")["SecretString"])
            with harness.agent_session(veil, ca, search, d) as s:
                show("3. The agent tries to turn off CloudTrail: denied before it reaches AWS",
                     lambda: s.client("cloudtrail").stop_logging(Name="org-trail"))
                print("\n== 4. The agent creates an IAM user: the call is held until a human approves it")
                with concurrent.futures.ThreadPoolExecutor(1) as ex:
                    call = ex.submit(s.client("iam").create_user, UserName="agent-made-this")
                    approve_first_pending(veil, ca, harness.mint(issuer, sub="alice", groups=["security-reviewers"]))
                    print(f"   the agent's call completed: created {call.result()['User']['Arn']}")
                show("5. Harmless calls pass: sts get-caller-identity",
                     lambda: s.client("sts").get_caller_identity()["Arn"])
            print("\nVeil's log of these calls:")
            for line in veil.proc.output().splitlines():
                if " call " in line or "call refused" in line:
                    print("   " + line.split("veil_gateway::pipeline: ")[-1][:200])
        finally:
            for p in reversed(procs):
                p.stop()


if __name__ == "__main__":
    main()
