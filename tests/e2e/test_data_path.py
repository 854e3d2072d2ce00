"""The AWS data path driven by real clients: boto3 and the AWS CLI using the
web-identity flow against Veil (TLS) in front of moto, with a real OIDC issuer."""
import base64
import datetime
import hashlib
import json
import os
import time

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
import requests
from botocore.exceptions import ClientError

import harness


def test_secret_masked_for_other_teams_and_plain_for_the_owner(stack, tmp_path):
    name = f"prod/payments/db-{time.time_ns()}"
    harness.moto_client(stack["moto"], "secretsmanager").create_secret(Name=name, SecretString='{"password":"hunter2"}')
    with harness.agent(stack, tmp_path, sub="search-agent", groups=["search"]) as s:
        v = s.client("secretsmanager").get_secret_value(SecretId=name)
        assert v["SecretString"] == "***"
        assert v["Name"] == name
    with harness.agent(stack, tmp_path, sub="payments-agent", groups=["payments"]) as s:
        v = s.client("secretsmanager").get_secret_value(SecretId=name)
        assert v["SecretString"] == '{"password":"hunter2"}'


def test_ssm_get_parameter_with_decryption_through_the_cli(stack, tmp_path):
    ssm = harness.moto_client(stack["moto"], "ssm")
    ssm.put_parameter(Name="/search/api-key", Value="search-secret-123", Type="SecureString", Overwrite=True)
    ssm.put_parameter(Name="/payments/api-key", Value="payments-secret-123", Type="SecureString", Overwrite=True)
    token_file = tmp_path / "token"
    token_file.write_text(harness.mint(stack["issuer"], sub="pay-agent", groups=["payments"]))
    env = harness.agent_env(stack["veil"], stack["ca"], token_file)
    own = harness.aws_cli(env, "ssm", "get-parameter", "--name", "/payments/api-key", "--with-decryption")
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["Parameter"]["Value"] == "payments-secret-123"
    other = harness.aws_cli(env, "ssm", "get-parameter", "--name", "/search/api-key", "--with-decryption")
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout)["Parameter"]["Value"] == "***"


def test_sts_get_caller_identity(stack, tmp_path):
    with harness.agent(stack, tmp_path) as s:
        ident = s.client("sts").get_caller_identity()
    # The agent is the role session Veil issued, not Veil's own principal.
    assert ident["Account"] == "123456789012"
    assert ident["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/veil-agent/"), ident
    assert ident["UserId"].startswith("AROA")


def test_iam_query_protocol(stack, tmp_path):
    iam = harness.moto_client(stack["moto"], "iam")
    user = f"u{time.time_ns()}"
    iam.create_user(UserName=user)
    with harness.agent(stack, tmp_path) as s:
        client = s.client("iam")
        users = [u["UserName"] for u in client.list_users()["Users"]]
        assert user in users
        # create-access-key opens access: risky-actions holds it for approval.
        with pytest.raises(ClientError) as e:
            client.create_access_key(UserName=user)
        err = e.value.response["Error"]
        assert err["Code"] == "ApprovalRequired"
        assert "approval pending, id apr-" in err["Message"]
    assert iam.list_access_keys(UserName=user)["AccessKeyMetadata"] == [], "the held call must not reach AWS"


