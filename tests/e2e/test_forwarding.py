"""What is forwarded is what was classified: hostile requests, signed with
an agent's own Veil session credentials, each refused or classified as the
call the emulator then runs, with the emulator's state checked; requests
steered at another host never leave Veil; an approval admits exactly the
request a reviewer saw."""
import gzip
import http.client
import re
import socket
import ssl
import subprocess
import time
import os
import json

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError

import harness

ADMIN_TOKEN = "t" * 40


class UnsignedExtras(SigV4Auth):
    """Signs every header but those named: a client adds them after signing."""

    def __init__(self, creds, service, region, skip=()):
        super().__init__(creds, service, region)
        self.skip = {s.lower() for s in skip}

    def headers_to_sign(self, request):
        h = super().headers_to_sign(request)
        for name in self.skip:
            if name in h:
                del h[name]
        return h


def session_creds(stack, tmp_path):
    with harness.agent(stack, tmp_path) as s:
        return s.get_credentials().get_frozen_credentials()


def send(veil, ca, creds, service, method="POST", path="/", body=b"", headers=(), region="us-east-1", unsigned=()):
    """Sign with SigV4 (all headers but `unsigned`), then send exactly these
    headers — repeated names included — over a raw connection."""
    first = {}
    for k, v in headers:
        first.setdefault(k, v)
    req = AWSRequest(method=method, url=veil.url + path, data=body, headers=first)
    UnsignedExtras(creds, service, region, skip=unsigned).add_auth(req)
    host, port = veil.url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=str(ca)), timeout=60)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", f"{host}:{port}")
    for k, v in req.headers.items():
        if k.lower() != "host":
            conn.putheader(k, v)
    seen = set()
    for k, v in headers:
        if k.lower() in seen:
            conn.putheader(k, v)
        seen.add(k.lower())
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    out = r.status, r.read().decode(errors="replace")
    conn.close()
    return out


def no_user(moto, name):
    with pytest.raises(ClientError):
        harness.moto_client(moto, "iam").get_user(UserName=name)


def test_forms_aws_would_read_otherwise_are_refused(stack, tmp_path):
    creds = session_creds(stack, tmp_path)
    veil, ca, moto = stack["veil"], stack["ca"], stack["moto"]
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    n = time.time_ns()
    cases = {
        # A gzip body is read whole, every member: here a second one adds an Action.
        "gzip members": (form + [("Content-Encoding", "gzip")],
                         gzip.compress(b"Action=ListUsers&Version=2010-05-08&") + gzip.compress(f"Action=CreateUser&UserName=gz{n}".encode())),
        "other coding": (form + [("Content-Encoding", "deflate")], f"Action=CreateUser&Version=2010-05-08&UserName=df{n}".encode()),
        "repeated": (form, f"Action=ListUsers&Action=CreateUser&Version=2010-05-08&UserName=rep{n}".encode()),
        "value and parent": (form, f"Action=CreateUser&Version=2010-05-08&UserName=vp{n}&UserName.x=1".encode()),
        "list spelled twice": (form, f"Action=CreateUser&Version=2010-05-08&UserName=ls{n}&Tags.1.Key=a&Tags.member.1.Key=b".encode()),
        "second content type": (form + [("Content-Type", "text/plain")], f"Action=CreateUser&Version=2010-05-08&UserName=ct{n}".encode()),
        "not a form": ([("Content-Type", "text/plain")], f"Action=CreateUser&Version=2010-05-08&UserName=nf{n}".encode()),
    }
    for what, (headers, body) in cases.items():
        status, text = send(veil, ca, creds, "iam", body=body, headers=headers, unsigned=["content-type"] if what == "second content type" else ())
        assert status == 400, (what, status, text[:300])
        assert "ambiguous" in text.lower() or "encoding" in text.lower(), (what, text[:300])
    for prefix in ["gz", "df", "rep", "vp", "ls", "ct", "nf"]:
        no_user(moto, f"{prefix}{n}")
    # An Action in the query and another in the body.
    status, text = send(veil, ca, creds, "iam", path="/?Action=ListUsers", body=f"Action=CreateUser&UserName=qb{n}&Version=2010-05-08".encode(), headers=form)
    assert status == 400 and "ambiguous" in text.lower(), text[:300]
    no_user(moto, f"qb{n}")
    # An upper-case media type is still a form: the call is read as the
    # CreateUser it is (and held by risky-actions).
    status, text = send(veil, ca, creds, "iam", body=f"Action=CreateUser&Version=2010-05-08&UserName=up{n}".encode(),
                        headers=[("Content-Type", "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8")])
    assert status == 403 and "ApprovalRequired" in text, text[:300]
    no_user(moto, f"up{n}")
    # A gzip form is read decoded, as AWS reads it: the CreateUser is held.
    status, text = send(veil, ca, creds, "iam", body=gzip.compress(f"Action=CreateUser&Version=2010-05-08&UserName=gzc{n}".encode()),
                        headers=form + [("Content-Encoding", "gzip")])
    assert status == 403 and "ApprovalRequired" in text and "iam:CreateUser" in text, text[:300]
    no_user(moto, f"gzc{n}")
    audit = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(stack["dir"] / "veil.toml")], capture_output=True, text=True, timeout=60)
    refused = [json.loads(l) for l in audit.stdout.splitlines() if "ambiguous" in l]
    assert len(refused) >= len(cases), "each refusal is audited"


