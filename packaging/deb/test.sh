#!/usr/bin/env bash
# Installs the newest target/debian/darkport_*.deb with dpkg -i (as root)
# and checks what it installed: binaries, units (systemd-analyze verify),
# the darkport user and state dir, configs that parse, man pages and
# completions; then installs it again (the upgrade path) and removes it.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "packaging/deb/test.sh installs a package: run it as root" >&2; exit 1; }
deb="$(ls -t target/debian/darkport_*.deb 2>/dev/null | head -1)"
[ -n "$deb" ] || { echo "no target/debian/darkport_*.deb: run packaging/deb/build.sh first" >&2; exit 1; }
fail() { echo "package test: $*" >&2; exit 1; }

dpkg -i "$deb"
trap 'dpkg -r darkport >/dev/null 2>&1 || true' EXIT
for bin in darkport-controller darkport-edge-router darkport-edge-client; do
    [ -x "/usr/bin/$bin" ] || fail "/usr/bin/$bin missing"
    "/usr/bin/$bin" --version >/dev/null || fail "$bin --version"
    ls /usr/share/man/man1/"$bin".1* >/dev/null 2>&1 || fail "no man page for $bin"
    [ -s "/usr/share/bash-completion/completions/$bin" ] || fail "no bash completion for $bin"
    [ -s "/usr/share/zsh/vendor-completions/_$bin" ] || fail "no zsh completion for $bin"
    [ -s "/usr/share/fish/vendor_completions.d/$bin.fish" ] || fail "no fish completion for $bin"
    unit="/lib/systemd/system/$bin.service"
    [ -f "$unit" ] || fail "$unit missing"
    name="${bin#darkport-}"
    [ -f "/etc/darkport/$name.toml" ] || fail "/etc/darkport/$name.toml missing"
done
[ -f /lib/systemd/system/darkport-edge-client-host.service ] || fail "the hoster's unit is missing"
[ -f /etc/darkport/edge-client-host.toml ] || fail "/etc/darkport/edge-client-host.toml missing"
ls /usr/share/man/man1/darkport-controller-identity-create.1* >/dev/null 2>&1 \
    || fail "no man page for a subcommand"
getent passwd darkport >/dev/null || fail "no darkport user"
[ "$(stat -c '%a %U' /var/lib/darkport)" = "700 darkport" ] || fail "/var/lib/darkport is not 0700 darkport"
# The installed units verify; any message at all is a failure.
out="$(systemd-analyze verify --man=no /lib/systemd/system/darkport-*.service 2>&1)" \
    || fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify: $out"
# The installed configs parse: each run stops at the identity or data dir,
# which do not exist yet, not at the config.
check_config() {
    local bin="$1"; shift
    local err
    if err="$("/usr/bin/$bin" run --config "/etc/darkport/${bin#darkport-}.toml" "$@" 2>&1)"; then
        fail "$bin started with no identity"
    fi
    case "$err" in
        *"config file"*) fail "$bin refused its installed config: $err" ;;
        *"/nonexistent/"*) ;;
        *) fail "$bin: unexpected error: $err" ;;
    esac
}
check_config darkport-controller --data-dir /nonexistent/ctl --listen 127.0.0.1:0
check_config darkport-edge-router --identity /nonexistent/router.id --listen 127.0.0.1:0
check_config darkport-edge-client --identity /nonexistent/client.id
# Installing again (an upgrade) keeps the user and the configs.
dpkg -i "$deb" >/dev/null
getent passwd darkport >/dev/null || fail "the darkport user went away on reinstall"
dpkg -r darkport >/dev/null
[ ! -e /usr/bin/darkport-controller ] || fail "dpkg -r left the binaries"
[ -d /var/lib/darkport ] || fail "dpkg -r deleted /var/lib/darkport (it must keep the CA)"
trap - EXIT
echo "package test passed: $(basename "$deb") installs, verifies and removes"