def test_ec2_describe_instances(stack, tmp_path):
    ec2 = harness.moto_client(stack["moto"], "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    with harness.agent(stack, tmp_path) as s:
        ids = [i["InstanceId"] for r in s.client("ec2").describe_instances()["Reservations"] for i in r["Instances"]]
        assert iid in ids


def test_s3_streams_20_mb_byte_exact(stack, tmp_path):
    bucket = f"b{time.time_ns()}"
    harness.moto_client(stack["moto"], "s3").create_bucket(Bucket=bucket)
    data = os.urandom(20 * 1024 * 1024)
    with harness.agent(stack, tmp_path) as s:
        s3 = s.client("s3")
        s3.put_object(Bucket=bucket, Key="big/blob.bin", Body=data)
        got = s3.get_object(Bucket=bucket, Key="big/blob.bin")["Body"].read()
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == ["big/blob.bin"]
        assert s3.head_object(Bucket=bucket, Key="big/blob.bin")["ContentLength"] == len(data)


def test_large_s3_upload_with_a_signed_payload_hash_streams_and_must_match_it(stack, tmp_path):
    # The JavaScript SDK signs the SHA-256 of a body it holds in memory. One
    # larger than listener.max_body_bytes (10 MiB here) streams through,
    # checked against that hash on the way: a body unlike it never
    # completes upstream.
    bucket = f"signed{time.time_ns()}"
    s3 = harness.moto_client(stack["moto"], "s3")
    s3.create_bucket(Bucket=bucket)
    creds = session_credentials(stack, harness.mint(stack["issuer"]))
    data = os.urandom(12 * 1024 * 1024)

    def put(key, body, signed_body):
        url = f"{stack['veil'].url}/{bucket}/{key}"
        req = botocore.awsrequest.AWSRequest(method="PUT", url=url, data=signed_body,
                                             headers={"X-Amz-Content-SHA256": hashlib.sha256(signed_body).hexdigest()})
        botocore.auth.SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
        return requests.put(url, data=body, headers=dict(req.prepare().headers), verify=str(stack["ca"]), timeout=60)

    r = put("good.bin", data, data)
    assert r.status_code == 200, r.text
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key="good.bin")["Body"].read()).digest() == hashlib.sha256(data).digest()
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    r = put("tampered.bin", tampered, data)
    assert r.status_code == 403 and "x-amz-content-sha256 does not match" in r.text, r.text
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["good.bin"], "the tampered upload must not complete"


def test_lambda_get_function_rest_json(stack, tmp_path):
    name = harness.create_function(stack["moto"])
    with harness.agent(stack, tmp_path) as s:
        fn = s.client("lambda").get_function(FunctionName=name)
        assert fn["Configuration"]["FunctionName"] == name


def test_denied_call_never_reaches_aws(stack, tmp_path):
    ct = harness.moto_client(stack["moto"], "cloudtrail")
    bucket = f"trail{time.time_ns()}"
    harness.moto_client(stack["moto"], "s3").create_bucket(Bucket=bucket)
    ct.create_trail(Name=bucket, S3BucketName=bucket)
    ct.start_logging(Name=bucket)
    with harness.agent(stack, tmp_path) as s:
        with pytest.raises(ClientError) as e:
            s.client("cloudtrail").stop_logging(Name=bucket)
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        assert "risky-actions" in e.value.response["Error"]["Message"]
    assert ct.get_trail_status(Name=bucket)["IsLogging"] is True


def assume(stack, token):
    """The unsigned STS call SDKs make, sent by hand."""
    return requests.post(stack["veil"].url, data={
        "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15", "RoleArn": harness.ROLE_ARN,
        "RoleSessionName": "s1", "WebIdentityToken": token}, verify=str(stack["ca"]), timeout=30)


def b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_bad_tokens_are_refused(stack, tmp_path):
    issuer = stack["issuer"]
    good = harness.mint(issuer)
    assert assume(stack, good).status_code == 200
    h, p, sig = good.split(".")
    payload = json.loads(base64.urlsafe_b64decode(p + "=="))
    tampered = ".".join([h, b64({**payload, "sub": "admin"}), sig])
    unsigned = ".".join([b64({"alg": "none", "typ": "JWT"}), b64(payload), ""])
    hmac_forged = ".".join([b64({"alg": "HS256", "typ": "JWT"}), b64(payload), sig])
    other_proc, other_url = harness.start_issuer()
    try:
        wrong_issuer = harness.mint(other_url)
    finally:
        other_proc.stop()
    cases = {
        "expired": harness.mint(issuer, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "wrong audience": harness.mint(issuer, aud="someone-else"),
        "wrong issuer": wrong_issuer,
        "tampered": tampered,
        "unsigned": unsigned,
        "hmac with public key": hmac_forged,
        "not yet valid": harness.mint(issuer, nbf=int(time.time()) + 3600),
        "garbage": "not-a-jwt",
    }
    for what, token in cases.items():
        r = assume(stack, token)
        assert r.status_code == 403, f"{what}: {r.status_code} {r.text}"
        assert "<ErrorResponse" in r.text and "<Code>" in r.text, what


def signed_request(creds, method, url, body, headers, when):
    """Sign with botocore's SigV4 as if the clock read `when`."""
    req = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=headers)
    signer = botocore.auth.SigV4Auth(creds, "secretsmanager", "us-east-1")
    real = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: when
    try:
        signer.add_auth(req)
    finally:
        botocore.auth.get_current_datetime = real
    return req.prepare()


