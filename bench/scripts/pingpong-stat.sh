#!/bin/bash
# Usage (as root, release build): bench/scripts/pingpong-stat.sh PATH
#   PATH: darkport (QUIC), darkport-tcp, or stunnel
# Per round trip: divide the counts by 20,200 (20,000 measured + 200 warm-up).
# Counts context switches and syscalls of the edge client and the router
# during one ping-pong run (20,200 round trips) at MTU 1500.
set -u
cd "$(dirname "$0")/../.."
case "$1" in
  darkport) server="darkport-edge-router run --identity router-1.id"; client="darkport-edge-client run --identity bench-client.id --transport quic" ;;
  darkport-tcp) server="darkport-edge-router run --identity router-1.id"; client="darkport-edge-client run --identity bench-client.id --transport tcp" ;;
  stunnel) server="stunnel4 .*server.conf"; client="stunnel4 .*client.conf" ;;
  *) echo "usage: $0 darkport|darkport-tcp|stunnel" >&2; exit 2 ;;
esac
target/release/darkport-bench --netns --only pingpong --runs 1 --paths $1 > /tmp/pp-bench-$1.log 2>&1 &
B=$!
for i in $(seq 1 200); do
  R=$(pgrep -n -f "$server")
  C=$(pgrep -n -f "$client")
  [ -n "$R" ] && [ -n "$C" ] && break
  sleep 0.05
done
perf stat -e context-switches,cpu-migrations,raw_syscalls:sys_enter -p $R -o /tmp/pp-router-$1.txt &
P1=$!
perf stat -e context-switches,cpu-migrations,raw_syscalls:sys_enter -p $C -o /tmp/pp-client-$1.txt &
P2=$!
wait $B
wait $P1 $P2 2>/dev/null
tail -12 /tmp/pp-bench-$1.log | head -5
cat /tmp/pp-router-$1.txt /tmp/pp-client-$1.txt | grep -E "context|migr|sys_enter|elapsed"
