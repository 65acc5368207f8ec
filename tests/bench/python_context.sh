#!/bin/sh
# The cost of the Python Context probe (docs/performance.md#python-context-linking).
# As root, after `cargo xtask setup` and `cargo xtask build` (target/release/hoptrace):
#   tests/bench/python_context.sh
# 1. ns per contextvars.copy_context() in a listening Debian python3.11, without and with
#    the agent; 2. wrk -c8 against FastAPI (/async: httpx to nginx) with no agent, the agent
#    with --no-python-context and the agent with the probe, two alternating rounds, and the
#    probed calls per request from /metrics.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=$ROOT/target/pyenv-debian3.11/bin/python
BIN=$ROOT/target/release/hoptrace
W=$(mktemp -d)
APP=28710 BACK=28711 LISTEN=28712
agent() {
  : > "$W/ag.err"
  "$BIN" run --port $APP --port $BACK --output /dev/null --listen 127.0.0.1:$LISTEN "$@" > "$W/ag.out" 2> "$W/ag.err" &
  echo $! > "$W/ag.pid"
  for _ in $(seq 1 150); do grep -q '"msg":"ready"' "$W/ag.err" && return; sleep 0.2; done
}
stop_agent() { kill -INT "$(cat "$W/ag.pid")"; sleep 2; }
metric() { curl -s 127.0.0.1:$LISTEN/metrics | awk -v k="$1" 'index($0, k) == 1 {print $2}'; }

echo "== copy_context() without the agent"
echo | "$PY" "$ROOT/tests/bench/copy_context_loop.py"
echo "== copy_context() with the probe"
mkfifo "$W/go"
"$PY" "$ROOT/tests/bench/copy_context_loop.py" < "$W/go" > "$W/loop.out" &
LOOP=$!
exec 3> "$W/go"
sleep 1
agent
echo go >&3
exec 3>&-
wait $LOOP
cat "$W/loop.out"
stop_agent

cat > "$W/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$BACK; keepalive_requests 100000; location / { return 200 "ok\n"; } } }
CONF
nginx -c "$W/nginx.conf" -p "$W" & echo $! > "$W/nginx.pid.run"
"$PY" "$ROOT/tests/fixtures/async_service.py" $APP $BACK > "$W/app.log" 2>&1 & echo $! > "$W/app.pid"
sleep 3
rps() { wrk -t2 -c8 -d12s "http://127.0.0.1:$APP/async/1" | awk '/Requests\/sec/ {print $2}'; }
for round in 1 2; do
  echo "round $round: no agent $(rps) req/s"
  agent --no-python-context; echo "round $round: agent --no-python-context $(rps) req/s"; stop_agent
  agent; c0=$(metric 'hoptrace_python_contexts_total{event="copies"}'); r0=$(metric hoptrace_http_exchanges_total)
  echo "round $round: agent with the probe $(rps) req/s"; sleep 2
  c1=$(metric 'hoptrace_python_contexts_total{event="copies"}'); r1=$(metric hoptrace_http_exchanges_total)
  echo "  probed calls $((c1 - c0)) for $(((r1 - r0) / 4)) requests (4 exchanges each: both ends of the inbound and of the backend call are captured)"
  stop_agent
done
kill "$(cat "$W/app.pid")" "$(cat "$W/nginx.pid.run")" 2>/dev/null
rm -rf "$W"
