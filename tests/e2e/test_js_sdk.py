"""The AWS SDK for JavaScript v3, unmodified, through Veil: each test runs
js/agent.mjs under Node with only the environment an agent gets (a token
file, a role, AWS_ENDPOINT_URL naming Veil by its DNS name, the region and
the test CA) and judges what the SDK returned."""
import base64
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import harness

HERE = Path(__file__).resolve().parent
NAME = harness.VIRTUAL_HOST


@pytest.fixture(scope="module")
def gw(tmp_path_factory, issuer, moto):
    """A gateway that goes by its DNS name (for S3's virtual-hosted default),
    whose held calls answer after 2 s."""
    d = tmp_path_factory.mktemp("js")
    cfg, ca = harness.veil_config(d, issuer, moto, "[approvals]\nwait_secs = 2\n")
    cfg.write_text(cfg.read_text().replace("shutdown_drain_secs = 5", f'shutdown_drain_secs = 5\nhost_names = ["{NAME}"]', 1))
    veil = harness.Veil(cfg)
    yield {"veil": veil, "ca": ca, "issuer": issuer, "moto": moto, "cfg": cfg,
           "endpoint": f"https://{NAME}:{veil.url.rsplit(':', 1)[1]}"}
    veil.stop()


def node_env(gw, token_file):
    """Only what an agent gets, plus the wildcard DNS record the test fakes."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(token_file.parent),
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_ARN": harness.ROLE_ARN,
        "AWS_ENDPOINT_URL": gw["endpoint"],
        "AWS_REGION": "us-east-1",
        "NODE_EXTRA_CA_CERTS": str(gw["ca"]),
        # A config and credentials file that say nothing.
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "VEIL_TEST_HOST": NAME,
    }


def js(gw, tmp_path, scenario, args=None, **claims):
    """Run one scenario of js/agent.mjs as an agent with these token claims."""
    token_file = tmp_path / f"token-{time.time_ns()}"
    token_file.write_text(harness.mint(gw["issuer"], **claims))
    p = subprocess.run(["node", "--import", str(HERE / "js/resolve-test-host.mjs"), str(HERE / "js/agent.mjs"), scenario, json.dumps(args or {})],
                       env=node_env(gw, token_file), cwd=HERE, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def records(cfg):
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(l) for l in out.stdout.splitlines()]


def test_caller_identity(gw, tmp_path):
    r = js(gw, tmp_path, "whoami")
    assert r.get("Account") == "123456789012", r
    assert r["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/veil-agent/"), r


def test_secret_masked_for_others_and_plain_for_the_owner(gw, tmp_path):
    name = f"prod/payments/db-{time.time_ns()}"
    harness.moto_client(gw["moto"], "secretsmanager").create_secret(Name=name, SecretString='{"password":"hunter2"}')
    assert js(gw, tmp_path, "secret", {"name": name}, sub="search-agent", groups=["search"]) == {"Name": name, "SecretString": "***"}
    assert js(gw, tmp_path, "secret", {"name": name}, sub="payments-agent", groups=["payments"]) == {"Name": name, "SecretString": '{"password":"hunter2"}'}


def test_ssm_parameter_with_decryption(gw, tmp_path):
    ssm = harness.moto_client(gw["moto"], "ssm")
    suffix = time.time_ns()
    ssm.put_parameter(Name=f"/payments/js-{suffix}", Value="payments-secret-123", Type="SecureString")
    ssm.put_parameter(Name=f"/search/js-{suffix}", Value="search-secret-123", Type="SecureString")
    own = js(gw, tmp_path, "parameter", {"name": f"/payments/js-{suffix}"}, sub="pay-agent", groups=["payments"])
    assert own == {"Name": f"/payments/js-{suffix}", "Value": "payments-secret-123", "Type": "SecureString"}, own
    other = js(gw, tmp_path, "parameter", {"name": f"/search/js-{suffix}"}, sub="pay-agent", groups=["payments"])
    assert other.get("Value") == "***", other


def test_iam_list_users_query_protocol(gw, tmp_path):
    user = f"u{time.time_ns()}"
    harness.moto_client(gw["moto"], "iam").create_user(UserName=user)
    r = js(gw, tmp_path, "users")
    assert user in r.get("Users", []), r


def test_ec2_describe_instances(gw, tmp_path):
    ec2 = harness.moto_client(gw["moto"], "ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    r = js(gw, tmp_path, "instances")
    assert iid in r.get("InstanceIds", []), r


def test_s3_20_mb_byte_exact_in_the_default_addressing(gw, tmp_path):
    bucket = f"js{time.time_ns()}"
    harness.moto_client(gw["moto"], "s3").create_bucket(Bucket=bucket)
    size, seed = 20 * 1024 * 1024, str(time.time_ns())
    r = js(gw, tmp_path, "bigObject", {"bucket": bucket, "key": "big/blob.bin", "size": size, "seed": seed})
    assert "error" not in r, r
    # Virtual-hosted: the SDK's default for a DNS-named endpoint.
    assert r["hosts"] == [f"{bucket}.{NAME}"] * 2, r["hosts"]
    assert r["length"] == size and r["received"] == r["sent"], r
    stored = harness.moto_client(gw["moto"], "s3").get_object(Bucket=bucket, Key="big/blob.bin")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == r["sent"]


def test_sqs_with_the_default_settings(gw, tmp_path):
    # The SDK sends each call to the queue URL it was given
    # (useQueueUrlAsEndpoint) and checks every MD5 it gets back.
    name = f"js{time.time_ns()}"
    bodies = ["db:\n  user: app\n  password: hunter2\n", "nightly export finished"]
    r = js(gw, tmp_path, "queue", {"name": name, "bodies": bodies}, groups=["search"])
    assert "error" not in r, r
    assert r["QueueUrl"] == f"{gw['endpoint']}/123456789012/{name}", r
    assert all(u.startswith(gw["endpoint"] + "/") for u in r["urls"]), r["urls"]
    assert sorted(m["Body"] for m in r["received"]) == sorted(["***", bodies[1]]), r["received"]
    for m in r["received"]:
        assert m["MD5OfBody"] == hashlib.md5(m["Body"].encode()).hexdigest()
    assert r["sent"] == [hashlib.md5(b.encode()).hexdigest() for b in bodies]
    # Every call went through Veil: its audit trail has each of them, under
    # the upstream's name for the queue.
    upstream_url = harness.moto_client(gw["moto"], "sqs").get_queue_url(QueueName=name)["QueueUrl"]
    mine = [rec for rec in records(gw["cfg"]) if rec.get("service") == "sqs" and name in rec["params"] + rec["resource"]]
    actions = sorted(rec["action"] for rec in mine)
    assert actions.count("CreateQueue") == 1 and actions.count("SendMessage") == 2 and "ReceiveMessage" in actions, actions
    assert {rec["resource"] for rec in mine if rec["action"] != "CreateQueue"} == {upstream_url}, mine


def test_dynamodb_secret_attribute_masked(gw, tmp_path):
    ddb = harness.moto_client(gw["moto"], "dynamodb")
    table = f"users{time.time_ns()}"
    ddb.create_table(TableName=table, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=table, Item={"id": {"S": "u1"}, "password": {"S": "pQ7vK2mZx9LwR4tB"}, "city": {"S": "Lisbon"}})
    r = js(gw, tmp_path, "item", {"table": table, "id": "u1"})
    assert r.get("Item") == {"id": {"S": "u1"}, "password": {"S": "***"}, "city": {"S": "Lisbon"}}, r


def test_kms_plaintext_masked_and_still_a_blob(gw, tmp_path):
    kms = harness.moto_client(gw["moto"], "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"\x00\x01db-password")["CiphertextBlob"]
    r = js(gw, tmp_path, "decrypt", {"blob": base64.b64encode(blob).decode()})
    assert r.get("isBytes") is True, r
    assert base64.b64decode(r["Plaintext"]) == b"***", r


def test_denied_call_is_the_sdks_typed_error(gw, tmp_path):
    bucket = f"trail{time.time_ns()}"
    harness.moto_client(gw["moto"], "s3").create_bucket(Bucket=bucket)
    ct = harness.moto_client(gw["moto"], "cloudtrail")
    ct.create_trail(Name=bucket, S3BucketName=bucket)
    ct.start_logging(Name=bucket)
    err = js(gw, tmp_path, "stopLogging", {"name": bucket}).get("error")
    assert err and err["types"] == ["CloudTrailServiceException"], err
    assert (err["name"], err["status"], err["fault"]) == ("AccessDenied", 403, "client"), err
    assert "risky-actions" in err["message"], err
    assert ct.get_trail_status(Name=bucket)["IsLogging"] is True


def test_held_call_is_the_sdks_typed_error(gw, tmp_path):
    user = f"held{time.time_ns()}"
    start = time.time()
    err = js(gw, tmp_path, "createUser", {"name": user}).get("error")
    assert err and err["types"] == ["IAMServiceException"], err
    assert (err["name"], err["status"], err["fault"]) == ("ApprovalRequired", 403, "client"), err
    assert "approval pending, id apr-" in err["message"], err
    assert time.time() - start >= 2, "the call waited for a reviewer first"
    users = [u["UserName"] for u in harness.moto_client(gw["moto"], "iam").list_users()["Users"]]
    assert user not in users, "the held call must not reach AWS"