def session_credentials(stack, token):
    """Veil session credentials for `token`, from the STS call SDKs make."""
    import xml.etree.ElementTree as ET
    r = assume(stack, token)
    assert r.status_code == 200, r.text
    ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
    c = ET.fromstring(r.text).find(".//s:Credentials", ns)
    return botocore.credentials.Credentials(
        c.find("s:AccessKeyId", ns).text, c.find("s:SecretAccessKey", ns).text, c.find("s:SessionToken", ns).text)


def test_tampered_signature_and_replayed_request_are_refused(stack, tmp_path):
    creds = session_credentials(stack, harness.mint(stack["issuer"]))
    name = f"created-{time.time_ns()}"
    body = json.dumps({"Name": name, "SecretString": "x"})
    headers = {"X-Amz-Target": "secretsmanager.CreateSecret", "Content-Type": "application/x-amz-json-1.1"}
    url = stack["veil"].url + "/"
    now = datetime.datetime.now(datetime.timezone.utc)

    def send(req, body=None):
        return requests.post(url, data=body if body is not None else req.body, headers=dict(req.headers), verify=str(stack["ca"]), timeout=30)

    old = signed_request(creds, "POST", url, body, headers, now - datetime.timedelta(minutes=20))
    resp = send(old)
    assert resp.status_code == 403 and "SignatureDoesNotMatch" in resp.text, resp.text
    tampered = signed_request(creds, "POST", url, body, headers, now)
    tampered.headers["Authorization"] = tampered.headers["Authorization"][:-4] + "0000"
    resp = send(tampered)
    assert resp.status_code == 403 and "SignatureDoesNotMatch" in resp.text, resp.text
    # The same body signed, then swapped for another: the payload hash no longer matches.
    swapped = signed_request(creds, "POST", url, body, headers, now)
    resp = send(swapped, json.dumps({"Name": name, "SecretString": "y"}))
    assert resp.status_code == 403, resp.text
    # Signed for one host, sent with another: the signature covers Host.
    moved = signed_request(creds, "POST", url, body, headers, now)
    resp = requests.post(url, data=moved.body, headers={**dict(moved.headers), "Host": "veil.attacker.example"},
                         verify=str(stack["ca"]), timeout=30)
    assert resp.status_code == 403 and "SignatureDoesNotMatch" in resp.text, resp.text
    # A session token edited by its holder (to claim another identity or a
    # later expiry), signed correctly with the session's secret: refused.
    token = creds.token
    mid = len(token) // 2
    forged = botocore.credentials.Credentials(creds.access_key, creds.secret_key,
                                              token[:mid] + ("A" if token[mid] != "A" else "B") + token[mid + 1:])
    resp = send(signed_request(forged, "POST", url, body, headers, now))
    assert resp.status_code == 403, resp.text
    # Another session's secret key with this session's token: refused.
    other = session_credentials(stack, harness.mint(stack["issuer"], sub="agent-2"))
    mixed = botocore.credentials.Credentials(creds.access_key, other.secret_key, creds.token)
    resp = send(signed_request(mixed, "POST", url, body, headers, now))
    assert resp.status_code == 403 and "SignatureDoesNotMatch" in resp.text, resp.text
    sm = harness.moto_client(stack["moto"], "secretsmanager")
    assert not [s for s in sm.list_secrets()["SecretList"] if s["Name"] == name], "no refused call may reach AWS"
    # And a correctly signed one does go through.
    assert send(signed_request(creds, "POST", url, body, headers, now)).status_code == 200


def test_clock_skew_within_the_allowance_passes_and_beyond_it_is_refused(stack, tmp_path):
    # An issuer whose clock runs ahead: a token valid from 20 s from now is
    # inside the 30 s leeway; one valid from 2 min from now is not.
    now_s = int(time.time())
    assert assume(stack, harness.mint(stack["issuer"], iat=now_s + 20, nbf=now_s + 20)).status_code == 200
    r = assume(stack, harness.mint(stack["issuer"], iat=now_s + 120, nbf=now_s + 120))
    assert r.status_code == 403 and "<ErrorResponse" in r.text, r.text
    # An agent whose clock is off: SigV4 allows 5 minutes either way.
    creds = session_credentials(stack, harness.mint(stack["issuer"]))
    url = stack["veil"].url + "/"
    headers = {"X-Amz-Target": "secretsmanager.ListSecrets", "Content-Type": "application/x-amz-json-1.1"}
    now = datetime.datetime.now(datetime.timezone.utc)
    for minutes, ok in [(-4, True), (4, True), (-6, False), (6, False)]:
        req = signed_request(creds, "POST", url, "{}", headers, now + datetime.timedelta(minutes=minutes))
        r = requests.post(url, data=req.body, headers=dict(req.headers), verify=str(stack["ca"]), timeout=30)
        if ok:
            assert r.status_code == 200, f"{minutes} min: {r.text}"
        else:
            assert r.status_code == 403 and "clock skew" in r.text, f"{minutes} min: {r.text}"


