"""`veil serve` refuses bad configuration with exit 1, naming file, key and reason."""
import subprocess
import time
from pathlib import Path

import harness


def serve(cfg, timeout=30):
    return subprocess.run([str(harness.VEIL), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=timeout,
                          env={**harness.UPSTREAM_ENV, "PATH": "/usr/bin:/bin"})


def test_example_config_parses_up_to_the_network(tmp_path):
    # The committed example is valid apart from files and issuers that only exist in a real deployment.
    example = (harness.ROOT / "veil.example.toml").read_text()
    cfg = tmp_path / "veil.toml"
    cfg.write_text(example)
    r = serve(cfg)
    assert r.returncode == 1
    assert "listener.tls_cert" in r.stderr and "does not exist" in r.stderr, r.stderr


def broken(tmp_path, issuer, moto, old, new):
    cfg, _ = harness.veil_config(tmp_path, issuer, moto)
    text = cfg.read_text()
    assert old in text, old
    cfg.write_text(text.replace(old, new, 1))
    return cfg


def test_bad_configs_exit_1_with_file_key_and_reason(tmp_path, issuer, moto):
    cases = [
        ('shutdown_drain_secs = 5', 'shutdown_drain_secs = 5\nlisten_port = 1', ["unknown field `listen_port`", "line "]),
        ('shutdown_drain_secs = 5', 'shutdown_drain_secs = "five"', ["invalid type", "line "]),
        ('tls_cert = "veil.pem"', 'tls_cert = "missing.pem"', ["listener.tls_cert", "does not exist"]),
        (f'issuer = "{issuer}"', 'issuer = "http://127.0.0.1:9"', ["identity.issuers", "discovery failed"]),
        ('credentials = "emulator"', 'credentials = "nope"', ["roles[0].credentials", "no [upstream.credentials.nope]"]),
        (f'dir = "{harness.POLICIES}"', 'dir = "/nonexistent"', ["policies.dir", "does not exist"]),
        ('address = "127.0.0.1:0"\ntls', 'address = "localhost:x"\ntls', ["listener.address"]),
        ('shutdown_drain_secs = 5', 'shutdown_drain_secs = 5\nmax_connections = 0', ["listener.max_connections", "between 1 and"]),
        ('shutdown_drain_secs = 5', 'shutdown_drain_secs = 5\nheader_timeout_secs = 0', ["listener.header_timeout_secs", "between 1 and"]),
        ('shutdown_drain_secs = 5', 'shutdown_drain_secs = 5\nthreads = 0', ["listener.threads", "between 1 and"]),
    ]
    for i, (old, new, expect) in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        r = serve(broken(d, issuer, moto, old, new))
        assert r.returncode == 1, (new, r.stderr)
        assert "veil.toml" in r.stderr, r.stderr
        for e in expect:
            assert e in r.stderr, (new, r.stderr)
        assert "panicked" not in r.stderr


def test_plaintext_needs_an_explicit_flag_and_warns(tmp_path, issuer, moto):
    cfg = broken(tmp_path, issuer, moto, 'tls_cert = "veil.pem"\ntls_key = "veil-key.pem"', 'insecure_plaintext = true')
    veil = harness.Veil(cfg, scheme="http")
    try:
        assert "insecure_plaintext = true" in veil.proc.output()
        import requests
        assert requests.get(veil.url + "/", timeout=10).status_code == 403
    finally:
        veil.stop()


def test_serves_on_the_configured_threads(tmp_path, issuer, moto):
    cfg, ca = harness.veil_config(tmp_path, issuer, moto)
    cfg.write_text(cfg.read_text().replace('shutdown_drain_secs = 5', 'shutdown_drain_secs = 5\nthreads = 3', 1))
    veil = harness.Veil(cfg)
    try:
        # "listening" is logged just before the serving threads start.
        deadline = time.monotonic() + 10
        while True:
            names = []
            for task in Path(f"/proc/{veil.proc.p.pid}/task").iterdir():
                try:
                    names.append((task / "comm").read_text().strip())
                except FileNotFoundError:  # a thread that ended meanwhile
                    pass
            serving = sorted(n for n in names if n.startswith("veil-serve-"))
            if len(serving) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert serving == ["veil-serve-0", "veil-serve-1", "veil-serve-2"], names
        import requests
        assert requests.get(veil.url + "/", timeout=10, verify=str(ca)).status_code == 403
    finally:
        veil.stop()


def test_compose_stack_names_the_services_the_tests_start():
    import yaml
    compose = yaml.safe_load((harness.ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"veil-1", "veil-2", "lb", "postgres", "clickhouse", "issuer", "moto"}
    dockerfile = (harness.ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("FROM ", 1)[1]
    assert "USER 10001:10001" in final_stage and "useradd --system --uid 10001" in final_stage
    volumes = set()
    for name in ("veil-1", "veil-2"):
        veil = services[name]
        assert veil["build"] == "." and veil["hostname"] == name, veil
        # Hardened: the image's unprivileged user, a read-only root, no capabilities.
        assert veil["user"] == "10001:10001" and veil["read_only"] is True, veil
        assert veil["cap_drop"] == ["ALL"] and "no-new-privileges:true" in veil["security_opt"], veil
        # Each replica its own spool volume; the same keys and approval store.
        mine = [v for v in veil["volumes"] if v.endswith(":/var/lib/veil")]
        assert len(mine) == 1, veil["volumes"]
        volumes.add(mine[0])
        assert len(veil["environment"]["VEIL_SESSION_KEY"]) >= 32 and len(veil["environment"]["VEIL_HASH_KEY"]) >= 32
        assert veil["environment"]["VEIL_APPROVALS_PG_PASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        assert veil["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert len(volumes) == 2, "each replica has its own spool"
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server")
    assert "issuer.mjs" in " ".join(services["issuer"]["command"])
    assert "moto.server" in " ".join(services["moto"]["command"])
    # The balancer: TCP round robin over both replicas, for calls and reviewers.
    lb = (harness.ROOT / "deploy" / "nginx-lb.conf").read_text()
    assert "stream {" in lb and "http {" not in lb
    for port in ("8443", "9443"):
        assert f"server veil-1:{port};" in lb and f"server veil-2:{port};" in lb and f"listen {port};" in lb
    assert {"8443:8443", "9443:9443"} <= set(services["lb"]["ports"])
    # The gateway config it mounts is valid apart from the network it names.
    import re
    cfg = (harness.ROOT / "deploy" / "veil.toml").read_text()
    assert re.search(r'url = "http://clickhouse:8123"', cfg)
    assert 'endpoint = "http://moto:5000"' in cfg and 'issuer = "http://issuer:9400"' in cfg
    assert '[approvals.postgres]\nurl = "postgres://veil@postgres:5432/veil"' in cfg
    assert "instance =" not in cfg, "each replica is named by its host name"
    # Every path Veil writes is on the volume (the root filesystem is read-only).
    for key in ["spool_dir", "cache_dir", "state_file"]:
        assert re.search(rf'^{key} = "/var/lib/veil/', cfg, re.M), key


ADMIN_ON = '[admin]\naddress = "127.0.0.1:0"\n'


def test_an_empty_or_short_admin_token_stops_the_gateway(tmp_path, issuer, moto):
    """The environment is held to the same 32-byte minimum as the token file:
    an empty variable (as a compose file or Helm value leaves it) must not
    open the admin API to requests without any Authorization header."""
    for value, expect in [("", "environment: VEIL_ADMIN_TOKEN: is set but empty"), ("x", "VEIL_ADMIN_TOKEN: is 1 bytes long; at least 32")]:
        d = tmp_path / f"len{len(value)}"
        d.mkdir()
        cfg, _ = harness.veil_config(d, issuer, moto, ADMIN_ON)
        r = subprocess.run([str(harness.VEIL), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60,
                           env={**harness.UPSTREAM_ENV, "PATH": "/usr/bin:/bin", "VEIL_ADMIN_TOKEN": value})
        assert r.returncode == 1, r.stderr
        assert expect in r.stderr, r.stderr


def test_the_admin_api_opens_only_to_a_configured_token(tmp_path, issuer, moto):
    import os
    import requests
    assert "VEIL_ADMIN_TOKEN" not in os.environ
    routes = [("GET", "/v1/policies"), ("POST", "/v1/policies/reload")]
    anonymous = [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}, {"Authorization": "Bearer " + "k" * 39}]
    # No token: the policy endpoints are off for everyone.
    d = tmp_path / "none"
    d.mkdir()
    cfg, ca = harness.veil_config(d, issuer, moto, ADMIN_ON)
    veil = harness.Veil(cfg)
    try:
        assert "policy endpoints are off" in veil.proc.output()
        for headers in anonymous:
            for method, path in routes:
                r = requests.request(method, veil.admin_url + path, headers=headers, verify=str(ca), timeout=10)
                assert r.status_code == 403 and "no admin token is configured" in r.text, (headers, r.text)
    finally:
        veil.stop()
    # A token from the environment: that token only.
    d = tmp_path / "env"
    d.mkdir()
    cfg, ca = harness.veil_config(d, issuer, moto, ADMIN_ON)
    veil = harness.Veil(cfg, env={"VEIL_ADMIN_TOKEN": "k" * 40})
    try:
        for headers in anonymous:
            for method, path in routes:
                r = requests.request(method, veil.admin_url + path, headers=headers, verify=str(ca), timeout=10)
                assert r.status_code == 401, (headers, r.text)
        r = requests.get(veil.admin_url + "/v1/policies", headers={"Authorization": "Bearer " + "k" * 40}, verify=str(ca), timeout=10)
        assert r.status_code == 200 and r.json()["policies"], r.text
    finally:
        veil.stop()
