#!/usr/bin/env bash
# Sets up what the test suite needs on this machine, installing or starting only what is missing:
# python3 (venv), node/npm, curl, chromium, nginx, php with curl, promtool, PostgreSQL (127.0.0.1:5432, trust,
# database `test`), Redis on 6379 (and its binaries for the Redis Cluster tests), NATS with
# JetStream on 4222. Debian packages; needs root (or sudo) for what is missing. scripts/test.sh
# runs it first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
else
    SUDO=
fi

apt_updated=0
need_apt() {
    # need_apt COMMAND PACKAGE...: installs the packages when COMMAND is missing.
    local cmd=$1; shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [ "$apt_updated" = 0 ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

need_apt python3 python3 python3-venv python3-pip
need_apt node nodejs npm
need_apt curl curl
# The map test drives Debian's Chromium headless (tests/map).
need_apt chromium chromium
# tests/nodes.rs runs the documented nginx configuration in front of two nodes.
need_apt nginx nginx-light
# tests/monitoring.rs checks deploy/prometheus with promtool (Debian's prometheus package).
need_apt promtool prometheus
# docs_examples runs the PHP snippets of docs/api.md; make sure php with its curl extension is there.
if ! php -m 2>/dev/null | grep -qix curl; then
    need_apt __php_with_curl__ php-cli php-curl
fi
# The SDK suite builds a venv; Debian's python3 needs python3-venv for that.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need_apt __python_venv__ python3-venv
fi

# PostgreSQL for herald-store's tests (127.0.0.1:5432, trust auth for local TCP). Start it when it
# is installed but stopped; install and configure it on a machine that lacks it.
ensure_postgres() {
    pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && return 0
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        need_apt __postgresql__ postgresql
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    if ! grep -q "herald-ci" "$hba" 2>/dev/null; then
        # Tests connect over TCP as user postgres without a password, as on the project's machines.
        $SUDO sed -i '1i host all all 127.0.0.1/32 trust # herald-ci' "$hba"
    fi
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && break
        sleep 1
    done
    pg_isready -h 127.0.0.1 -p 5432
    psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
        || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test"
}
ensure_postgres

port_open() {
    # port_open PORT: whether something listens on 127.0.0.1:PORT.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_port() {
    for _ in $(seq 1 30); do
        port_open "$1" && return 0
        sleep 1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

ensure_redis() {
    # The Redis broker tests and the Redis feed tests use 127.0.0.1:6379 (nothing kept on disk).
    port_open 6379 && return 0
    need_apt redis-server redis-server
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /tmp --logfile /tmp/herald-ci-redis.log
    wait_port 6379
}
ensure_redis
# tests/cluster.rs and cluster_redis_sharded.rs start Redis Clusters of their own: they need the binaries even
# where 6379 is served by something else.
need_apt redis-server redis-server
need_apt redis-cli redis-tools

ensure_nats() {
    # The NATS broker and feed tests use 127.0.0.1:4222 with JetStream (presence buckets).
    port_open 4222 && return 0
    need_apt nats-server nats-server
    mkdir -p /tmp/herald-ci-nats
    start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
        -a 127.0.0.1 -p 4222 -js -sd /tmp/herald-ci-nats -l /tmp/herald-ci-nats.log
    wait_port 4222
}
ensure_nats

