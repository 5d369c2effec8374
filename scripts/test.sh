#!/usr/bin/env bash
# Runs the whole test suite: installs the third-party Fluentd clients used by
# the interop tests (PyPI fluent-logger, npm fluent-logger), builds the
# binaries (the whole-system tests run them), then `cargo test --workspace`.
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
