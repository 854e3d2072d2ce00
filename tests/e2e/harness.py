"""Shared harness for Veil's end-to-end tests: starts the real services as
processes on free ports (OIDC issuer, moto, Veil with TLS), mints tokens,
and builds AWS clients that reach AWS only through Veil."""
import base64
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import requests
from botocore.config import Config as BotoConfig

ROOT = Path(__file__).resolve().parents[2]
# The cargo profile whose `veil` runs: `release` for the tests, `dist` (what
# ships) for the benches (`make bench` sets VEIL_PROFILE).
PROFILE = os.environ.get("VEIL_PROFILE", "release")
VEIL = ROOT / "target" / PROFILE / "veil"
POLICIES = ROOT / "target" / "policies"
ROLE_ARN = "arn:aws:iam::123456789012:role/veil-agent"
AUDIENCE = "veil"
# Veil's own upstream credential (moto accepts any).
UPSTREAM_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose output goes to a log file; killed on stop()."""

    def __init__(self, name, args, env=None, cwd=None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"veil-e2e-{name}-", suffix=".log", delete=False)
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)

    def output(self):
        return Path(self.log.name).read_text(errors="replace")

    def wait_for(self, pattern, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.output())
            if m:
                return m
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not print {pattern!r} within {timeout}s:\n{self.output()}")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        return self.p.returncode


def start_issuer(env=None):
    proc = Proc("issuer", ["node", str(ROOT / "tests/e2e/issuer.mjs")], cwd=ROOT / "tests/e2e", env=dict(os.environ, **(env or {})))
    url = json.loads(proc.wait_for(r"\{\"url\":.*\}").group(0))["url"]
    return proc, url


def start_moto():
    for _ in range(5):
        port = free_port()
        proc = Proc("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
        try:
            proc.wait_for(r"Running on", timeout=30)
            return proc, f"http://127.0.0.1:{port}"
        except RuntimeError:
            proc.stop()
    raise RuntimeError("moto did not start")


CLICKHOUSE = "/usr/sbin/clickhouse-server"


class ClickHouse:
    """A real ClickHouse server (the Debian package) on free ports, with its
    data in `dirpath`; stop() and start() keep the data."""

    def __init__(self, dirpath):
        self.dir = Path(dirpath)
        self.http_port, self.tcp_port = free_port(), free_port()
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "users.xml").write_text("""<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
""")
        (self.dir / "config.xml").write_text(f"""<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <http_port>{self.http_port}</http_port>
  <tcp_port>{self.tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{self.dir}/data/</path>
  <tmp_path>{self.dir}/tmp/</tmp_path>
  <user_files_path>{self.dir}/user_files/</user_files_path>
  <format_schema_path>{self.dir}/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
""")
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc = None
        self.start()

    def start(self):
        self.proc = Proc("clickhouse", [CLICKHOUSE, f"--config-file={self.dir}/config.xml"])
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/ping", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if self.proc.p.poll() is not None:
                raise RuntimeError(f"clickhouse exited:\n{self.proc.output()}")
            time.sleep(0.2)
        raise RuntimeError(f"clickhouse did not start:\n{self.proc.output()}")

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def query(self, sql):
        r = requests.post(self.url + "/", data=sql.encode(), timeout=30)
        if not r.ok:
            raise RuntimeError(f"ClickHouse: {r.text}")
        return r.text

    def rows(self, sql):
        """JSON rows of a SELECT."""
        return [json.loads(line) for line in self.query(sql + " FORMAT JSONEachRow").splitlines() if line]

    def wait_count(self, sql, want, timeout=60):
        """Poll until `sql` (a count) returns `want`; returns the last value."""
        deadline = time.time() + timeout
        got = None
        while time.time() < deadline:
            try:
                got = int(self.query(sql).strip())
            except (RuntimeError, ValueError, requests.RequestException):
                got = None
            if got == want:
                return got
            time.sleep(0.2)
        return got


def clickhouse_audit(ch, database, batch_wait_ms=100):
    """The [audit.clickhouse] config block shipping to `ch`."""
    return f"""
[audit.clickhouse]
url = "{ch.url}"
database = "{database}"
batch_wait_ms = {batch_wait_ms}
"""


# The DNS name of the test gateways for S3 virtual-hosted addressing
# (`<bucket>.veil.test`); tests resolve it to 127.0.0.1 themselves.
VIRTUAL_HOST = "veil.test"


def test_ca(common_name, days=30):
    """A self-signed CA for tests: (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def server_cert(ca, common_name, dns_names, ips=(), days=30):
    """A TLS server certificate issued by `ca` ((certificate, key), as
    test_ca returns) for these names and IP addresses: (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    ca_cert, ca_key = ca
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_pem(path, cert=None, key=None):
    """Write a certificate or a private key as PEM to `path`; returns it."""
    from cryptography.hazmat.primitives import serialization
    if cert is not None:
        Path(path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        Path(path).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Path(path)


def make_tls(dirpath):
    """A test CA and a server certificate for 127.0.0.1, localhost, veil.test
    and *.veil.test."""
    ca = test_ca("Veil test CA")
    cert, key = server_cert(ca, "veil", ["localhost", VIRTUAL_HOST, "*." + VIRTUAL_HOST], ips=["127.0.0.1"])
    d = Path(dirpath)
    return write_pem(d / "ca.pem", cert=ca[0]), write_pem(d / "veil.pem", cert=cert), write_pem(d / "veil-key.pem", key=key)


# The shipped policies' configuration in the test gateways.
POLICY_CONFIG = """
[policies.config.secrets-by-team]
owners = { payments = ["prod/payments/", "/payments/"], search = ["prod/search/", "/search/"] }

[policies.config.aws-sensitive]
exceptions = [{ group = "payments", prefix = "prod/payments/" }, { group = "payments", prefix = "/payments/" }]
"""


def veil_config(dirpath, issuer_url, moto_url, extra="", policies_dir=POLICIES, policy_config=POLICY_CONFIG):
    ca, cert, key = make_tls(dirpath)
    (Path(dirpath) / "session.key").write_text("s" * 48)
    (Path(dirpath) / "hash.key").write_text("h" * 48)
    cfg = Path(dirpath) / "veil.toml"
    cfg.write_text(f"""
[listener]
address = "127.0.0.1:0"
tls_cert = "veil.pem"
tls_key = "veil-key.pem"
shutdown_drain_secs = 5

[identity]
[[identity.issuers]]
issuer = "{issuer_url}"
audience = "{AUDIENCE}"

[sts]
session_key_file = "session.key"

[[roles]]
arn = "{ROLE_ARN}"
credentials = "emulator"
trust = "any-token-of-these-issuers"

[upstream]
endpoint = "{moto_url}"

[upstream.credentials.emulator]

[policies]
dir = "{policies_dir}"
{policy_config}
[masking]
hash_key_file = "hash.key"

[metrics]
address = "127.0.0.1:0"
{extra}
""")
    return cfg, ca


def versioned_policy_dir(dirpath):
    """A private policy directory: the shipped policies plus the `versioned`
    fixture at 1.0.0, which the hot-reload tests and benches swap."""
    pdir = Path(dirpath) / "policies"
    pdir.mkdir()
    for f in POLICIES.glob("*.wasm"):
        shutil.copy(f, pdir / f.name)
    shutil.copy(POLICIES / "fixtures" / "versioned-1.wasm", pdir / "versioned.wasm")
    return pdir


def admin_block(dirpath, token):
    """The [admin] config block, with `token` written to its token file."""
    (Path(dirpath) / "admin.token").write_text(token)
    return '[admin]\naddress = "127.0.0.1:0"\ntoken_file = "admin.token"\n'


def listening_pattern(message):
    """The address in a "<message> address=…" log line, text or JSON
    (VEIL_LOG_FORMAT=json: `{"fields":{"address":"…",…},…,"message":"<message>",…}`)."""
    return rf'{message} address=(\S+)|"fields":\{{"address":"([^"]+)"[^\n]*"message":"{message}"'


class Veil:
    def __init__(self, config, env=None, scheme="https"):
        e = dict(os.environ)
        e.update(UPSTREAM_ENV)
        e.update(env or {})
        self.proc = Proc("veil", [str(VEIL), "serve", "--config", str(config)], env=e)
        # Generous: compiling Python and JS policies takes a while on 2 cores.
        self.url = f"{scheme}://" + self._address("veil is listening", timeout=180)
        self.metrics_url = "http://" + self._address("metrics endpoint is listening") + "/metrics"
        admin = re.search(listening_pattern("admin API is listening"), self.proc.output())
        self.admin_url = f"{scheme}://{admin.group(1) or admin.group(2)}" if admin else None

    def _address(self, message, timeout=60):
        m = self.proc.wait_for(listening_pattern(message), timeout=timeout)
        return m.group(1) or m.group(2)

    def stop(self):
        return self.proc.stop()


def mint(issuer_url, **claims):
    claims.setdefault("sub", "agent-1")
    r = requests.post(f"{issuer_url}/token", data={"grant_type": "client_credentials", "aud": claims.pop("aud", AUDIENCE), "claims": json.dumps(claims)}, timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def moto_client(moto_url, service):
    """A client straight to the emulator, for seeding and checking state."""
    return boto3.client(service, endpoint_url=moto_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def create_function(moto_url, environment=None):
    """A Lambda function in the emulator (with a role to run as); returns its name."""
    import io
    import zipfile
    role = moto_client(moto_url, "iam").create_role(RoleName=f"fn{time.time_ns()}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("index.py", "def handler(e, c):\n    return 1\n")
    name = f"fn{time.time_ns()}"
    extra = {"Environment": {"Variables": environment}} if environment else {}
    moto_client(moto_url, "lambda").create_function(
        FunctionName=name, Runtime="python3.12", Role=role, Handler="index.handler", Code={"ZipFile": buf.getvalue()}, **extra)
    return name


CLIENT_ENV_DROP = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"]


def agent_env(veil, ca, token_file):
    """The environment an agent needs to reach AWS through Veil: nothing else."""
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROP}
    # The AWS CLI caches web-identity credentials under ~/.aws/cli/cache, by
    # role and not by token: one home per token keeps identities apart.
    home = Path(token_file).parent / f"home-{Path(token_file).name}"
    home.mkdir(exist_ok=True)
    env.update({
        "HOME": str(home),
        "AWS_ENDPOINT_URL": veil.url,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_ARN": ROLE_ARN,
        "AWS_CA_BUNDLE": str(ca),
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_S3_ADDRESSING_STYLE": "path",
    })
    return env


@contextlib.contextmanager
def agent_session(veil, ca, token, tmpdir):
    """A boto3 session configured only by the agent environment."""
    token_file = Path(tmpdir) / f"token-{time.time_ns()}"
    token_file.write_text(token)
    env = agent_env(veil, ca, token_file)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield boto3.Session()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def agent(stack, tmpdir, **claims):
    """A boto3 session for an agent with these token claims, through the stack's Veil."""
    return agent_session(stack["veil"], stack["ca"], mint(stack["issuer"], **claims), tmpdir)


def aws_cli(env, *args, check=False):
    return subprocess.run(["aws", *args, "--output", "json"], env=env, capture_output=True, text=True, timeout=120)


PG_BIN = Path(os.environ.get("VEIL_PG_BIN", "/usr/lib/postgresql/15/bin"))


class Postgres:
    """Debian's PostgreSQL 15 initialised into a temporary directory, run as
    the unprivileged `postgres` user when the tests run as root (CI), on a
    free port with its socket in that directory. A `veil` role owns the
    `veil` database. stop() and start() keep the data; close() removes it."""

    PASSWORD = "veil-e2e-password"

    def __init__(self):
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL is not installed ({PG_BIN}/initdb is missing): run scripts/deps.sh")
        self.as_postgres = os.geteuid() == 0
        # Not under pytest's tmp_path: its parents are private to the test
        # user, and the server runs as another.
        self.dir = Path(tempfile.mkdtemp(prefix="veil-e2e-pg-"))
        try:
            self._init()
        except BaseException:
            self.close()
            raise

    def _init(self):
        pw = self.dir / "pw"
        pw.write_text("superuser-e2e-password")
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(pw, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", f"--pwfile={pw}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-N", "-E", "UTF8", "--locale=C")
        self.port = free_port()
        self.start()
        self.sql(f"CREATE ROLE veil LOGIN PASSWORD '{self.PASSWORD}'", db="postgres")
        self.sql("CREATE DATABASE veil OWNER veil", db="postgres")
        self.url = f"postgres://veil@127.0.0.1:{self.port}/veil"

    def _run(self, tool, *args, check=True):
        cmd = [str(PG_BIN / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise RuntimeError(f"{tool} failed: {out.stdout}{out.stderr}")
        return out.stdout

    def start(self):
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "60", "start")

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "stop", check=False)

    def sql(self, sql, db="veil"):
        return self._run("psql", "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atqc", sql).strip()

    def close(self):
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def config(self, password_file):
        """The [approvals.postgres] block, with the password in `password_file`."""
        Path(password_file).write_text(self.PASSWORD + "\n")
        return f'\n[approvals.postgres]\nurl = "{self.url}"\npassword_file = "{password_file}"\nconnect_timeout_secs = 2\nstatement_timeout_ms = 2000\n'


NGINX = "/usr/sbin/nginx"
NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"


class Balancer:
    """A TCP load balancer in front of `backends` (host:port strings): nginx's
    stream module, round robin, TLS passed through; one listening port per
    group. A backend that refuses connections is skipped for the next one."""

    def __init__(self, dirpath, groups):
        d = Path(dirpath)
        d.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in groups}
        blocks = []
        for name, backends in groups.items():
            servers = " ".join(f"server {b} max_fails=0;" for b in backends)
            blocks.append(f"upstream {name} {{ {servers} }}\n"
                          f"server {{ listen 127.0.0.1:{self.ports[name]}; proxy_pass {name}; proxy_connect_timeout 1s; }}")
        conf = d / "nginx.conf"
        conf.write_text(f"""
load_module {NGINX_STREAM};
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
stream {{
{chr(10).join(blocks)}
}}
""")
        if not Path(NGINX).exists() or not Path(NGINX_STREAM).exists():
            raise RuntimeError(f"nginx with its stream module is not installed ({NGINX}, {NGINX_STREAM}): run scripts/deps.sh")
        self.proc = Proc("nginx", [NGINX, "-e", str(d / "nginx-error.log"), "-c", str(conf), "-g", "daemon off;"])
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", next(iter(self.ports.values()))), timeout=1):
                    return
            except OSError:
                if self.proc.p.poll() is not None:
                    raise RuntimeError(f"nginx exited:\n{self.proc.output()}\n{(d / 'nginx-error.log').read_text(errors='replace')}")
                time.sleep(0.05)
        self.proc.stop()
        raise RuntimeError(f"nginx did not listen:\n{self.proc.output()}")

    def url(self, group):
        return f"https://127.0.0.1:{self.ports[group]}"

    def stop(self):
        return self.proc.stop()
