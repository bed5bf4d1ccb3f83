#!/usr/bin/env bash
# The infra checks' tools (cfn-lint with the SAM translator) in .local/infra-venv, from the full
# lock infra/requirements.txt; reinstalled only when the lock changes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.local/infra-venv
LOCK=$ROOT/infra/requirements.txt
STAMP=$ROOT/.local/stamps/infra
LOG=$ROOT/.local/logs/infra-install.log
mkdir -p "$ROOT/.local/stamps" "$ROOT/.local/logs"
sha=$(sha256sum "$LOCK" | cut -d' ' -f1)
if [[ -x $VENV/bin/cfn-lint && -f $STAMP && $(cat "$STAMP") == "$sha" ]]; then exit 0; fi
py=${STACK_PYTHON:-}
if [[ -z $py ]]; then
  if command -v pyenv >/dev/null 2>&1 && [[ -x $(pyenv root)/versions/3.13.0/bin/python3 ]]; then py=$(pyenv root)/versions/3.13.0/bin/python3
  elif [[ -x $HOME/.pyenv/versions/3.13.0/bin/python3 ]]; then py=$HOME/.pyenv/versions/3.13.0/bin/python3
  else py=$(command -v python3); fi
fi
rm -rf "$VENV"
if ! { "$py" -m venv "$VENV" && "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps -r "$LOCK" && "$VENV/bin/python" -m pip check; } >"$LOG" 2>&1; then
  echo "infra-tools: install failed; last lines of $LOG:" >&2
  tail -n 30 "$LOG" >&2
  exit 1
fi
echo "$sha" >"$STAMP"
