#!/usr/bin/env bash
# Checks the units with systemd-analyze verify. The units name installed
# binaries (/usr/bin); this points them at BIN_DIR (default target/debug)
# in a temporary copy, so the check runs on a build tree.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin_dir="$(cd "${1:-$here/../../target/debug}" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for unit in "$here"/*.service; do
    sed "s|/usr/bin/|$bin_dir/|" "$unit" > "$tmp/$(basename "$unit")"
done
cd "$tmp"
# verify exits 0 on some parse errors (it ignores the line); any message
# at all is a failure here.
out="$(systemd-analyze verify --man=no "$tmp"/*.service 2>&1)" || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "$out" >&2
    echo "systemd-analyze verify complained about the units (above)" >&2
    exit 1
fi
echo "systemd units verified: $(ls "$here"/*.service | xargs -n1 basename | tr '\n' ' ')"
