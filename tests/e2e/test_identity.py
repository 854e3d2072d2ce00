"""OIDC validation against a real issuer: ES256 tokens, and a key rotation
the gateway follows by refreshing the issuer's JWKS on an unknown key id."""
import base64
import json
import os
import signal
import time

import pytest
from botocore.exceptions import ClientError

import harness


def header(token):
    h = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))


@pytest.fixture
def es_issuer():
    proc, url = harness.start_issuer({"ISSUER_ALG": "ES256", "ISSUER_ROTATE_ALG": "ES256"})
    yield proc, url
    proc.stop()


def test_es256_tokens_and_a_key_rotation(tmp_path, es_issuer, moto):
    proc, issuer = es_issuer
    cfg, ca = harness.veil_config(tmp_path, issuer, moto)
    cfg.write_text(cfg.read_text().replace("[identity]\n", "[identity]\njwks_min_refresh_secs = 1\n"))
    veil = harness.Veil(cfg)
    try:
        first = harness.mint(issuer, sub="es-agent")
        assert header(first)["alg"] == "ES256"
        with harness.agent_session(veil, ca, first, tmp_path) as s:
            assert "assumed-role/veil-agent" in s.client("sts").get_caller_identity()["Arn"]
        old_kid = header(first)["kid"]
        os.kill(proc.p.pid, signal.SIGUSR2)
        new_kid = json.loads(proc.wait_for(r"\{\"rotated\":.*\}").group(0))["rotated"]
        assert new_kid != old_kid
        time.sleep(1.2)  # past the JWKS refresh rate limit
        token = next(t for t in (harness.mint(issuer, sub="es-agent") for _ in range(4)) if header(t)["kid"] == new_kid)
        with harness.agent_session(veil, ca, token, tmp_path) as s:
            assert "assumed-role/veil-agent" in s.client("sts").get_caller_identity()["Arn"]
        # A token signed by a key the issuer never published is refused.
        forged = ".".join([base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "kid": "nope", "typ": "JWT"}).encode()).decode().rstrip("=")] + token.split(".")[1:])
        with harness.agent_session(veil, ca, forged, tmp_path) as s:
            with pytest.raises(ClientError) as e:
                s.client("sts").get_caller_identity()
        assert e.value.response["Error"]["Code"] in ("InvalidIdentityToken", "AccessDenied")
    finally:
        veil.stop()
