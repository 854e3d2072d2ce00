"""Who may use which role: trust conditions per role, enforced by STS, the
Bearer path and every call on a session, reloaded with the config file."""
import contextlib
import os
import subprocess
import time

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

import harness

READER = "arn:aws:iam::123456789012:role/veil-reader"
DEPLOYER = "arn:aws:iam::123456789012:role/veil-deployer"


def roles_block(issuer, reader_like="agent-*"):
    return f"""
[[roles]]
arn = "{READER}"
credentials = "emulator"
issuers = ["{issuer}"]
[roles.conditions.StringLike]
sub = "{reader_like}"

[[roles]]
arn = "{DEPLOYER}"
credentials = "emulator"
[roles.conditions."ForAnyValue:StringEquals"]
groups = ["deployers", "sre"]
[roles.conditions.StringEquals]
"kubernetes.io.namespace" = "ci"
"""


def config(tmp_path, issuer, moto, reader_like="agent-*"):
    cfg, ca = harness.veil_config(tmp_path, issuer, moto)
    text = cfg.read_text()
    start = text.index("[[roles]]")
    end = text.index("[upstream]")
    cfg.write_text(text[:start] + roles_block(issuer, reader_like) + "\n" + text[end:])
    return cfg, ca


def assume(veil, ca, token, role):
    return requests.post(veil.url + "/", verify=str(ca), timeout=30, data={
        "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": role,
        "RoleSessionName": "s", "WebIdentityToken": token})


def agent_env(veil, ca, token, role, tmp_path):
    """The web-identity environment of an agent using `role`."""
    token_file = tmp_path / f"tok-{time.time_ns()}"
    token_file.write_text(token + "\n")  # as `echo "$TOKEN" > file` writes it
    env = harness.agent_env(veil, ca, token_file)
    env["AWS_ROLE_ARN"] = role
    return env


