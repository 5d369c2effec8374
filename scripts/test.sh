#!/usr/bin/env bash
# Runs the whole test suite: installs the third-party Fluentd clients used by
# the interop tests (PyPI fluent-logger, npm fluent-logger), builds the
# binaries (the whole-system tests run them), then `cargo test --workspace`,
# then the whole-system tests again over the TCP transport.
# Needs python3 with pip, node with npm, and for the Go client golang-go
# with golang-github-fluent-fluent-logger-golang-dev (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> interop clients"
python3 -m pip install -q --disable-pip-version-check -r tests/interop/python/requirements.txt
(cd tests/interop/node && npm ci --no-audit --no-fund --loglevel=error)
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
    --test security --test logs --test operations --test fluent_mode "$@"
