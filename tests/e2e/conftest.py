import pytest

import harness


@pytest.fixture(scope="session")
def issuer():
    proc, url = harness.start_issuer()
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def moto():
    proc, url = harness.start_moto()
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def stack(issuer, moto, tmp_path_factory):
    """Veil with TLS in front of moto, trusting the issuer."""
    d = tmp_path_factory.mktemp("veil")
    # Held calls answer ApprovalRequired after 2 s instead of waiting 50 s.
    cfg, ca = harness.veil_config(d, issuer, moto, "[approvals]\nwait_secs = 2\n")
    veil = harness.Veil(cfg)
    yield {"veil": veil, "ca": ca, "issuer": issuer, "moto": moto, "dir": d}
    veil.stop()
