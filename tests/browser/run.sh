#!/usr/bin/env bash
# Runs the streaming transports in headless Chromium (Debian's chromium) with playwright-core:
# centrifuge-js's browser build over sse and http_stream, and a plain EventSource on uni_sse.
#
#   tests/browser/run.sh [test.mjs ...]
#
# With test files as arguments it runs those instead (tests/admin/run.sh runs the admin console's
# test this way): one runner and one node_modules for every Chromium suite but the map's.
#
# Needs the server binary already built: HERALD_BIN, default <target>/debug/herald where <target>
# is CARGO_TARGET_DIR or <repo>/target. Needs /usr/bin/chromium (or CHROMIUM) and node/npm;
# installs node_modules on first use and again only when package-lock.json changes. The servers'
# logs and the page's console go to <target>/browser-test.log.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
export HERALD_BIN="${HERALD_BIN:-$TARGET/debug/herald}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

log() { printf '[browser-tests] %s\n' "$*" >&2; }

if [ ! -x "$HERALD_BIN" ]; then
    log "Herald binary not found or not executable: $HERALD_BIN"
    log "build it first (cargo build -p herald) or set HERALD_BIN"
    exit 1
fi
if [ ! -x "$CHROMIUM" ]; then
    log "Chromium not found: $CHROMIUM (apt-get install chromium, or set CHROMIUM)"
    exit 1
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "node/npm not found"
    exit 1
fi

want="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)"
have="$(cat "$HERE/node_modules/.herald-lock.sha256" 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    log "installing playwright-core and centrifuge (npm ci)"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error) || { log "npm ci FAILED"; exit 1; }
    echo "$want" > "$HERE/node_modules/.herald-lock.sha256"
fi

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    tests=("$HERE/transports_test.mjs")
fi
log "running ${tests[*]##*/} in $("$CHROMIUM" --version 2>/dev/null | head -n 1)"
if ! (cd "$HERE" && node --test "${tests[@]}"); then
    log "browser test FAILED (server logs and page consoles: $TARGET/*-test.log)"
    exit 1
fi
