#!/usr/bin/env bash
# Prints the path of a promtool, fetching one first if needed:
#
#   promtool=$(deploy/tools/promtool.sh) && "$promtool" test rules ...
#
# From PATH, else Debian's prometheus package, downloaded with apt-get and unpacked
# (not installed: no service, no root needed) under $DEPLOY_TOOLS_DIR/prometheus
# (default <repo>/.stack/deploy-tools). Used by deploy/validate.sh and by the alert-rule
# test in tests/it/deploy_manifests.rs. Debian's build lacks kubernetes_sd;
# tools/check_deploy.py covers that block.
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(cd "$DEPLOY/.." && pwd)
TOOLS_DIR=${DEPLOY_TOOLS_DIR:-$REPO/.stack/deploy-tools}

die() {
    printf '[promtool] error: %s\n' "$*" >&2
    exit 1
}

if command -v promtool >/dev/null; then
    command -v promtool
    exit 0
fi
dir=$TOOLS_DIR/prometheus
if [[ ! -x $dir/usr/bin/promtool ]]; then
    command -v apt-get >/dev/null || die "promtool not found and no apt-get to fetch it"
    printf '[promtool] fetching promtool (Debian package prometheus, unpacked into %s)\n' "$dir" >&2
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) \
        || die "apt-get download prometheus failed (run apt-get update?)"
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/unpacked"
    mkdir -p "$TOOLS_DIR"
    # A concurrent run may have finished first: keep whichever copy landed.
    mv -T "$tmp/unpacked" "$dir" 2>/dev/null || [[ -x $dir/usr/bin/promtool ]] \
        || die "could not move promtool into $dir"
fi
echo "$dir/usr/bin/promtool"
