"""Unit tests of the Python SDK's helpers, on the host's CPython: they must
behave exactly like the Rust SDK's."""
import pytest

from veil_policy import (Config, Finding, Mask, Policy, PolicyError, Request, Response, ResponseDecision, Scope, Verdict, glob,
                         rust_trim, sorted_items)


def test_glob_matches_like_the_rust_policy():
    assert glob("iam:create*", "iam:createuser")
    assert glob("*admin*", "arn:aws:iam::1:role/admin")
    assert glob("a*b*c", "axxbyyc")
    assert not glob("a*b*c", "axxbyy")
    assert glob("exact", "exact")
    assert not glob("exact", "exactly")
    assert not glob("*ab*ab", "ab")


def test_claims_params_and_config_helpers():
    req = Request("iam", "CreateUser", {"sub": "a", "groups": "ops, dev", "roles": ["x", 1]},
                  {"UserName": "bob", "Count": 3}, {"deny": ["a:*"], "bad": "x"})
    assert req.qualified_action == "iam:CreateUser" and req.subject == "a"
    assert req.groups == ["ops", "dev"] and req.has_group("dev")
    assert req.claim_list("roles") == ["x"] and req.claim_list("missing") == []
    assert req.param_str("UserName") == "bob" and req.param_str("Count") is None
    assert req.config_list("deny", ["d"]) == ["a:*"] and req.config_list("absent", ["d"]) == ["d"]
    with pytest.raises(PolicyError, match="config `bad` must be a list of strings"):
        req.config_list("bad", [])
    assert Request("s", "A", config=[1]).config_list("k", ["d"]) == ["d"]


def test_rust_semantics_of_trim_and_key_order():
    assert rust_trim("\u3000 0.0.0.0/0\t\n") == "0.0.0.0/0"
    assert rust_trim("\x1c0.0.0.0/0") == "\x1c0.0.0.0/0"  # not White_Space in Rust
    assert [k for k, _ in sorted_items({"b": 1, "Z": 2, "é": 3, "a": 4})] == ["Z", "a", "b", "é"]


def test_decisions():
    assert Verdict.deny("no") == Verdict("deny", "no")
    assert ResponseDecision.masks([Mask.hash("a.b")]).mask_list == [Mask("a.b", "hash")]
    assert Response(200, {"x": 1}).body == {"x": 1}


def test_config_and_scope():
    config = Config(text='{"deny": ["iam:*"], "bad": [1]}')
    assert config.get() == {"deny": ["iam:*"], "bad": [1]}
    assert config.list("deny", []) == ["iam:*"] and config.list("absent", ["x"]) == ["x"]
    with pytest.raises(PolicyError, match="config `bad` must be a list of strings"):
        config.list("bad", [])
    assert Scope.all() == Scope(on_request=["*"], on_response=["*"])
    assert Policy().scope(config) == Scope.all()


def test_findings_carry_the_mask_their_kind_calls_for():
    found = [Finding('"Owner"."AccessKeyId"', "access-key-id", "aws-access-key-id"), Finding('"Note"', "secret", "private-key")]
    resp = Response(200, {}, findings=found)
    assert [f.mask() for f in resp.findings()] == [Mask.hash('"Owner"."AccessKeyId"'), Mask.redact('"Note"')]
    assert Response(200, {}).findings() == []


# The Rust SDK's cases (policy-sdk/src/net.rs), with the same answers.
OPEN = ["0.0.0.0/0", "10.0.0.0/0", "000.0.0.0/00", " 0.0.0.0/0 ", "::/0", "::0/0", "0:0:0:0:0:0:0:0/0", "::ffff:0.0.0.0/96",
        "::ffff:0:0/95", "2000::/3", "2000::/2", "::/1", "0::/0"]
CLOSED = ["10.0.0.0/8", "0.0.0.0/1", "0.0.0.0", "2001:db8::/32", "::ffff:10.0.0.0/104", "2000::/4", "nonsense", "0.0.0.0/33",
          "::/129", "1.2.3/0", "::/0/0", "fe80::/0%eth0", "１.2.3.4/0"]


def test_every_spelling_of_the_whole_internet_is_open():
    from veil_policy import Network, is_world_open
    assert [t for t in OPEN if not is_world_open(t)] == []
    assert [t for t in CLOSED if is_world_open(t)] == []
    n = Network.parse("10.1.0.0/16")
    assert n.contains(Network.parse("10.1.2.3")) and not n.contains(Network.parse("10.2.0.1"))
    assert not n.contains(Network.parse("::ffff:10.1.2.3"))


def test_arns_split_into_their_parts():
    from veil_policy import Arn
    a = Arn.parse("arn:aws:iam::123456789012:role/path/admin")
    assert (a.partition, a.service, a.region, a.account) == ("aws", "iam", "", "123456789012")
    assert a.resource_type() == ("role", "path/admin")
    assert Arn.parse("arn:aws:logs:us-east-1:1:log-group:a:b").resource == "log-group:a:b"
    for bad in ["", "arn:aws:iam::1", "arn::iam::1:role/x", "ARN:aws:iam::1:role/x", "arn:aws:iam::1:"]:
        assert Arn.parse(bad) is None, bad
