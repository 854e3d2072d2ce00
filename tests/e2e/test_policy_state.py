"""A policy instance serves one caller only, driven through the running
gateway: a policy that remembers the caller it served last (the hostile
fixture's `remember` mode) is called by several callers at once, over
several connections, and never names another caller; one that keeps 2 MiB
more on every call (`leak`) keeps answering, its instance replaced before
its memory cap; so does one that keeps 8 WASI handles on every call
(`handles`), before its resource table's cap."""
import concurrent.futures
import http.client
import re
import shutil
import ssl
from urllib.parse import urlparse

import pytest

import harness

CONFIG = """
[policies.config.hostile]
modes = { ListUsers = "remember", ListRoles = "leak", ListGroups = "handles" }
"""
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def gw(issuer, moto, tmp_path_factory):
    d = tmp_path_factory.mktemp("policy-state")
    pdir = d / "policies"
    pdir.mkdir()
    shutil.copy(harness.POLICIES / "fixtures" / "hostile.wasm", pdir / "hostile.wasm")
    cfg, ca = harness.veil_config(d, issuer, moto, policies_dir=pdir, policy_config=CONFIG)
    veil = harness.Veil(cfg)
    yield {"veil": veil, "ca": ca, "issuer": issuer}
    veil.stop()


def connection(gw):
    u = urlparse(gw["veil"].url)
    return http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=str(gw["ca"])), timeout=60)


def iam(conn, token, action):
    conn.request("POST", "/", body=f"Action={action}&Version=2010-05-08",
                 headers={"Authorization": f"Bearer {token}", "X-Veil-Service": "iam", "X-Veil-Region": "us-east-1", **FORM})
    resp = conn.getresponse()
    return resp.status, resp.read().decode(errors="replace")


def previous(conn, token):
    """Whom the instance that decided this call served before it."""
    status, text = iam(conn, token, "ListUsers")
    m = re.search(r"previous caller on this instance: ([\w-]+)", text)
    assert status == 403 and m, (status, text)
    return m.group(1)


def test_a_policy_that_keeps_state_never_sees_another_caller(gw):
    callers = [f"agent-{i}" for i in range(12)]
    tokens = {c: harness.mint(gw["issuer"], sub=c) for c in callers}
    # One caller's calls in a row share an instance: the state is real.
    conn = connection(gw)
    assert previous(conn, tokens["agent-0"]) in ("none", "agent-0")
    assert previous(conn, tokens["agent-0"]) == "agent-0"
    conn.close()

    def run(worker):
        conn = connection(gw)
        seen = []
        for i in range(40):
            me = callers[(worker * 5 + i) % len(callers)]
            seen.append((me, previous(conn, tokens[me])))
        conn.close()
        return seen

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [s for r in pool.map(run, range(8)) for s in r]
    crossed = [(me, saw) for me, saw in results if saw not in ("none", me)]
    assert not crossed, f"a caller saw another's state: {crossed[:5]}"
    # More callers than instances are kept warm: some started fresh.
    assert any(saw == "none" for _, saw in results)


def all_answer(gw, sub, action, calls):
    """`calls` calls of `action` by one caller on one connection all answer 200."""
    token = harness.mint(gw["issuer"], sub=sub)
    conn = connection(gw)
    for i in range(calls):
        status, text = iam(conn, token, action)
        assert status == 200, (i, status, text)
    conn.close()


def test_a_policy_that_leaks_memory_keeps_answering(gw):
    # 2 MiB kept per call: one instance would pass its 64 MiB cap by call 32.
    all_answer(gw, "leaky-agent", "ListRoles", 40)


def test_a_policy_that_leaks_handles_keeps_answering(gw):
    # 8 pollables kept per call: one instance would fill its table (1024
    # entries, two per pollable) by call 64.
    all_answer(gw, "handle-leaking-agent", "ListGroups", 150)
