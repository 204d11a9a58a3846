#!/usr/bin/env bash
# start.sh ws|socketio PORT: installs the peer's locked dependencies (npm ci) when missing and
# starts its server on 127.0.0.1:PORT in the foreground (run.sh backgrounds it and stops it).
set -euo pipefail
peer=${1:?usage: start.sh ws|socketio PORT}
port=${2:?usage: start.sh ws|socketio PORT}
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$peer"
[ -f "$dir/package.json" ] || { echo "unknown peer: $peer" >&2; exit 2; }
if [ ! -d "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --silent)
fi
cd "$dir"
PORT=$port HOST=127.0.0.1 exec node server.js
