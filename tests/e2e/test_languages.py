"""Python and JavaScript policies in a running gateway, deciding real calls
from the AWS CLI against the emulator, with the host's limits and fail-closed
behaviour applying to them as to any component."""
import json
import shutil
import subprocess
import time

import pytest

import harness

CONFIG = """
[policies.config.secrets-by-team]
owners = { payments = ["prod/payments/"] }
"""


@pytest.fixture(scope="module")
def polyglot(issuer, moto, tmp_path_factory):
    """A gateway whose only policies are risky-actions in Python and
    secrets-by-team in JavaScript."""
    d = tmp_path_factory.mktemp("polyglot")
    policies = d / "policies"
    policies.mkdir()
    shutil.copy(harness.POLICIES / "python" / "risky-actions.wasm", policies / "risky-actions.wasm")
    shutil.copy(harness.POLICIES / "js" / "secrets-by-team.wasm", policies / "secrets-by-team.wasm")
    cfg, ca = harness.veil_config(d, issuer, moto, "[approvals]\nwait_secs = 1\n", policies_dir=policies, policy_config=CONFIG)
    veil = harness.Veil(cfg)
    yield {"veil": veil, "ca": ca, "issuer": issuer, "moto": moto, "dir": d}
    veil.stop()


def cli(stack, tmp_path, *args, **claims):
    token = tmp_path / f"token-{time.time_ns()}"
    token.write_text(harness.mint(stack["issuer"], **claims))
    return harness.aws_cli(harness.agent_env(stack["veil"], stack["ca"], token), *args)


def test_js_policy_masks_secrets_of_other_teams(polyglot, tmp_path):
    name = f"prod/payments/db-{time.time_ns()}"
    harness.moto_client(polyglot["moto"], "secretsmanager").create_secret(Name=name, SecretString="hunter2")
    out = cli(polyglot, tmp_path, "secretsmanager", "get-secret-value", "--secret-id", name, sub="search-agent", groups=["search"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["SecretString"] == "***"
    out = cli(polyglot, tmp_path, "secretsmanager", "get-secret-value", "--secret-id", name, sub="payments-agent", groups=["payments"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["SecretString"] == "hunter2"


def test_python_policy_denies_and_holds_risky_calls(polyglot, tmp_path):
    out = cli(polyglot, tmp_path, "cloudtrail", "stop-logging", "--name", "trail")
    assert out.returncode != 0
    assert "AccessDenied" in out.stderr and "cloudtrail:StopLogging is forbidden by risky-actions" in out.stderr
    user = f"bot{time.time_ns()}"
    out = cli(polyglot, tmp_path, "iam", "create-user", "--user-name", user)
    assert out.returncode != 0 and "ApprovalRequired" in out.stderr, out.stderr
    assert "iam:CreateUser changes identities or access" in out.stderr
    users = harness.moto_client(polyglot["moto"], "iam").list_users()["Users"]
    assert user not in [u["UserName"] for u in users]
    out = cli(polyglot, tmp_path, "iam", "list-users")
    assert out.returncode == 0, out.stderr



def test_a_restart_loads_the_compiled_policies_from_the_cache(polyglot, tmp_path):
    """The first start compiled both components into its `policies.cache_dir`;
    a second gateway using that cache loads them without compiling and
    decides the same way."""
    first = [l for l in polyglot["veil"].proc.output().splitlines() if "policy loaded" in l]
    assert len(first) == 2 and all("cached=false" in l for l in first), first
    cache = polyglot["dir"] / "veil-cache"
    assert (cache.stat().st_mode & 0o777) == 0o700
    cfg, ca = harness.veil_config(tmp_path, polyglot["issuer"], polyglot["moto"], policies_dir=polyglot["dir"] / "policies",
                                  policy_config=f'cache_dir = "{cache}"\n' + CONFIG)
    second = harness.Veil(cfg)
    try:
        loaded = [l for l in second.proc.output().splitlines() if "policy loaded" in l]
        assert len(loaded) == 2 and all("cached=true" in l for l in loaded), loaded
        stack = {**polyglot, "veil": second, "ca": ca}
        out = cli(stack, tmp_path, "cloudtrail", "stop-logging", "--name", "trail")
        assert out.returncode != 0 and "cloudtrail:StopLogging is forbidden by risky-actions" in out.stderr, out.stderr
    finally:
        second.stop()


def test_a_cache_directory_others_can_write_is_refused(polyglot, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    cfg, _ = harness.veil_config(tmp_path, polyglot["issuer"], polyglot["moto"], policy_config=f'cache_dir = "{shared}"\n')
    r = subprocess.run([str(harness.VEIL), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "policies.cache_dir" in r.stderr and "writable by group or others" in r.stderr, r.stderr