def test_operation_names_are_read_only_as_the_model_spells_them(stack, tmp_path):
    """An emulator (and perhaps a service) reads `getSecretValue` or
    `create_user` as GetSecretValue or CreateUser, which a policy matching
    the model's name would not see: such names are refused."""
    creds = session_creds(stack, tmp_path)
    veil, ca, moto = stack["veil"], stack["ca"], stack["moto"]
    name = f"prod/payments/case-{time.time_ns()}"
    harness.moto_client(moto, "secretsmanager").create_secret(Name=name, SecretString="hunter2-case")
    for target in ["secretsmanager.getSecretValue", "secretsmanager.get_secret_value"]:
        status, text = send(veil, ca, creds, "secretsmanager", body=json.dumps({"SecretId": name}).encode(),
                            headers=[("X-Amz-Target", target), ("Content-Type", "application/x-amz-json-1.1")])
        assert status == 400 and "case-sensitive" in text and "hunter2" not in text, (target, status, text[:300])
    n = time.time_ns()
    for i, action in enumerate(["create_user", "createUser", "CREATEUSER"]):
        status, text = send(veil, ca, creds, "iam", body=f"Action={action}&Version=2010-05-08&UserName=cs{i}-{n}".encode(),
                            headers=[("Content-Type", "application/x-www-form-urlencoded")])
        assert status == 400 and "case-sensitive" in text, (action, status, text[:300])
        no_user(moto, f"cs{i}-{n}")


def test_s3_sub_resources_and_headers_are_read_once(stack, tmp_path):
    creds = session_creds(stack, tmp_path)
    veil, ca, moto = stack["veil"], stack["ca"], stack["moto"]
    s3 = harness.moto_client(moto, "s3")
    bucket = f"fw{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    for query in ["accelerate&acl", "cors&policy", "encryption&publicAccessBlock"]:
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?{query}", body=b"<x/>")
        assert status == 400 and "ambiguous" in text.lower(), (query, status, text[:300])
        status, text = send(veil, ca, creds, "s3", method="DELETE", path=f"/{bucket}?{query}")
        assert status == 400, (query, status, text[:300])
    grants = s3.get_bucket_acl(Bucket=bucket)["Grants"]
    assert not any("AllUsers" in json.dumps(g) for g in grants), grants
    # An emulator's account header never reaches it: the bucket lands in
    # the account Veil's credential is for.
    other = f"fw{time.time_ns()}"
    status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{other}", headers=[("x-moto-account-id", "111111111111")])
    assert status == 200, text[:300]
    assert other in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_requests_steered_at_other_hosts_never_leave(tmp_path, issuer, moto):
    """Without an endpoint override (the production setting), hostile
    region and service names on every way in are refused before anything
    is sent, and a listener they point at hears nothing."""
    cfg, ca = harness.veil_config(tmp_path, issuer, moto)
    cfg.write_text(re.sub(r'(?m)^endpoint = .*$', "", cfg.read_text()))
    veil = harness.Veil(cfg)
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    trap.setblocking(False)
    port = trap.getsockname()[1]
    try:
        token = harness.mint(issuer)
        sts = requests.post(veil.url + "/", verify=str(ca), timeout=30, data={
            "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": harness.ROLE_ARN,
            "RoleSessionName": "s", "WebIdentityToken": token})
        assert sts.status_code == 200, sts.text
        from botocore.credentials import Credentials
        grab = lambda k: re.search(f"<{k}>([^<]+)</{k}>", sts.text).group(1)
        creds = Credentials(grab("AccessKeyId"), grab("SecretAccessKey"), grab("SessionToken"))
        hostile = [f"x@127.0.0.1:{port}/", f"127.0.0.1:{port}#", "a/b", "..", "us east 1", "us%2Deast%2D1", "US-EAST-1",
                   "us-east-1.127.0.0.1.nip.io", "u" * 65]
        headers = {"X-Amz-Target": "secretsmanager.ListSecrets", "Content-Type": "application/x-amz-json-1.1"}
        for region in hostile:
            r = requests.post(veil.url + "/", data="{}", verify=str(ca), timeout=30, headers={
                **headers, "Authorization": f"Bearer {token}", "X-Veil-Service": "secretsmanager", "X-Veil-Region": region})
            assert r.status_code == 400, (region, r.status_code, r.text[:200])
            r = requests.post(veil.url + "/", data="{}", verify=str(ca), timeout=30, headers={
                **headers, "Authorization": f"Bearer {token}", "X-Veil-Service": f"x@127.0.0.1:{port}/", "X-Veil-Region": "us-east-1"})
            assert r.status_code == 400, (r.status_code, r.text[:200])
            if "/" not in region and " " not in region:
                status, text = send(veil, ca, creds, "secretsmanager", body=b"{}", headers=list(headers.items()), region=region)
                assert status in (400, 403), (region, status, text[:200])
            presigned = f"/?Action=ListUsers&Version=2010-05-08&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={creds.access_key}%2F20260101%2F{requests.utils.quote(region, safe='')}%2Fiam%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature={'a' * 64}&X-Amz-Security-Token={requests.utils.quote(creds.token, safe='')}"
            r = requests.get(veil.url + presigned, verify=str(ca), timeout=30)
            assert 400 <= r.status_code < 500, (region, r.status_code, r.text[:200])
        time.sleep(0.5)
        with pytest.raises(BlockingIOError):
            trap.accept()
    finally:
        trap.close()
        out = veil.stop()
    assert "panicked" not in veil.proc.output()