@contextlib.contextmanager
def as_agent(veil, ca, token, role, tmp_path):
    """An STS client configured only by that environment (kept for the block:
    botocore reads it again when it fetches credentials)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(agent_env(veil, ca, token, role, tmp_path))
    try:
        yield boto3.Session().client("sts")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_each_identity_gets_only_its_role(tmp_path, issuer, moto):
    cfg, ca = config(tmp_path, issuer, moto)
    veil = harness.Veil(cfg)
    try:
        agent = harness.mint(issuer, sub="agent-7", groups=["readers"])
        deployer = harness.mint(issuer, sub="pipeline-1", groups=["x", "deployers"], **{"kubernetes.io": {"namespace": "ci"}})
        stranger = harness.mint(issuer, sub="someone", groups=["deployers"], **{"kubernetes.io": {"namespace": "prod"}})
        assert assume(veil, ca, agent, READER).status_code == 200
        assert assume(veil, ca, deployer, DEPLOYER).status_code == 200
        for token, role, failing in [(agent, DEPLOYER, "ForAnyValue:StringEquals groups"), (deployer, READER, "StringLike sub"),
                                     (stranger, READER, "StringLike sub"), (stranger, DEPLOYER, "StringEquals kubernetes.io.namespace")]:
            r = assume(veil, ca, token, role)
            assert r.status_code == 403, r.text
            assert "<Code>AccessDenied</Code>" in r.text and "Not authorized to perform sts:AssumeRoleWithWebIdentity" in r.text, r.text
            assert failing in r.text, r.text
        # boto3 and the AWS CLI, with nothing but the web-identity environment.
        with as_agent(veil, ca, agent, READER, tmp_path) as sts:
            assert "veil-reader" in sts.get_caller_identity()["Arn"]
        with as_agent(veil, ca, agent, DEPLOYER, tmp_path) as sts, pytest.raises(ClientError) as e:
            sts.get_caller_identity()
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        cli = harness.aws_cli(agent_env(veil, ca, deployer, DEPLOYER, tmp_path), "sts", "get-caller-identity")
        assert cli.returncode == 0 and "veil-deployer" in cli.stdout, cli.stderr
        cli = harness.aws_cli(agent_env(veil, ca, deployer, READER, tmp_path), "sts", "get-caller-identity")
        assert cli.returncode != 0 and "AccessDenied" in cli.stderr, cli.stderr
        # The Bearer path: the role each token may use, and a forged one refused.
        headers = {"X-Veil-Service": "secretsmanager", "X-Veil-Region": "us-east-1",
                   "X-Amz-Target": "secretsmanager.ListSecrets", "Content-Type": "application/x-amz-json-1.1"}
        r = requests.post(veil.url + "/", data="{}", verify=str(ca), timeout=30,
                          headers={**headers, "Authorization": f"Bearer {agent}", "X-Veil-Role": READER})
        assert r.status_code == 200, r.text
        for role in [DEPLOYER, "arn:aws:iam::123456789012:role/admin"]:
            r = requests.post(veil.url + "/", data="{}", verify=str(ca), timeout=30,
                              headers={**headers, "Authorization": f"Bearer {agent}", "X-Veil-Role": role})
            assert r.status_code == 403 and r.json()["__type"] == "AccessDenied", r.text
        r = requests.post(veil.url + "/", data="{}", verify=str(ca), timeout=30, headers={**headers, "Authorization": f"Bearer {agent}"})
        assert r.status_code == 400 and "x-veil-role is required" in r.text, r.text
        # Refusals are audited with the failing condition, never the token.
        out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
        refused = [l for l in out.stdout.splitlines() if "AssumeRoleWithWebIdentity" in l and "not met" in l]
        assert refused and all(agent not in l and deployer not in l for l in refused)
        assert any("admitted by StringLike sub" in l for l in out.stdout.splitlines())
    finally:
        veil.stop()
    assert "panicked" not in veil.proc.output()


def test_a_reload_that_revokes_access_ends_sessions(tmp_path, issuer, moto):
    cfg, ca = config(tmp_path, issuer, moto)
    veil = harness.Veil(cfg)
    try:
        agent = harness.mint(issuer, sub="agent-7")
        with as_agent(veil, ca, agent, READER, tmp_path) as sts:
            assert "veil-reader" in sts.get_caller_identity()["Arn"]
            # Tighten the reader's condition: agent-7 no longer matches.
            cfg.write_text(cfg.read_text().replace('sub = "agent-*"', 'sub = "agent-9*"'))
            deadline = time.time() + 20
            while "roles reloaded" not in veil.proc.output() and time.time() < deadline:
                time.sleep(0.1)
            assert "roles reloaded" in veil.proc.output(), veil.proc.output()[-2000:]
            r = assume(veil, ca, agent, READER)
            assert r.status_code == 403 and "StringLike sub" in r.text, r.text
            # The session minted before the reload ends with it.
            with pytest.raises(ClientError) as e:
                sts.get_caller_identity()
            assert e.value.response["Error"]["Code"] == "AccessDenied"
        # A config that does not load keeps the last good roles.
        text = cfg.read_text()
        cfg.write_text(text.replace("StringLike]", "StringMaybe]", 1))
        deadline = time.time() + 20
        while "roles reload rejected" not in veil.proc.output() and time.time() < deadline:
            time.sleep(0.1)
        assert "roles reload rejected" in veil.proc.output()
        assert assume(veil, ca, harness.mint(issuer, sub="agent-99"), READER).status_code == 200
    finally:
        veil.stop()


@pytest.mark.parametrize("block,key,words", [
    ('arn = "{role}"\ncredentials = "emulator"\n', "roles[0].conditions", ["no trust conditions", "any-token-of-these-issuers"]),
    ('arn = "{role}"\ncredentials = "emulator"\ntrust = "any-token-of-these-issuers"\nissuers = ["https://token.actions.githubusercontent.com"]\n',
     "roles[0].conditions", ["issues tokens to anyone", "repository_owner"]),
    ('arn = "{role}"\ncredentials = "emulator"\nissuers = ["https://token.actions.githubusercontent.com"]\n[roles.conditions.StringLike]\nsub = "repo:*"\n',
     "roles[0].conditions", ["issues tokens to anyone"]),
    ('arn = "{role}"\ncredentials = "emulator"\n[roles.conditions.StringSimilar]\nsub = "a"\n', "roles[0].conditions.StringSimilar", ["unknown condition operator"]),
    ('arn = "{role}"\ncredentials = "emulator"\n[roles.conditions.StringLike]\nsub = "agent-[0-9]"\n', "roles[0].conditions.StringLike.sub", ["only * (any run) and ?"]),
    ('arn = "{role}"\ncredentials = "emulator"\n[roles.conditions.StringEquals]\n"a..b" = "x"\n', "roles[0].conditions.StringEquals.a..b", ["not a claim path"]),
])
def test_untrustworthy_roles_refuse_to_start_offline(tmp_path, issuer, moto, block, key, words):
    """Checked with the config, before any issuer is contacted: the GitHub
    issuer below is never reached."""
    cfg, _ = harness.veil_config(tmp_path, issuer, moto)
    text = cfg.read_text()
    text = text.replace(f'[[identity.issuers]]\nissuer = "{issuer}"',
                        f'[[identity.issuers]]\nissuer = "https://token.actions.githubusercontent.com"\naudience = "veil"\n\n[[identity.issuers]]\nissuer = "{issuer}"')
    start, end = text.index("[[roles]]"), text.index("[upstream]")
    cfg.write_text(text[:start] + "[[roles]]\n" + block.format(role=READER) + "\n" + text[end:])
    r = subprocess.run([str(harness.VEIL), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30,
                       env={**harness.UPSTREAM_ENV, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1, r.stderr
    assert key in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert "discovery" not in r.stderr and "panicked" not in r.stderr
