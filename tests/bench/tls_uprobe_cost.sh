#!/bin/bash
# Added cost of the OpenSSL uprobes per HTTPS request (issue 9). Benchmark, not a test:
# numbers depend on the machine and on whatever else runs on it.
#
#   sudo tests/bench/tls_uprobe_cost.sh [HOPTRACE_BIN] [SECONDS] [ROUNDS]
#
# nginx (1 worker, `return 200`, keep-alive) on 127.0.0.1:18443 (TLS) and :18080 (plain),
# loaded by `wrk -t1 -c8` (Debian's wrk links libssl.so.3, so the client is probed too).
# Modes:
#   none      no agent (HTTPS)                 notls    agent --no-tls (ciphertext only)
#   tlsfilt   agent, probes attached, but the connection filtered out (--port 1): the
#             uprobe trap cost with BPF programs that return early
#   tls       agent, full TLS capture → spans  noneplain/plain  the same over plain HTTP
# Per mode: requests/s, CPU µs per request of the nginx worker, of wrk and of the agent
# (utime+stime deltas from /proc), and with kernel.bpf_stats_enabled=1 the average run
# time of every agent program (run_time_ns/run_cnt from the prog fds' fdinfo; names via
# bpftool when installed).
set -u
BIN=${1:-target/release/hoptrace}; SECS=${2:-8}; ROUNDS=${3:-2}
BIN=$(readlink -f "$BIN")
DIR=$(mktemp -d /tmp/hoptrace-tls-bench.XXXXXX)
trap 'nginx -p $DIR -e $DIR/error.log -c $DIR/nginx.conf -s stop 2>/dev/null; sysctl -qw kernel.bpf_stats_enabled=0' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout $DIR/key.pem -out $DIR/cert.pem 2>/dev/null
cat > $DIR/nginx.conf <<CONF
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/error.log notice;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $DIR/cbt; proxy_temp_path $DIR/pt; fastcgi_temp_path $DIR/ft;
  uwsgi_temp_path $DIR/ut; scgi_temp_path $DIR/st;
  server { listen 127.0.0.1:18080; location / { return 200 "hello\n"; } }
  server { listen 127.0.0.1:18443 ssl; ssl_certificate $DIR/cert.pem;
           ssl_certificate_key $DIR/key.pem; location / { return 200 "hello\n"; } }
}
CONF
nginx -p $DIR -e $DIR/error.log -c $DIR/nginx.conf || exit 1
# Ready once the master has written its pid and forked its worker (the sockets are bound
# before nginx daemonizes).
for _ in $(seq 200); do [ -s $DIR/nginx.pid ] && pgrep -P "$(cat $DIR/nginx.pid)" >/dev/null && break; sleep 0.05; done
pgrep -P "$(cat $DIR/nginx.pid 2>/dev/null)" >/dev/null || { echo "nginx has no worker after 10 s" >&2; exit 1; }
sysctl -qw kernel.bpf_stats_enabled=1
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
bench() {
  local mode=$1 port=18443 extra="" url=https://127.0.0.1:18443/ apid=""
  local worker; worker=$(pgrep -P "$(cat $DIR/nginx.pid)" | head -1)
  case $mode in plain|noneplain) url=http://127.0.0.1:18080/; port=18080;; esac
  case $mode in notls) extra=--no-tls;; tlsfilt) port=1;; esac
  if [ "$mode" != none ] && [ "$mode" != noneplain ]; then
    $BIN run --port $port --output /dev/null --listen off $extra 2>$DIR/agent-$mode.err &
    apid=$!
    for _ in $(seq 300); do grep -q '"ready"' $DIR/agent-$mode.err && break; sleep 0.1; done
  fi
  local w0 a0=0 w1 a1=0
  w0=$(cpu $worker); [ -n "$apid" ] && a0=$(cpu $apid)
  local out; out=$(/usr/bin/time -f "WRKCPU %U %S" wrk -t1 -c8 -d${SECS}s $url 2>&1)
  w1=$(cpu $worker); [ -n "$apid" ] && a1=$(cpu $apid)
  local reqs rps wrk_us
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  wrk_us=$(echo "$out" | awk '/WRKCPU/{printf "%d", ($2+$3)*1000000}')
  printf "mode=%-9s reqs=%-7s rps=%-9s nginx_us/req=%-7s wrk_us/req=%-7s" $mode $reqs $rps \
    $(echo "scale=1; ($w1-$w0)*10000/$reqs" | bc) $(echo "scale=1; $wrk_us/$reqs" | bc)
  if [ -n "$apid" ]; then
    printf " agent_us/req=%s" $(echo "scale=1; ($a1-$a0)*10000/$reqs" | bc)
    for fd in /proc/$apid/fdinfo/*; do
      grep -q '^prog_type' $fd 2>/dev/null || continue
      local id rt rc name=""
      id=$(awk '/^prog_id/{print $2}' $fd); rt=$(awk '/^run_time_ns/{print $2}' $fd)
      rc=$(awk '/^run_cnt/{print $2}' $fd)
      command -v bpftool >/dev/null && name=$(bpftool prog show id $id | head -1 | awk '{print $4}')
      [ "${rc:-0}" -gt 0 ] && echo "    prog $id $name runs=$rc avg_ns=$((rt/rc))"
    done > $DIR/progs-$mode.txt
    kill -INT $apid; wait $apid 2>/dev/null
  fi
  echo
}
for _ in $(seq $ROUNDS); do
  for m in none notls tlsfilt tls noneplain plain; do bench $m; done
done
echo "--- agent programs, last tls round:"; cat $DIR/progs-tls.txt
