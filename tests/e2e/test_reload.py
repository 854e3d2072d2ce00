"""Hot reload in the running gateway (real binary, real files): swaps under
load with zero failed calls, bad files rejected while the last good set
serves, deletes, config changes, SIGHUP and `veil policy reload|status`."""
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import harness

FIXTURES = harness.POLICIES / "fixtures"
TOKEN = "a" * 40


def prepare(tmp_path, issuer, moto, policy_settings="watch = true"):
    """A config whose policy directory is a private copy (shipped policies +
    versioned 1.0.0), with the admin API on; `policy_settings` go into [policies]."""
    pdir = harness.versioned_policy_dir(tmp_path)
    cfg, ca = harness.veil_config(tmp_path, issuer, moto, harness.admin_block(tmp_path, TOKEN), policies_dir=pdir)
    cfg.write_text(cfg.read_text().replace(f'dir = "{pdir}"', f'dir = "{pdir}"\n{policy_settings}'))
    return cfg, ca, pdir


def start(tmp_path, issuer, moto, watch=True):
    cfg, ca, pdir = prepare(tmp_path, issuer, moto, f"watch = {'true' if watch else 'false'}")
    return harness.Veil(cfg), cfg, ca, pdir


def install(src, pdir, name="versioned.wasm"):
    """Copy like a deploy tool: a hidden temporary file, then an atomic rename."""
    tmp = pdir / f".{name}.tmp"
    shutil.copy(src, tmp)
    os.rename(tmp, pdir / name)


def status(veil, ca):
    r = requests.get(veil.admin_url + "/v1/policies", headers={"Authorization": f"Bearer {TOKEN}"}, verify=str(ca), timeout=10)
    r.raise_for_status()
    return r.json()


def version_of(st, name="versioned"):
    return next((p["version"] for p in st["policies"] if p["name"] == name), None)


def wait_for(pred, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def spool_records(cfg):
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(l) for l in out.stdout.splitlines()]


def test_swapping_a_policy_100_times_under_load_fails_no_call(tmp_path, issuer, moto):
    veil, cfg, ca, pdir = start(tmp_path, issuer, moto)
    try:
        assert version_of(status(veil, ca)) == "1.0.0"
        with harness.agent_session(veil, ca, harness.mint(issuer, sub="reload-agent"), tmp_path) as s:
            clients = [s.client("sts", config=BotoConfig(retries={"max_attempts": 1})) for _ in range(3)]
            for c in clients:
                c.get_caller_identity()
        stop = threading.Event()
        failures, answered = [], []

        def load(client):
            while not stop.is_set():
                try:
                    answered.append(client.get_caller_identity()["ResponseMetadata"]["RequestId"])
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))

        with concurrent.futures.ThreadPoolExecutor(len(clients)) as ex:
            running = [ex.submit(load, c) for c in clients]
            for i in range(100):
                install(FIXTURES / f"versioned-{2 if i % 2 == 0 else 1}.wasm", pdir)
                time.sleep(0.05)
            install(FIXTURES / "versioned-2.wasm", pdir)
            landed = time.time()
            assert wait_for(lambda: version_of(status(veil, ca)) == "2.0.0"), "the last version lands"
            in_force = time.time() - landed
            time.sleep(0.3)
            stop.set()
            for r in running:
                r.result()
        assert failures == [], failures[:5]
        assert len(answered) > 100
        assert in_force < 5, f"new version took {in_force:.2f}s"
        records = {r["id"]: r for r in spool_records(cfg)}
        seen = set()
        for rid in answered:
            rec = records[rid]
            versions = [v for n, v in zip(rec["policy_names"], rec["policy_versions"]) if n == "versioned"]
            assert len(versions) == 1, rec
            seen.add(versions[0])
        assert seen == {"1.0.0", "2.0.0"}, "calls were decided by both versions during the swaps"
        reloads = [r for r in records.values() if r["kind"] == "reload"]
        assert any(r["verdict"] == "loaded" for r in reloads)
        # Version 2 decides now: it denies iam:DeleteUser.
        with harness.agent_session(veil, ca, harness.mint(issuer, sub="reload-agent"), tmp_path) as s:
            with pytest.raises(ClientError) as e:
                s.client("iam").delete_user(UserName="x")
            assert "versioned 2.0.0 denies" in e.value.response["Error"]["Message"]
    finally:
        veil.stop()


