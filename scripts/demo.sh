#!/usr/bin/env bash
# The demo: runs the shipped policies on sample AWS calls and shows what an
# agent would get back: a masked secret, a denial and an approval request.
set -euo pipefail
cd "$(dirname "$0")/.."
veil=target/release/veil
calls=examples/calls
policies=target/policies
run() {
  echo
  echo "\$ veil policy eval $policies/*.wasm $*"
  "$veil" policy eval "$policies/risky-actions.wasm" "$policies/secrets-by-team.wasm" --config examples/policy-config.json "$@"
}
echo "== 1. An agent of the search team reads the payments team's database secret: masked"
run --operation secretsmanager:GetSecretValue --claims $calls/claims-search.json \
  --params $calls/get-secret-value.params.json --response $calls/get-secret-value.response.json
echo
echo "== 2. The payments team's own agent reads it: plaintext"
run --operation secretsmanager:GetSecretValue --claims $calls/claims-payments.json \
  --params $calls/get-secret-value.params.json --response $calls/get-secret-value.response.json
echo
echo "== 3. An agent tries to turn off CloudTrail: denied"
run --operation cloudtrail:StopLogging --claims $calls/claims-search.json
echo
echo "== 4. An agent creates an IAM user: held for a human's approval"
run --operation iam:CreateUser --claims $calls/claims-search.json --params $calls/create-user.params.json
