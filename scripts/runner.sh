#!/usr/bin/env bash
# The local event runner: delivers the bucket's S3 notifications (queued in LocalStack SQS) to the
# same handler code the Lambdas run. Usage: scripts/runner.sh start|stop|status
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIDS=$ROOT/.local/pids
LOGS=$ROOT/.local/logs
PIDFILE=$PIDS/runner.pid
BIN=$ROOT/target/debug/rosterdrop
mkdir -p "$PIDS" "$LOGS"

our_pid() {
  [[ -f $PIDFILE ]] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$BIN" || return 1
  echo "$pid"
}

case ${1:-} in
  start)
    if pid=$(our_pid); then echo "runner already running (pid $pid)"; exit 0; fi
    [[ -x $BIN ]] || (cd "$ROOT" && cargo build --quiet -p cli)
    : >"$LOGS/runner.log"
    (cd "$ROOT" && exec setsid "$BIN" --verbose dev runner >>"$LOGS/runner.log" 2>&1 </dev/null) &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 60); do
      grep -q "delivering events" "$LOGS/runner.log" && { echo "runner ready (pid $(cat "$PIDFILE")), log: .local/logs/runner.log"; exit 0; }
      our_pid >/dev/null || { echo "runner exited:"; tail -n 20 "$LOGS/runner.log"; exit 1; }
      sleep 0.5
    done
    echo "runner not ready after 30s:"; tail -n 20 "$LOGS/runner.log"; exit 1
    ;;
  stop)
    if pid=$(our_pid); then
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.25; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "runner stopped (pid $pid)"
    fi
    rm -f "$PIDFILE"
    ;;
  status)
    if pid=$(our_pid); then echo "runner: running (pid $pid)"; else echo "runner: not running"; exit 3; fi
    ;;
  *) echo "usage: scripts/runner.sh start|stop|status" >&2; exit 2 ;;
esac
