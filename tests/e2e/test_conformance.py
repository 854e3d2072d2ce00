"""`veil policy test`: the language-neutral conformance runner, through the binary."""
import json
import subprocess

import pytest

import harness

CASES = harness.ROOT / "tests" / "conformance"


def run(policy, cases):
    return subprocess.run([str(harness.VEIL), "policy", "test", str(policy), str(cases)], capture_output=True, text=True, timeout=120)


# The same policies built from Rust, Python (componentize-py) and JavaScript
# (componentize-js): every build must pass the same cases, whose exact
# reasons, masks and bodies make the three outputs byte-for-byte equal.
LANGUAGES = {"rust": "", "python": "python/", "js": "js/"}


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("policy", ["risky-actions", "secrets-by-team"])
def test_shipped_policies_pass_their_cases(policy, lang):
    out = run(harness.POLICIES / f"{LANGUAGES[lang]}{policy}.wasm", CASES / policy)
    assert out.returncode == 0, out.stdout + out.stderr
    cases = len(list((CASES / policy).glob("*.json")))
    assert f"{cases} cases, {cases} passed, 0 failed" in out.stdout and "FAIL" not in out.stdout


def test_default_masking_per_protocol_on_the_wire():
    """aws-sensitive on real-shaped JSON, query, EC2, rest-xml and rest-json
    responses, through the gateway's codecs, to the exact masked bytes."""
    cases = harness.ROOT / "tests" / "masking"
    out = run(harness.POLICIES / "aws-sensitive.wasm", cases)
    assert out.returncode == 0, out.stdout + out.stderr
    n = len(list(cases.glob("*.json")))
    assert f"{n} cases, {n} passed, 0 failed" in out.stdout


def test_a_wrong_expectation_fails_with_a_table_and_exit_1(tmp_path):
    for f in (CASES / "secrets-by-team").glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    case = json.loads((CASES / "secrets-by-team" / "other-team-masked.json").read_text())
    case["expect"]["body"]["SecretString"] = "hunter2"
    (tmp_path / "leaks.json").write_text(json.dumps(case))
    out = run(harness.POLICIES / "secrets-by-team.wasm", tmp_path)
    assert out.returncode == 1
    line = next(l for l in out.stdout.splitlines() if l.startswith("leaks"))
    assert "FAIL: body" in line
    assert "1 failed" in out.stdout


def test_bad_case_files_name_the_file(tmp_path):
    (tmp_path / "broken.json").write_text('{"operation": "iam:CreateUser"}')
    out = run(harness.POLICIES / "risky-actions.wasm", tmp_path)
    assert out.returncode == 1 and "broken.json" in out.stderr


def test_ports_restate_the_same_default_rules():
    """Each build must carry its defaults, so the Python and JS ports restate
    the Rust policy's rule lists; they must stay identical, in order."""
    import re
    # Each file, up to where its code starts after the rule lists.
    sources = {
        "rust": (harness.ROOT / "policies" / "risky-actions" / "src" / "lib.rs", "struct RiskyActions;"),
        "python": (harness.ROOT / "policies" / "python" / "risky-actions" / "app.py", "def first_match"),
        "js": (harness.ROOT / "policies" / "js" / "risky-actions" / "policy.js", "function firstMatch"),
    }
    rules = {lang: re.findall(r'"([^"\s]+)"', path.read_text().split(end)[0].split("DENY", 1)[1])
             for lang, (path, end) in sources.items()}
    assert len(rules["rust"]) > 40
    assert rules["python"] == rules["rust"] and rules["js"] == rules["rust"]
