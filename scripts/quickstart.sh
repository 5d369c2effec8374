#!/usr/bin/env bash
# Darkport quickstart: runs a controller, an edge router, an edge client, a
# hoster and a Fluentd forward-protocol receiver on 127.0.0.1, wires them up
# exactly as the README's full flow does, and sends Fluentd records through
# the tunnel. The receiver listens on a loopback port, and nothing dials it
# but the hoster beside it, which reached the router over an outbound
# connection (the service has no address the router could dial):
# one from an app writing to the edge client's local port, one from the Rust
# SDK example. Everything lives in a temporary directory and every process
# it started is stopped on exit.
#
#   scripts/quickstart.sh            # debug build (shares the test build)
#   PROFILE=release scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE="${PROFILE:-debug}"
if [ "$PROFILE" = release ]; then CARGO_FLAGS=(--release); else CARGO_FLAGS=(); fi
echo "==> building ($PROFILE)"
cargo build -q "${CARGO_FLAGS[@]}" --workspace --bins --examples
BIN="$(pwd)/target/$PROFILE"

WORK="$(mktemp -d -t darkport-quickstart.XXXXXX)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cd "$WORK"

fail() { # $1 = what went wrong
    echo "FAILED: $1; logs:" >&2
    tail -n 20 ./*.log >&2 || true
    exit 1
}
free_port() { # $1 = tcp|udp
    python3 -c "import socket,sys; t=socket.SOCK_STREAM if sys.argv[1]=='tcp' else socket.SOCK_DGRAM; s=socket.socket(socket.AF_INET,t); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}
wait_for() { # $1 = description, rest = command that succeeds when ready
    local what="$1"; shift
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $what; logs:" >&2
    tail -n 20 ./*.log >&2 || true
    exit 1
}

CTL_PORT=$(free_port udp); ROUTER_PORT=$(free_port udp)
FLUENTD_PORT=$(free_port tcp); LOCAL_PORT=$(free_port tcp)
export RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1

echo "==> private service: a Fluentd forward receiver on 127.0.0.1:$FLUENTD_PORT (loopback only, never exposed)"
"$BIN/darkport-fluent-sink" --listen "127.0.0.1:$FLUENTD_PORT" > records.jsonl 2> fluentd.log &
PIDS+=($!)

echo "==> controller on 127.0.0.1:$CTL_PORT"
"$BIN/darkport-controller" init --data-dir ./ctl --advertise "127.0.0.1:$CTL_PORT"
"$BIN/darkport-controller" run --data-dir ./ctl 2> controller.log &
PIDS+=($!)
wait_for "the controller" "$BIN/darkport-controller" identity list --data-dir ./ctl

echo "==> identities, service and policy"
"$BIN/darkport-controller" identity create router-1 --kind router --token-out router-1.token --data-dir ./ctl
"$BIN/darkport-controller" identity create app-1 --role log-writers --token-out app-1.token --data-dir ./ctl
"$BIN/darkport-controller" identity create fluentd-host --role log-hosts --token-out fluentd-host.token --data-dir ./ctl
# fluent-forward: the router stamps every record with the sender's verified
# identity (and here its roles), and only lets it write quickstart.* tags.
# --hosted: no address; the hoster beside Fluentd serves it over an
# outbound connection.
"$BIN/darkport-controller" service create fluentd --hosted \
    --protocol fluent-forward --stamp-roles-key darkport_roles --data-dir ./ctl
"$BIN/darkport-controller" policy create fluentd-writers --service-roles fluentd --identity-roles '#log-writers' \
    --tags 'quickstart.**' --data-dir ./ctl
"$BIN/darkport-controller" policy create fluentd-hosts --type bind --service-roles fluentd \
    --identity-roles '#log-hosts' --data-dir ./ctl

echo "==> edge router on 127.0.0.1:$ROUTER_PORT"
"$BIN/darkport-edge-router" enroll --token router-1.token --identity router-1.id
"$BIN/darkport-edge-router" run --identity router-1.id --listen "127.0.0.1:$ROUTER_PORT" 2> router.log &
PIDS+=($!)
wait_for "the router to register" sh -c "'$BIN/darkport-controller' router list --json --data-dir ./ctl | grep -q '\"online\": true'"

echo "==> hoster beside Fluentd: dials out to the router, listens on nothing"
"$BIN/darkport-edge-client" enroll --token fluentd-host.token --identity fluentd-host.id
"$BIN/darkport-edge-client" host --identity fluentd-host.id --service "fluentd=127.0.0.1:$FLUENTD_PORT" 2> hoster.log &
PIDS+=($!)
wait_for "the hoster's terminator" sh -c "'$BIN/darkport-controller' service show fluentd --json --data-dir ./ctl | grep -q fluentd-host"
"$BIN/darkport-controller" service show fluentd --data-dir ./ctl

echo "==> edge client: 127.0.0.1:$LOCAL_PORT -> service fluentd"
"$BIN/darkport-edge-client" enroll --token app-1.token --identity app-1.id
"$BIN/darkport-edge-client" run --identity app-1.id --forward "127.0.0.1:$LOCAL_PORT=fluentd" 2> client.log &
PIDS+=($!)
wait_for "the edge client" python3 -c "import socket; socket.create_connection(('127.0.0.1',$LOCAL_PORT)).close()"

echo
"$BIN/darkport-controller" identity list --data-dir ./ctl
echo

echo "==> an app writes two Fluentd records to 127.0.0.1:$LOCAL_PORT: one claiming to be"
echo "    \"admin\", one under a tag its policy does not allow (audit.forged)"
python3 - "$LOCAL_PORT" <<'PY'
import socket, struct, sys, time
def s(b): return bytes([0xa0 | len(b)]) + b  # msgpack fixstr
now = b"\xce" + struct.pack(">I", int(time.time()))
# Forward protocol, Message mode: [tag, time, {...}]
forged = b"\x93" + s(b"quickstart.app") + now + b"\x82" + s(b"message") \
    + s(b"hello from the app host") + s(b"darkport_identity") + s(b"admin")
denied = b"\x93" + s(b"audit.forged") + now + b"\x81" + s(b"message") + s(b"not allowed")
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as c:
    c.sendall(forged + denied)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
PY

echo "==> the SDK example dials fluentd directly and waits for Fluentd's ack"
"$BIN/examples/fluent_send" --identity app-1.id --tag quickstart.sdk --message "hello from the Rust SDK"

wait_for "two records at the Fluentd receiver" sh -c "[ \$(wc -l < records.jsonl) -ge 2 ]"
echo
echo "==> records received by the private Fluentd receiver (stamped by the router):"
cat records.jsonl
echo
# Every record carries the verified sender, the forgery is overwritten,
# and the denied tag never arrived.
[ "$(grep -c '"darkport_identity":"app-1"' records.jsonl)" -eq 2 ] || fail "records are not stamped with app-1"
! grep -q '"admin"' records.jsonl || fail "a forged darkport_identity got through"
! grep -q 'audit.forged' records.jsonl || fail "a denied tag got through"
echo "OK: Fluentd records crossed the Darkport tunnel and the hoster's outbound connection,"
echo "    stamped with the verified identity;"
echo "    the forged identity was overwritten and the denied tag dropped (set KEEP=1 to keep $WORK)"
