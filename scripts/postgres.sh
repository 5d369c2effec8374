#!/usr/bin/env bash
# A throwaway PostgreSQL server for the PostgreSQL backend's tests.
#
#   scripts/postgres.sh start DIR   # prints postgres://postgres@127.0.0.1:PORT/postgres
#   scripts/postgres.sh start DIR --ssl CERT KEY   # the same, with TLS on too
#   scripts/postgres.sh stop DIR
#   scripts/postgres.sh restart DIR   # starts a stopped server again, same port
#
# `start` makes DIR (owned by the server's user), runs initdb there with
# trust authentication (local socket and 127.0.0.1 only: a test server, never
# a deployment), picks a free port at run time, starts the server listening
# on 127.0.0.1 with its socket inside DIR, waits until it accepts
# connections and prints its URL on stdout; everything else goes to stderr.
# Run as root, the server runs as the `postgres` user (created with useradd
# --system if missing: initdb refuses root); run as another user, that user
# must be able to own DIR.
#
# `--ssl CERT KEY` (PEM files) copies them into DIR, owned by the server's
# user with mode 0600 (PostgreSQL refuses a key others can read), and starts
# the server with ssl=on; plaintext connections stay allowed, so one server
# serves every sslmode. `restart` keeps TLS on; `start` without --ssl turns
# it off. controller/tests/postgres_tls.rs uses it.
#
#   export DARKPORT_TEST_POSTGRES="$(scripts/postgres.sh start /tmp/pgtest)"
#   cargo test -p darkport-controller --test postgres_backend
#   scripts/postgres.sh stop /tmp/pgtest
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 start DIR [--ssl CERT KEY] | stop DIR | restart DIR"; }
[ $# -ge 2 ] || usage
CMD="$1"
DIR="$2"
shift 2
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac
SSL_CERT=""
SSL_KEY=""
if [ $# -gt 0 ]; then
    { [ "$CMD" = start ] && [ $# -eq 3 ] && [ "$1" = --ssl ]; } || usage
    SSL_CERT="$2"
    SSL_KEY="$3"
    [ -r "$SSL_CERT" ] || die "cannot read the certificate $SSL_CERT"
    [ -r "$SSL_KEY" ] || die "cannot read the key $SSL_KEY"
fi

# Newest installed server (Debian puts them in /usr/lib/postgresql/N/bin).
BIN=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n); do
    [ -x "$d/initdb" ] && BIN="$d"
done
if [ -z "$BIN" ] && command -v initdb >/dev/null; then
    BIN="$(dirname "$(command -v initdb)")"
fi
[ -n "$BIN" ] || die "no PostgreSQL server binaries found (apt-get install postgresql)"

# Who runs the server: root hands it to an unprivileged user.
if [ "$(id -u)" = 0 ]; then
    RUN_USER=postgres
    if ! id "$RUN_USER" >/dev/null 2>&1; then
        log "creating system user $RUN_USER"
        useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
    fi
    as_user() { runuser -u "$RUN_USER" -- "$@"; }
else
    RUN_USER="$(id -un)"
    as_user() { "$@"; }
fi

DATA="$DIR/data"
SOCK="$DIR/socket"
LOG="$DIR/postgres.log"
TLS_CERT="$DIR/server.crt"
TLS_KEY="$DIR/server.key"

# Starts the server in $DATA on $PORT and prints its URL.
serve() {
    local tls=""
    if [ -f "$TLS_CERT" ]; then
        tls=" -c ssl=on -c ssl_cert_file=$TLS_CERT -c ssl_key_file=$TLS_KEY"
        log "starting on 127.0.0.1:$PORT with TLS (log $LOG)"
    else
        log "starting on 127.0.0.1:$PORT (log $LOG)"
    fi
    as_user "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $SOCK -c max_connections=200 -c fsync=off$tls" \
        start >&2 || { tail -20 "$LOG" >&2 || true; die "the server did not start"; }
    for _ in $(seq 1 100); do
        if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
            echo "postgres://postgres@127.0.0.1:$PORT/postgres"
            return 0
        fi
        sleep 0.1
    done
    die "the server did not accept connections within 10 s (log $LOG)"
}

case "$CMD" in
start)
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then chown "$RUN_USER" "$DIR"; fi
    chmod 700 "$DIR"
    # Parent folders must be traversable by the server's user.
    as_user test -w "$DIR" || die "$RUN_USER cannot write to $DIR (its parent folders must be searchable by $RUN_USER)"
    if [ -f "$DATA/postmaster.pid" ] && as_user "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        die "a server is already running in $DIR; stop it first: $0 stop $DIR"
    fi
    if [ ! -f "$DATA/PG_VERSION" ]; then
        log "initdb in $DATA ($BIN)"
        as_user "$BIN/initdb" -D "$DATA" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 >&2 \
            || as_user "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale >&2
        # Trust only the socket and the loopback address.
        as_user sh -c "cat > '$DATA/pg_hba.conf'" <<'EOF'
local   all all              trust
host    all all 127.0.0.1/32 trust
EOF
    fi
    as_user mkdir -p "$SOCK"
    rm -f "$TLS_CERT" "$TLS_KEY"
    if [ -n "$SSL_CERT" ]; then
        install -m 600 "$SSL_CERT" "$TLS_CERT"
        install -m 600 "$SSL_KEY" "$TLS_KEY"
        if [ "$(id -u)" = 0 ]; then chown "$RUN_USER" "$TLS_CERT" "$TLS_KEY"; fi
    fi
    PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    echo "$PORT" > "$DIR/port"
    serve
    ;;
restart)
    [ -f "$DIR/port" ] || die "no server was started in $DIR"
    PORT="$(cat "$DIR/port")"
    serve
    ;;
stop)
    [ -d "$DATA" ] || die "no server data in $DIR"
    as_user "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
    ;;
*) usage ;;
esac
