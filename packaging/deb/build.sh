#!/usr/bin/env bash
# Builds the darkport .deb (target/debian/darkport_VERSION-1_ARCH.deb) with
# cargo-deb: the three binaries, their units, the darkport user, default
# configs, man pages and shell completions (made by the binaries
# themselves from their command-line definitions).
#
#   packaging/deb/build.sh            # release build
#   DARKPORT_DEB_PROFILE=dev packaging/deb/build.sh   # CI: reuse the debug build
#
# Needs cargo-deb (cargo install cargo-deb --locked).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile="${DARKPORT_DEB_PROFILE:-release}"
case "$profile" in
    dev) dir=target/debug ;;
    *) dir="target/$profile" ;;
esac
command -v cargo-deb >/dev/null || {
    echo "cargo-deb is not installed: cargo install cargo-deb --locked" >&2
    exit 1
}
cargo build --profile "$profile" -p darkport-controller -p darkport-edge-router -p edge-client --bins
rm -rf packaging/deb/assets
for bin in darkport-controller darkport-edge-router darkport-edge-client; do
    "$dir/$bin" generate-assets packaging/deb/assets
done
cargo deb -p darkport-controller --no-build --profile "$profile" --output target/debian/