def test_a_signed_header_sent_twice_is_refused_and_not_forwarded(stack, tmp_path):
    import http.client
    import ssl
    from urllib.parse import urlsplit
    creds = session_credentials(stack, harness.mint(stack["issuer"]))
    url = stack["veil"].url + "/"
    name = f"dup-{time.time_ns()}"
    body = json.dumps({"Name": name, "SecretString": "x"})
    headers = {"X-Amz-Target": "secretsmanager.CreateSecret", "Content-Type": "application/x-amz-json-1.1"}
    req = signed_request(creds, "POST", url, body, headers, datetime.datetime.now(datetime.timezone.utc))
    u = urlsplit(url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=str(stack["ca"])), timeout=30)
    conn.putrequest("POST", "/", skip_host=True, skip_accept_encoding=True)
    for k, v in req.headers.items():
        conn.putheader(k, v)
    # The same signed header again, with another value.
    conn.putheader("X-Amz-Target", "secretsmanager.DeleteSecret")
    conn.endheaders(body.encode())
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status in (400, 403), f"{resp.status} {text}"
    assert "__type" in text, text
    sm = harness.moto_client(stack["moto"], "secretsmanager")
    assert not [s for s in sm.list_secrets()["SecretList"] if s["Name"] == name], "a refused call may not reach AWS"


def test_bearer_token_clients(stack, tmp_path):
    name = f"prod/payments/api-{time.time_ns()}"
    harness.moto_client(stack["moto"], "secretsmanager").create_secret(Name=name, SecretString="s3cr3t-value")
    token = harness.mint(stack["issuer"], groups=["search"])
    r = requests.post(stack["veil"].url + "/", data=json.dumps({"SecretId": name}), verify=str(stack["ca"]), timeout=30,
                      headers={"Authorization": f"Bearer {token}", "X-Veil-Service": "secretsmanager", "X-Veil-Region": "us-east-1",
                               "X-Amz-Target": "secretsmanager.GetSecretValue", "Content-Type": "application/x-amz-json-1.1"})
    assert r.status_code == 200, r.text
    assert r.json()["SecretString"] == "***"
    r = requests.post(stack["veil"].url + "/", data="{}", verify=str(stack["ca"]), timeout=30,
                      headers={"Authorization": "Bearer nope", "X-Veil-Service": "secretsmanager", "X-Veil-Region": "us-east-1",
                               "X-Amz-Target": "secretsmanager.ListSecrets", "Content-Type": "application/x-amz-json-1.1"})
    assert r.status_code == 403
    assert r.json()["__type"] == "InvalidIdentityToken"


def test_metrics_count_calls(stack, tmp_path):
    with harness.agent(stack, tmp_path) as s:
        s.client("sts").get_caller_identity()
    text = requests.get(stack["veil"].metrics_url, timeout=10).text
    assert 'veil_requests_total{service="sts",action="GetCallerIdentity",verdict="allow"}' in text


def test_s3_presigned_url(stack, tmp_path):
    bucket = f"pre{time.time_ns()}"
    s3 = harness.moto_client(stack["moto"], "s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="report.txt", Body=b"quarterly numbers")
    from botocore.config import Config
    with harness.agent(stack, tmp_path) as s:
        url = s.client("s3", config=Config(signature_version="s3v4")).generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "report.txt"}, ExpiresIn=300)
        legacy = s.client("s3").generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "report.txt"})
    r = requests.get(url, verify=str(stack["ca"]), timeout=30)
    assert r.status_code == 200, r.text
    assert r.content == b"quarterly numbers"
    tampered = url.replace("report.txt", "other.txt")
    assert requests.get(tampered, verify=str(stack["ca"]), timeout=30).status_code == 403
    # SigV2 presigned URLs get a clear refusal, not a pass.
    r = requests.get(legacy, verify=str(stack["ca"]), timeout=30)
    assert r.status_code == 501 and "Signature Version 2" in r.text, r.text
