#!/usr/bin/env bash
# Runs the whole test suite: installs the third-party Fluentd clients used by
# the interop tests (PyPI fluent-logger, npm fluent-logger), builds the
# binaries (the whole-system tests run them), then `cargo test --workspace`,
# then the whole-system tests again over the TCP transport, and the
# control-plane tests again on the PostgreSQL backend.
# Needs python3 with pip, node with npm, and for the Go client golang-go
# with golang-github-fluent-fluent-logger-golang-dev (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> interop clients"
python3 -m pip install -q --disable-pip-version-check -r tests/interop/python/requirements.txt
(cd tests/interop/node && npm ci --no-audit --no-fund --loglevel=error)
# A real PostgreSQL for the HA tests and the control-plane tests on the
# PostgreSQL backend: the one DARKPORT_TEST_POSTGRES names (.ci/run starts
# one), else one of our own (scripts/postgres.sh), stopped at exit. Without
# PostgreSQL those tests skip loudly (and fail under CI=true).
if [ -z "${DARKPORT_TEST_POSTGRES:-}" ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "==> PostgreSQL for the tests (scripts/postgres.sh)"
    pgdir="$(mktemp -d /tmp/darkport-pg.XXXXXX)"
    chmod 755 "$pgdir"
    trap 'scripts/postgres.sh stop "$pgdir/server" >/dev/null 2>&1 || true; rm -rf "$pgdir"' EXIT
    DARKPORT_TEST_POSTGRES="$(scripts/postgres.sh start "$pgdir/server")"
    export DARKPORT_TEST_POSTGRES
fi
if [ -z "${DARKPORT_TEST_POSTGRES:-}" ]; then
    echo "SKIPPED: no PostgreSQL (apt-get install postgresql): the HA tests and the PostgreSQL phase are skipped" >&2
fi
echo "==> cargo build --workspace --bins (whole-system tests run the real binaries)"
cargo build --workspace --bins
echo "==> cargo test --workspace"
cargo test --workspace "$@"
# The whole-system tests whose clients dial through routers, once more with
# every client on TLS over TCP: everything they check must hold on both
# transports (failover, revocation cuts, renewal, early data, half-close,
# reset, fluent-forward). --workspace (not -p) so cargo reuses the test
# binaries built above instead of building them again with other features.
echo "==> the same whole-system tests over the TCP transport (DARKPORT_TEST_TRANSPORT=tcp)"
DARKPORT_TEST_TRANSPORT=tcp cargo test --workspace \
    --test tunnel --test lifecycle --test control_plane --test hardening \
    --test security --test logs --test operations --test fluent_mode --test fluent_real_peers "$@"
# The control-plane tests once more with every controller on PostgreSQL
# (a fresh database per controller): everything they check must hold on
# both backends.
if [ -n "${DARKPORT_TEST_POSTGRES:-}" ]; then
    echo "==> the control-plane tests on the PostgreSQL backend (DARKPORT_TEST_BACKEND=postgres)"
    DARKPORT_TEST_BACKEND=postgres cargo test --workspace \
        --test control_plane --test lifecycle --test hardening --test security \
        --test abuse "$@"
fi
