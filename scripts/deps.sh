#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine; idempotent and
# quiet on success. Output of each step is kept in a log shown on failure.
# `deps.sh bench`: what `make bench` needs instead (no browser; wrk and the
# plotting library).
set -euo pipefail
mode=${1:-test}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() {
  if ! "$@" >"$log" 2>&1; then
    echo "deps: failed: $*" >&2
    cat "$log" >&2
    exit 1
  fi
}

# Debian: ClickHouse (the audit store the tests ship to), PostgreSQL (the
# shared approval store) and nginx with its stream module (the TCP load
# balancer in front of several gateways, and the bench's reverse proxy);
# Chromium for the reviewer page's browser test, or for the bench wrk.
debs=(clickhouse-server:/usr/sbin/clickhouse-server postgresql-15:/usr/lib/postgresql/15/bin/initdb
      nginx-light:/usr/sbin/nginx libnginx-mod-stream:/usr/lib/nginx/modules/ngx_stream_module.so)
if [ "$mode" = bench ]; then
  debs+=(wrk:/usr/bin/wrk)
else
  debs+=(chromium:/usr/bin/chromium)
fi
missing=()
# -e, not -x: the stream module is a library, not an executable.
for d in "${debs[@]}"; do [ -e "${d#*:}" ] || missing+=("${d%%:*}"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  step apt-get update -q
  step apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

rustup target list --installed | grep -qx wasm32-wasip2 || step rustup target add wasm32-wasip2

# Python: the AWS emulator (moto), real AWS clients (boto3, AWS CLI), pytest,
# the MCP client; componentize-py, which builds Python policies. And in an
# environment of its own, the MCP server the agent tests start.
reqs=(python3:tests/requirements.txt python3:policy-sdk/python/requirements.txt)
if [ "$mode" = bench ]; then
  reqs+=(python3:bench/requirements.txt)
else
  mcp_venv=tests/e2e/.venv-mcp
  "$mcp_venv/bin/python" -c '' 2>/dev/null || { rm -rf "$mcp_venv"; step python3 -m venv "$mcp_venv"; }
  reqs+=("$mcp_venv/bin/python:tests/mcp-server-requirements.txt")
fi
for entry in "${reqs[@]}"; do
  python=${entry%%:*} req=${entry#*:}
  "$python" - "$req" <<'PY' 2>/dev/null || step "$python" -m pip install --quiet --disable-pip-version-check -r "$req"
import importlib.metadata as m, sys
want = dict(l.strip().split("==") for l in open(sys.argv[1]) if "==" in l and not l.startswith("#"))
for name, version in want.items():
    base = name.split("[")[0]
    if m.version(base) != version:
        sys.exit(1)
PY
done

# Node: the real OIDC issuer used by the end-to-end tests and the AWS SDK for
# JavaScript v3 they drive; reinstalled when any package.json pin is missing.
if ! node -e '
const dir = process.argv[1], want = require(dir + "/package.json").dependencies;
for (const [name, version] of Object.entries(want))
  if (require(dir + "/node_modules/" + name + "/package.json").version !== version) process.exit(1);
' "$PWD/tests/e2e" 2>/dev/null; then
  step npm ci --prefix tests/e2e --no-audit --no-fund
fi
# Node: componentize-js, which builds JavaScript policies.
if [ ! -x policy-sdk/js/node_modules/.bin/componentize-js ]; then
  step npm ci --prefix policy-sdk/js --no-audit --no-fund
fi
