#!/usr/bin/env bash
# `make test`: install what is missing, start the local stack unless it already runs, run every
# test of the workspace, and stop what this script started, also when tests fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}
export AWS_ENDPOINT_URL_DYNAMODB=${AWS_ENDPOINT_URL_DYNAMODB:-http://127.0.0.1:8000}
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export ROSTERDROP_S3_PATH_STYLE=true
export AWS_EC2_METADATA_DISABLED=true

t0=$SECONDS
scripts/stack.sh install
scripts/infra-tools.sh
echo "test: local stack and infra tools installed ($((SECONDS - t0))s)"

started=0
if ! scripts/stack.sh status >/dev/null 2>&1; then
  started=1
  trap 'scripts/stack.sh down' EXIT
fi
# Build while the stack boots: both take a while, and they overlap.
scripts/stack.sh up >.local/logs/stack-up.log 2>&1 &
up_pid=$!
cargo build --workspace --all-targets
if ! wait $up_pid; then cat .local/logs/stack-up.log; exit 1; fi
cat .local/logs/stack-up.log
echo "test: stack up and workspace built ($((SECONDS - t0))s)"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final
else
  cargo test --workspace --no-fail-fast
fi
echo "test: done in $((SECONDS - t0))s (stack started here: $started)"