def approve(veil, ca, issuer, text):
    m = re.search(r"(apr-[0-9a-f]+)", text)
    assert m, text[:300]
    env = dict(os.environ, VEIL_REVIEWER_TOKEN=harness.mint(issuer, sub="alice", groups=["security-reviewers"]))
    out = subprocess.run([str(harness.VEIL), "approvals", "approve", m.group(1), "--reason", "seen", "--admin", veil.admin_url, "--ca", str(ca)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return m.group(1)


def test_an_approval_admits_only_the_request_the_reviewer_saw(tmp_path, issuer, moto):
    cfg, ca = harness.veil_config(tmp_path, issuer, moto, harness.admin_block(tmp_path, ADMIN_TOKEN) + "[approvals]\nwait_secs = 1\nttl_secs = 120\n")
    veil = harness.Veil(cfg)
    try:
        stack = {"veil": veil, "ca": ca, "issuer": issuer, "moto": moto}
        creds = session_creds(stack, tmp_path)
        s3 = harness.moto_client(moto, "s3")
        bucket = f"ap{time.time_ns()}"
        s3.create_bucket(Bucket=bucket)
        # A header swap: approved private, sent public-read-write.
        private = [("x-amz-acl", "private")]
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?acl", headers=private)
        assert status == 403 and "ApprovalRequired" in text, text[:300]
        first = approve(veil, ca, issuer, text)
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?acl", headers=[("x-amz-acl", "public-read-write")])
        assert status == 403 and "ApprovalRequired" in text and first not in text, text[:300]
        assert not any("AllUsers" in json.dumps(g) for g in s3.get_bucket_acl(Bucket=bucket)["Grants"])
        # A region swap needs its own approval too; the call approved goes through once.
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?acl", headers=private, region="us-west-2")
        assert status == 403 and "ApprovalRequired" in text and first not in text, text[:300]
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?acl", headers=private)
        assert status == 200, text[:300]
        # A body swap: an ACL for the owner approved, one for everyone sent.
        owner = s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
        grant = '<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="{}">{}</Grantee><Permission>{}</Permission></Grant>'
        acl = lambda *grants: (f'<AccessControlPolicy xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>{owner}</ID></Owner>'
                               f'<AccessControlList>{"".join(grants)}</AccessControlList></AccessControlPolicy>').encode()
        narrow = acl(grant.format("CanonicalUser", f"<ID>{owner}</ID>", "FULL_CONTROL"))
        wide = acl(grant.format("CanonicalUser", f"<ID>{owner}</ID>", "FULL_CONTROL"),
                   grant.format("Group", "<URI>http://acs.amazonaws.com/groups/global/AllUsers</URI>", "WRITE"))
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?acl", body=narrow)
        assert status == 403 and "ApprovalRequired" in text, text[:300]
        held = approve(veil, ca, issuer, text)
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?acl", body=wide)
        assert status == 403 and "ApprovalRequired" in text and held not in text, text[:300]
        assert not any("AllUsers" in json.dumps(g) for g in s3.get_bucket_acl(Bucket=bucket)["Grants"])
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?acl", body=narrow)
        assert status == 200, text[:300]
        # Used: the same call again needs a new approval.
        status, text = send(veil, ca, creds, "s3", method="PUT", path=f"/{bucket}?acl", body=narrow)
        assert status == 403 and "ApprovalRequired" in text and held not in text, text[:300]
    finally:
        veil.stop()
