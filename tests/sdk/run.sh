#!/usr/bin/env bash
# Runs Herald's SDK compatibility tests: centrifuge-python (pytest) and centrifuge-js (node --test).
#
#   tests/sdk/run.sh [extra pytest args...]
#
# Needs the server binary already built: HERALD_BIN, default <repo>/target/debug/herald.
# Installs what it needs on first use (a venv in tests/sdk/.venv, tests/sdk/js/node_modules) and
# reinstalls only when requirements.txt or package-lock.json change. The JS suite is skipped
# when node/npm are not installed. Exits non-zero if any suite fails.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
export HERALD_BIN="${HERALD_BIN:-$REPO_ROOT/target/debug/herald}"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"

log() { printf '[sdk-tests] %s\n' "$*" >&2; }

if [ ! -x "$HERALD_BIN" ]; then
    log "Herald binary not found or not executable: $HERALD_BIN"
    log "build it first (cargo build -p herald) or set HERALD_BIN"
    exit 1
fi

hash_of() { sha256sum "$1" | cut -d' ' -f1; }

# --- Python: venv + requirements -----------------------------------------------------------------
setup_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating venv $VENV"
        "$PYTHON" -m venv "$VENV" || return 1
    fi
    local want have
    want="$(hash_of "$HERE/requirements.txt")"
    have="$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)"
    if [ "$want" != "$have" ]; then
        log "installing Python requirements"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt" \
            || return 1
        echo "$want" > "$VENV/.requirements.sha256"
    fi
}

# --- JS: npm ci ----------------------------------------------------------------------------------
setup_js() {
    local want have
    want="$(hash_of "$HERE/js/package-lock.json")"
    have="$(cat "$HERE/js/node_modules/.herald-lock.sha256" 2>/dev/null || true)"
    if [ "$want" != "$have" ]; then
        log "installing JS dependencies (npm ci)"
        (cd "$HERE/js" && npm ci --no-audit --no-fund --loglevel=error) || return 1
        echo "$want" > "$HERE/js/node_modules/.herald-lock.sha256"
    fi
}

status=0

if setup_python; then
    log "running centrifuge-python suite"
    (cd "$HERE" && "$VENV/bin/python" -m pytest -q "$@") || status=1
else
    log "FAILED to set up the Python environment"
    status=1
fi

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    if setup_js; then
        log "running centrifuge-js suite"
        (cd "$HERE/js" && node --test ./*_test.mjs) || status=1
    else
        log "FAILED to install JS dependencies"
        status=1
    fi
else
    log "node/npm not found: skipping the centrifuge-js suite"
fi

if [ "$status" -ne 0 ]; then
    log "SDK compatibility tests FAILED"
fi
exit "$status"