def test_bad_files_are_rejected_and_the_last_good_set_serves(tmp_path, issuer, moto):
    veil, cfg, ca, pdir = start(tmp_path, issuer, moto)
    try:
        last_at = 0
        data = (FIXTURES / "versioned-2.wasm").read_bytes()
        cases = {
            "truncated": data[: len(data) // 2],
            "not a component": b"this is not webassembly",
            "core module": b"\0asm\x01\0\0\0",
        }
        for what, content in cases.items():
            (pdir / "versioned.wasm").write_bytes(content)
            st = wait_for(lambda: (lambda s: s if s["last_rejected"] and s["last_rejected"]["at_ms"] > last_at else None)(status(veil, ca)))
            assert st, f"{what}: rejection recorded"
            assert st["last_rejected"]["file"].endswith("versioned.wasm"), st
            assert version_of(st) == "1.0.0", f"{what}: the last good set keeps serving"
            last_at = st["last_rejected"]["at_ms"]
            with harness.agent_session(veil, ca, harness.mint(issuer, sub="bad-file-agent"), tmp_path) as s:
                assert s.client("sts").get_caller_identity()["Arn"]
        # A policy whose self-check traps (its config makes it trap on every call).
        shutil.copy(FIXTURES / "versioned-1.wasm", pdir / "versioned.wasm")
        cfg.write_text(cfg.read_text() + '\n[policies.config.hostile]\nmode = "trap"\n')
        shutil.copy(FIXTURES / "hostile.wasm", pdir / "hostile.wasm")
        st = wait_for(lambda: (lambda s: s if s["last_rejected"] and "self-check" in s["last_rejected"]["reason"] else None)(status(veil, ca)))
        assert st, status(veil, ca)
        assert "hostile" not in [p["name"] for p in st["policies"]]
        metrics = requests.get(veil.metrics_url, timeout=5).text
        assert 'veil_policy_reloads_total{result="rejected"}' in metrics
        rejected = [r for r in spool_records(cfg) if r["kind"] == "reload" and r["verdict"] == "rejected"]
        assert rejected and all(r["error"] for r in rejected)
    finally:
        veil.stop()


def test_a_file_written_in_pieces_in_place_loads_once_whole(tmp_path, issuer, moto):
    """A copy straight onto the policy's name, in pieces with pauses: the
    half-written file never becomes active (it may be rejected on the way),
    the last good version serves meanwhile, and the closing write loads it."""
    veil, cfg, ca, pdir = start(tmp_path, issuer, moto)
    try:
        data = (FIXTURES / "versioned-2.wasm").read_bytes()
        seen = set()
        with open(pdir / "versioned.wasm", "wb") as f:
            for i in range(0, len(data), len(data) // 8):
                # What serves while the file is still short of this piece
                # (after the last piece it is whole and may load at once).
                seen.add(version_of(status(veil, ca)))
                f.write(data[i:i + len(data) // 8])
                f.flush()
                time.sleep(0.05)
        assert seen == {"1.0.0"}, seen
        assert wait_for(lambda: version_of(status(veil, ca)) == "2.0.0"), status(veil, ca)
    finally:
        veil.stop()


def test_delete_and_config_change_apply(tmp_path, issuer, moto):
    veil, cfg, ca, pdir = start(tmp_path, issuer, moto)
    try:
        name = f"prod/reload/db-{time.time_ns()}"
        harness.moto_client(moto, "secretsmanager").create_secret(Name=name, SecretString="reload-secret")
        token = harness.mint(issuer, sub="reload-team-agent", groups=["reload"])
        with harness.agent_session(veil, ca, token, tmp_path) as s:
            assert s.client("secretsmanager").get_secret_value(SecretId=name)["SecretString"] == "***"
        # Give the team ownership in both policies' config: applied without a restart.
        text = cfg.read_text()
        text = text.replace('search = ["prod/search/", "/search/"] }', 'search = ["prod/search/", "/search/"], reload = ["prod/reload/"] }')
        text = text.replace('exceptions = [', 'exceptions = [{ group = "reload", prefix = "prod/reload/" }, ')
        cfg.write_text(text)

        def plaintext():
            with harness.agent_session(veil, ca, token, tmp_path) as s:
                return s.client("secretsmanager").get_secret_value(SecretId=name)["SecretString"] == "reload-secret"
        assert wait_for(plaintext), "config change applied"
        # Delete a policy: it stops applying.
        with harness.agent_session(veil, ca, token, tmp_path) as s:
            with pytest.raises(ClientError) as e:
                s.client("cloudtrail").stop_logging(Name="t")
            assert "risky-actions" in e.value.response["Error"]["Message"]
        os.remove(pdir / "risky-actions.wasm")
        assert wait_for(lambda: "risky-actions" not in [p["name"] for p in status(veil, ca)["policies"]])
        with harness.agent_session(veil, ca, token, tmp_path) as s:
            try:
                s.client("cloudtrail").stop_logging(Name="t")
            except ClientError as e:
                assert "risky-actions" not in e.response["Error"]["Message"]
    finally:
        veil.stop()


def test_sighup_and_the_admin_command_reload_when_watching_is_off(tmp_path, issuer, moto):
    veil, cfg, ca, pdir = start(tmp_path, issuer, moto, watch=False)
    try:
        install(FIXTURES / "versioned-2.wasm", pdir)
        time.sleep(1)
        assert version_of(status(veil, ca)) == "1.0.0", "no file watching"
        os.kill(veil.proc.p.pid, signal.SIGHUP)
        assert wait_for(lambda: version_of(status(veil, ca)) == "2.0.0")
        install(FIXTURES / "versioned-1.wasm", pdir)
        env = dict(os.environ, VEIL_ADMIN_TOKEN=TOKEN)
        out = subprocess.run([str(harness.VEIL), "policy", "reload", "--admin", veil.admin_url, "--ca", str(ca)], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["reloaded"] is True
        out = subprocess.run([str(harness.VEIL), "policy", "status", "--admin", veil.admin_url, "--ca", str(ca)], capture_output=True, text=True, env=env, timeout=60)
        st = json.loads(out.stdout)
        assert version_of(st) == "1.0.0"
        p = next(p for p in st["policies"] if p["name"] == "versioned")
        assert len(p["sha256"]) == 64 and p["loaded_at_ms"] > 0
        # Wrong token: refused, nothing reloaded.
        bad = subprocess.run([str(harness.VEIL), "policy", "reload", "--admin", veil.admin_url, "--ca", str(ca)], capture_output=True, text=True,
                             env=dict(os.environ, VEIL_ADMIN_TOKEN="b" * 40), timeout=60)
        assert bad.returncode == 1 and "wrong admin token" in bad.stdout + bad.stderr
        triggers = {r["action"] for r in spool_records(cfg) if r["kind"] == "reload"}
        assert {"sighup", "admin"} <= triggers
    finally:
        veil.stop()


def keypair(tmp_path, name):
    """An ed25519 key as PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it."""
    import base64
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
    key = Ed25519PrivateKey.generate()
    path = tmp_path / f"{name}.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key, path, base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def veil_sign(pdir, key_path, version=None):
    args = [str(harness.VEIL), "policy", "sign", str(pdir), "--key", str(key_path)] + (["--version", str(version)] if version else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def serve_once(cfg):
    return subprocess.run([str(harness.VEIL), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **harness.UPSTREAM_ENV))


def signed_setup(tmp_path, issuer, moto):
    _, key_path, pub = keypair(tmp_path, "signer")
    cfg, ca, pdir = prepare(tmp_path, issuer, moto, f'require_signature = true\nsigning_keys = ["{pub}"]\nstate_file = "policy-state.json"')
    # Held calls answer at once, so a test can see iam:CreateUser is still held.
    cfg.write_text(cfg.read_text() + "\n[approvals]\nwait_secs = 0\n")
    return cfg, ca, pdir, key_path


def rejected_after(veil, ca, since_ms, expect):
    """Wait for a rejection newer than `since_ms` whose reason has `expect`; returns the status."""
    st = wait_for(lambda: (lambda s: s if s["last_rejected"] and s["last_rejected"]["at_ms"] > since_ms and expect in s["last_rejected"]["reason"] else None)(status(veil, ca)))
    assert st, (expect, status(veil, ca))
    return st


def create_user_is_held(veil, ca, issuer, tmp_path):
    with harness.agent_session(veil, ca, harness.mint(issuer, sub="signed-agent"), tmp_path) as s:
        with pytest.raises(ClientError) as e:
            s.client("iam", config=BotoConfig(retries={"max_attempts": 1})).create_user(UserName=f"u{time.time_ns()}")
        return e.value.response["Error"]["Code"] == "ApprovalRequired" and "risky-actions" in e.value.response["Error"]["Message"]


def test_only_a_signed_set_starts(tmp_path, issuer, moto):
    cfg, ca, pdir, key_path = signed_setup(tmp_path, issuer, moto)
    # No manifest: refused, naming it.
    out = serve_once(cfg)
    assert out.returncode == 1 and "signature required" in out.stderr and "manifest.json" in out.stderr, out.stderr
    # Signed by a key the gateway does not trust: refused.
    _, other_path, _ = keypair(tmp_path, "other")
    veil_sign(pdir, other_path, 5)
    out = serve_once(cfg)
    assert out.returncode == 1 and "does not verify with any of policies.signing_keys" in out.stderr, out.stderr
    # An unsigned extra policy beside a signed set: refused.
    printed = veil_sign(pdir, key_path, 5)
    assert "versioned.wasm" in printed and "version 5" in printed, printed
    shutil.copy(FIXTURES / "versioned-2.wasm", pdir / "extra.wasm")
    out = serve_once(cfg)
    assert out.returncode == 1 and "extra.wasm is not in the signed manifest (version 5)" in out.stderr, out.stderr
    os.remove(pdir / "extra.wasm")
    veil = harness.Veil(cfg)
    try:
        st = status(veil, ca)
        assert st["signed_manifest"]["version"] == 5 and version_of(st) == "1.0.0", st
        assert "signed policy set verified" in veil.proc.output()
    finally:
        veil.stop()
    # A restart with an older signed set than the one accepted: refused
    # (the state file remembers version 5).
    veil_sign(pdir, key_path, 4)
    out = serve_once(cfg)
    assert out.returncode == 1 and "version 4 is older than version 5" in out.stderr, out.stderr


def test_a_signed_set_cannot_lose_gain_or_roll_back_a_policy(tmp_path, issuer, moto):
    """Deleting a policy, adding or altering one, replaying an older manifest:
    each rejected as a whole while the last good set serves, with the reason
    in `veil policy status`, the log and a reload audit record."""
    cfg, ca, pdir, key_path = signed_setup(tmp_path, issuer, moto)
    veil_sign(pdir, key_path, 10)
    old = {n: (pdir / n).read_bytes() for n in ("manifest.json", "manifest.json.sig", "versioned.wasm")}
    veil = harness.Veil(cfg)
    try:
        assert create_user_is_held(veil, ca, issuer, tmp_path)
        since = 0

        def expect_rejected(reason):
            nonlocal since
            st = rejected_after(veil, ca, since, reason)
            since = st["last_rejected"]["at_ms"]
            names = [p["name"] for p in st["policies"]]
            assert "risky-actions" in names and st["signed_manifest"]["version"] in (10, 11), st
            return st

        # A policy deleted without the key: rejected; iam:CreateUser stays held.
        risky = (pdir / "risky-actions.wasm").read_bytes()
        os.remove(pdir / "risky-actions.wasm")
        expect_rejected("risky-actions.wasm is in the signed manifest (version 10) but not in the policy directory")
        assert create_user_is_held(veil, ca, issuer, tmp_path), "risky-actions still decides"
        (pdir / "risky-actions.wasm").write_bytes(risky)
        # An extra policy no one signed.
        install(FIXTURES / "versioned-2.wasm", pdir, "extra.wasm")
        expect_rejected("extra.wasm is not in the signed manifest (version 10)")
        os.remove(pdir / "extra.wasm")
        # A signed policy swapped for another build.
        install(FIXTURES / "versioned-2.wasm", pdir)
        st = expect_rejected("versioned.wasm: sha256 ")
        assert version_of(st) == "1.0.0"
        # Signed as version 11: loads.
        veil_sign(pdir, key_path, 11)
        assert wait_for(lambda: (lambda s: s["signed_manifest"]["version"] == 11 and version_of(s) == "2.0.0")(status(veil, ca)))
        # The old signed set put back (files and manifest): a rollback.
        (pdir / "versioned.wasm").write_bytes(old["versioned.wasm"])
        (pdir / "manifest.json.sig").write_bytes(old["manifest.json.sig"])
        (pdir / "manifest.json").write_bytes(old["manifest.json"])
        st = expect_rejected("version 10 is older than version 11, already accepted: a rollback is refused")
        assert version_of(st) == "2.0.0"
        # Version 11 again, signed over other contents: refused too.
        veil_sign(pdir, key_path, 11)
        expect_rejected("version 11 was already accepted for a different manifest")
        # Malformed manifests, validly signed: rejected with the reason.
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        import base64
        key = load_pem_private_key(key_path.read_bytes(), None)
        digest = "a" * 64
        bad = {
            "does not parse": b"{not json",
            "is listed twice": json.dumps({"format": "veil-policy-manifest/1", "version": 20, "policies": [
                {"file": "versioned.wasm", "sha256": digest}, {"file": "versioned.wasm", "sha256": digest}]}).encode(),
        }
        for reason, text in bad.items():
            (pdir / "manifest.json.sig").write_text(base64.b64encode(key.sign(text)).decode())
            (pdir / "manifest.json").write_bytes(text)
            expect_rejected(reason)
        st = status(veil, ca)
        assert version_of(st) == "2.0.0" and st["signed_manifest"]["version"] == 11
        assert create_user_is_held(veil, ca, issuer, tmp_path)
        log = veil.proc.output()
        assert "policy reload rejected" in log and "rollback is refused" in log, log[-2000:]
        rejected = [r for r in spool_records(cfg) if r["kind"] == "reload" and r["verdict"] == "rejected"]
        errors = " | ".join(r["error"] for r in rejected)
        for reason in ["not in the policy directory", "extra.wasm is not in the signed manifest", "a rollback is refused", "is listed twice"]:
            assert reason in errors, errors
    finally:
        veil.stop()
