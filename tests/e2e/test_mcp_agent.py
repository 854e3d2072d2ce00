"""An MCP-based agent: AWS Labs' awslabs.aws-api-mcp-server, unmodified,
started over stdio by the official `mcp` Python client, runs AWS CLI
commands through Veil. The server runs offline, in a network namespace
whose only ways out are Veil and an HTTPS proxy that stands in for the one
internet host it reads at start (the service reference list); so every AWS
API call it makes can only have gone through Veil, and Veil's audit trail
lists them."""
import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

import harness
from netjail import Relays
from standin import StandInProxy

HERE = Path(__file__).resolve().parent
MCP_PYTHON = HERE / ".venv-mcp" / "bin" / "python"
# The server reads this at start (the operations it may treat as read-only)
# and will not start without it.
SERVICE_REFERENCE = "servicereference.us-east-1.amazonaws.com"


@pytest.fixture
def jail_dir():
    # Short: Unix socket paths are limited to 108 bytes.
    d = tempfile.mkdtemp(prefix="jail-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def port_of(url):
    return int(url.rsplit(":", 1)[1].split("/")[0])


def records(cfg):
    out = subprocess.run([str(harness.VEIL), "audit", "export", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(l) for l in out.stdout.splitlines()]


def test_the_jail_reaches_only_its_relays(stack, jail_dir):
    # Veil is relayed in; moto, on the same host loopback, is not there.
    relays = Relays(jail_dir, [port_of(stack["veil"].url)])
    probe = ("import socket, sys\n"
             "def reach(port):\n"
             "    try:\n"
             "        socket.create_connection(('127.0.0.1', port), timeout=5).close()\n"
             "        return True\n"
             "    except OSError:\n"
             "        return False\n"
             "print(reach(int(sys.argv[1])), reach(int(sys.argv[2])))\n")
    try:
        p = subprocess.run(relays.command(["python3", "-c", probe, str(port_of(stack["veil"].url)), str(port_of(stack["moto"]))]),
                           capture_output=True, text=True, timeout=60)
    finally:
        relays.close()
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "False"], p.stdout


def mcp_env(stack, token_file, home, proxy):
    """What the MCP server gets: an agent's environment (README, "An MCP
    server as the agent"), and the proxy for the one host it reads at start."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "TMPDIR": str(home),
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_ARN": harness.ROLE_ARN,
        "AWS_ENDPOINT_URL": stack["veil"].url,
        "AWS_CA_BUNDLE": str(stack["ca"]),
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "HTTPS_PROXY": proxy.url,
        "NO_PROXY": "127.0.0.1",
        "REQUESTS_CA_BUNDLE": str(proxy.ca),
        # FastMCP's banner would look its own version up on the package index.
        "FASTMCP_CHECK_FOR_UPDATES": "off",
    }


async def run_agent(command, env, cli_commands):
    """Start the server over stdio, list its tools, and run each command
    through its call_aws tool; returns the tool names and, per command, the
    server's answer for it (its CallAWSResponse as JSON)."""
    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    answers = []
    with open(Path(env["HOME"]) / "server.log", "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = [t.name for t in (await session.list_tools()).tools]
                for cli in cli_commands:
                    r = await session.call_tool("call_aws", {"cli_command": cli})
                    assert not r.isError, r.content
                    [answer] = [a for c in r.content for a in json.loads(c.text)]
                    assert answer["cli_command"] == cli, answer
                    answers.append(answer)
    return tools, answers


def test_aws_api_mcp_server_reaches_aws_only_through_veil(stack, tmp_path, jail_dir):
    moto = stack["moto"]
    secret = f"prod/payments/mcp-{time.time_ns()}"
    harness.moto_client(moto, "secretsmanager").create_secret(Name=secret, SecretString='{"password":"hunter2"}')
    user = f"mcp{time.time_ns()}"
    sub = f"mcp-agent-{time.time_ns()}"
    token_file = tmp_path / "token"
    # As CI jobs write it: with a newline.
    token_file.write_text(harness.mint(stack["issuer"], sub=sub, groups=["search"]) + "\n")
    home = tmp_path / "home"
    home.mkdir()
    proxy = StandInProxy(tmp_path, {SERVICE_REFERENCE: {"/": ("application/json", b"[]")}})
    relays = Relays(jail_dir, [port_of(stack["veil"].url), proxy.port])
    server = relays.command([str(MCP_PYTHON), "-m", "awslabs.aws_api_mcp_server.server"])
    try:
        tools, (who, got, held) = asyncio.run(asyncio.wait_for(run_agent(server, mcp_env(stack, token_file, home, proxy), [
            "aws sts get-caller-identity",
            f"aws secretsmanager get-secret-value --secret-id {secret}",
            f"aws iam create-user --user-name {user}",
        ]), timeout=120))
    except BaseException:
        print((home / "server.log").read_text(errors="replace")[-5000:])
        raise
    finally:
        relays.close()
        proxy.stop()
    assert "call_aws" in tools, tools
    # The agent is the role session Veil issued.
    assert who["response"]["status_code"] == 200, who
    assert json.loads(who["response"]["as_json"])["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/veil-agent/"), who
    # Another team's secret, masked.
    assert got["response"]["status_code"] == 200, got
    value = json.loads(got["response"]["as_json"])
    assert (value["Name"], value["SecretString"]) == (secret, "***"), value
    # Held for a reviewer (the stack answers after 2 s), and not in AWS.
    assert (held["response"]["status_code"], held["response"]["error_code"]) == (403, "ApprovalRequired"), held
    approval = held["response"]["error"].split("approval pending, id ")[1].split(":")[0]
    assert approval.startswith("apr-"), held
    assert user not in [u["UserName"] for u in harness.moto_client(moto, "iam").list_users()["Users"]]

    # Its one trip outside Veil: the list it reads at start, from the stand-in.
    assert [r.split(" ")[:2] for r in proxy.requests] == [["CONNECT", f"{SERVICE_REFERENCE}:443"]], proxy.requests
    assert proxy.served == [(SERVICE_REFERENCE, "GET", "/")], proxy.served
    # And every AWS API call in Veil's audit trail, as this agent.
    mine = [r for r in records(stack["dir"] / "veil.toml") if r.get("subject") == sub]
    calls = [(r["service"], r["action"], r["verdict"]) for r in mine if r["kind"] == "call" and r["action"] != "AssumeRoleWithWebIdentity"]
    assert calls == [("sts", "GetCallerIdentity", "allow"), ("secretsmanager", "GetSecretValue", "allow"),
                     ("iam", "CreateUser", "approval-required")], calls
    assert {r["approval_id"] for r in mine if r["action"] == "CreateUser"} == {approval}, mine
    assert "hunter2" not in json.dumps(mine)
