#!/usr/bin/env bash
# bench/run.sh SCENARIO: reproduces one of Herald's benchmark figures on this machine.
#
#   idle       N idle connections (default 1,000,000) on a group of Herald nodes sharing one port
#              (SO_REUSEPORT); process and kernel memory per connection, CPU at rest
#   broadcast  one channel, SUBS subscribers, a sweep of publication rates (Herald)
#   peers      the same sweep against the Node.js `ws` and `socket.io` peers (bench/peers/)
#   sweep      Herald's broadcast sweep, then the floor's at the same rates (latency at each load)
#   chat       ROOMS rooms of MEMBERS members, every member publishes every INTERVAL
#   market     1,000 symbols, each client on 20, conflated 100 ms windows
#   livemap    GT06 trackers over TCP, viewers of the fleet channel, positions into PostgreSQL
#   cluster    the broadcast across NODES nodes linked by each of BROKERS (redis, redis_cluster,
#              nats; or CLUSTER_CONFIG: a TOML fragment with the [broker] section)
#   cores      deliveries per core used: CORES_NODES (3) nodes linked by Redis and by NATS (the
#              broker's process counted with them) against one node on the embedded broker, one
#              saturating step at CORES_SUBS subscribers, ROUNDS alternating runs; prints the ratios
#   floor      Herald against the floor (bench/peers/floor: the cheapest broadcast server) at 1,000,
#              5,000 and 15,000 subscribers (FLOOR_SUBS), published through the API and by a client
#              on a WebSocket (VIA), ROUNDS alternating runs each; prints the ratios. COMPETE=1 runs
#              it again beside a process that keeps one core busy
#   instructions  instructions per delivery of Herald and of the floor under callgrind (repeatable,
#              not disturbed by other load): the difference of a short and a long run, API and
#              client publishing (VIA), CG_SUBS subscribers; prints the ratios
#   formats    Herald's broadcast with JSON subscribers against Protobuf ones, ROUNDS alternating runs
#   pusher     one saturating broadcast over Herald's Centrifugo protocol, over its Pusher protocol
#              (/app/<key>) and to Sockudo (a Rust Pusher server, SOCKUDO_VERSION 5.2.0; skipped
#              with a message when not installed, SOCKUDO_INSTALL=1 installs it), alternating,
#              ROUNDS rounds at 5,000 and 15,000 subscribers (PUSHER_SUBS), published by a client
#              on a WebSocket (Pusher: client events on a private- channel), VIA client (Herald's
#              Centrifugo publisher paced by its own echo) and watched (every publisher paced by
#              another subscriber's receipts); VIA=api: through the server APIs;
#              memory per idle subscribed connection; results and summary in $OUT/pusher/
#   capacity   memory per connection, per subscription and per channel with history on one node
#              (CAP_CONNS clients three times, SUBS_PER 50 channels each, HIST_CHANNELS × HIST_SIZE retained)
#   hostile    60 s soak: hostile clients of every kind and 5,000 honest subscribers on one node
#              with production defaults; fails on any honest loss or disconnect
#   all        every scenario above, in that order
#   smoke      every scenario with tiny numbers (seconds each): checks that the suite still runs
#
# PERF=SECONDS with broadcast or floor samples the server with perf (see profile below).
# Knobs are environment variables (defaults below). Results go to $OUT (default docs/bench/results)
# as <scenario>[-<target>].json; `python3 bench/plot.py` turns them into the SVG plots of
# docs/benchmarks.md. Every run is bounded in time and count, and stops the servers it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

scenario=${1:-}
[ -n "$scenario" ] || { sed -n '2,38p' "$0"; exit 2; }

SMOKE=${SMOKE:-0}
[ "$scenario" = smoke ] && SMOKE=1
PROFILE=${PROFILE:-release}
OUT=${OUT:-$ROOT/docs/bench/results}
SMOKE_TMP=
if [ "$SMOKE" = 1 ] && [ -z "${SMOKE_OUT:-}" ]; then
    SMOKE_TMP=$(mktemp -d /tmp/herald-bench-smoke.XXXXXX) # smoke results are checks, not figures
fi
[ "$SMOKE" = 1 ] && OUT=${SMOKE_OUT:-$SMOKE_TMP}
PORT=${PORT:-18000}
SECRET=bench-secret
API_KEY=bench-key
mkdir -p "$OUT"

if [ -n "${BIN:-}" ]; then
    : # prebuilt binaries (herald, herald-bench) in BIN, e.g. to compare two builds
elif [ "$PROFILE" = release ]; then
    cargo build --release -q -p herald -p herald-bench -p herald-floor
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
else
    cargo build -q -p herald -p herald-bench -p herald-floor
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
fi
WORK=$(mktemp -d /tmp/herald-bench.XXXXXX)
PIDS=()

# SERVER_CPUS / BENCH_CPUS (e.g. 0 and 1): pin the servers and the load generator to those CPUs
# (taskset), so they stop preempting each other; tokio then starts one worker per CPU it may use.
SERVER_ON=()
BENCH_ON=()
[ -n "${SERVER_CPUS:-}" ] && SERVER_ON=(taskset -c "$SERVER_CPUS")
[ -n "${BENCH_CPUS:-}" ] && BENCH_ON=(taskset -c "$BENCH_CPUS")

cleanup() {
    # Only the processes this script started, by pid.
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
    [ -n "${DB:-}" ] && psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    DB=
}
trap 'cleanup; [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK" ${SMOKE_TMP:+"$SMOKE_TMP"}' EXIT

# Herald's configuration for every scenario: namespaces for chat, market data and the live map.
write_config() { # write_config FILE LISTEN [EXTRA_TOML_FILE] [plain: no namespaces]
    cat >"$1" <<EOF
[http]
listen = "$2"
reuse_port = true
shutdown_timeout = "2s"
[log]
level = "warn"
[client]
max_connections = 1000000
# A live-map window holds up to one position per device (10,000 × ~300 B); it must fit an outbox.
max_outbox_bytes = 8388608
# The client-publish broadcast's one publisher sends thousands of commands a second.
command_rate = 1000000
command_burst = 1000000
[client.token]
hmac_secret = "$SECRET"
[api]
key = "$API_KEY"
[channel.without_namespace]
allow_subscribe_for_client = true
# The client-publish broadcast: the publisher is a subscriber of the channel.
allow_publish_for_subscriber = true
EOF
    [ "${4:-}" = plain ] || cat >>"$1" <<EOF
[[channel.namespaces]]
name = "chat"
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
[[channel.namespaces]]
name = "md"
allow_subscribe_for_client = true
history_size = 10
history_ttl = "1m"
batch_window = "100ms"
conflation_key = "/s"
[[channel.namespaces]]
name = "devices"
allow_subscribe_for_client = true
history_size = 1000
history_ttl = "1m"
batch_window = "1s"
conflation_key = "/device"
# Large enough for one position of each of 10,000 devices, so a window is not delivered early.
window_max_bytes = 4194304
EOF
    if [ -n "${3:-}" ]; then cat "$3" >>"$1"; fi
}

wait_http() { # wait_http ADDR [PATH]: until GET PATH (/health) answers 200 (30 s at most)
    for _ in $(seq 1 300); do
        curl -sf "http://$1${2:-/health}" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "nothing answers on $1" >&2
    return 1
}

NODE_PIDS=()
WRAP=() # a command the servers run under (the instructions scenario: valgrind)
start_nodes() { # start_nodes COUNT CONFIG: COUNT herald processes sharing the config's port
    local n
    NODE_PIDS=()
    for n in $(seq 1 "$1"); do
        # The hard limit here is 20,000 descriptors per process: one node holds ~19,000 clients.
        (ulimit -n 20000 2>/dev/null || true; exec "${SERVER_ON[@]}" "${WRAP[@]}" "$BIN/herald" serve --config "$2" \
            --set "node.name=bench-$n") >>"$WORK/herald.log" 2>&1 &
        PIDS+=($!)
        NODE_PIDS+=($!)
    done
}

node_pids_csv() { local IFS=,; echo "${NODE_PIDS[*]}"; }

bench() { "${BENCH_ON[@]}" "$BIN/herald-bench" "$@"; }

# PERF=SECONDS: sample the server with perf for that long, PERF_DELAY seconds after the start
# (after the ramp, inside a step), and write the hottest symbols to $OUT/perf-<name>.txt and its
# CPU time, context switches and migrations in that window to $OUT/perf-<name>-stat.txt. The
# software clock, since virtual machines often have no hardware counters.
profile() { # profile PID NAME
    command -v perf >/dev/null || { echo "perf is not installed" >&2; return 0; }
    # The system calls that write and read sockets too, where the kernel has their tracepoints:
    # how many deliveries one write carries.
    local events=task-clock,context-switches,cpu-migrations
    [ -n "$(perf list 2>/dev/null | grep 'syscalls:sys_enter_sendto')" ] &&
        events+=,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait
    (sleep "${PERF_DELAY:-5}"
     perf stat -e "$events" -p "$1" -o "$OUT/perf-$2-stat.txt" \
        -- sleep "$PERF" >/dev/null 2>&1 &
     perf record -q -e cpu-clock -F 499 -g -p "$1" -o "$WORK/perf-$2.data" -- sleep "$PERF" >/dev/null 2>&1 &&
     perf report -i "$WORK/perf-$2.data" --stdio --no-children -g none --percent-limit 0.7 2>/dev/null \
        | grep -v '^$' | head -n 150 >"$OUT/perf-$2.txt"
     wait) &
    PROFILER=$!
}
PROFILER=
wait_profiler() { # symbolising takes a while; the work directory must outlive it
    if [ -n "$PROFILER" ]; then wait "$PROFILER" || true; PROFILER=; fi
}

pick() { [ "$SMOKE" = 1 ] && echo "$2" || echo "$1"; } # pick FULL SMOKE

run_idle() {
    local n=${N:-$(pick 1000000 300)} per_node=${PER_NODE:-17000}
    local nodes=${IDLE_NODES:-$(( (n + per_node - 1) / per_node ))}
    write_config "$WORK/idle.toml" "127.0.0.1:$PORT"
    start_nodes "$nodes" "$WORK/idle.toml"
    wait_http "127.0.0.1:$PORT"
    # Every node must listen before the ramp: SO_REUSEPORT spreads connections only over the
    # listeners present, and a node holds at most ~19,000 (its descriptor limit).
    for _ in $(seq 1 600); do
        [ "$(ss -Hltn "sport = :$PORT" | wc -l)" -ge "$nodes" ] && break
        sleep 0.1
    done
    echo "$(ss -Hltn "sport = :$PORT" | wc -l) of $nodes nodes listening on $PORT"
    bench idle --server "127.0.0.1:$PORT" --server-pid "$(node_pids_csv)" \
        --connections "$n" --hold "${HOLD:-$(pick 30s 2s)}" \
        --ramp-concurrency "${CONCURRENCY:-$(pick 2000 20)}" --per-process "${PER_PROC:-19000}" \
        --json "$OUT/idle.json"
    cleanup
}

run_capacity() {
    local size=${HIST_SIZE:-$(pick 100 5)}
    printf '[[channel.namespaces]]\nname = "capacity"\nhistory_size = %s\nhistory_ttl = "1h"\n' \
        "$size" >"$WORK/capacity-extra.toml"
    write_config "$WORK/c.toml" "127.0.0.1:$PORT" "$WORK/capacity-extra.toml" plain
    start_nodes 1 "$WORK/c.toml"
    wait_http "127.0.0.1:$PORT"
    bench capacity --server "127.0.0.1:$PORT" --server-pid "$(node_pids_csv)" \
        --connections "${CAP_CONNS:-$(pick 5000 50)}" --subscriptions "${SUBS_PER:-$(pick 50 5)}" \
        --channels "${CAP_CHANNELS:-$(pick 1000 20)}" --history-channels "${HIST_CHANNELS:-$(pick 1000 10)}" \
        --history-size "$size" --payload 100 --settle "$(pick 3s 1s)" \
        --ramp-concurrency "${CONCURRENCY:-$(pick 50 10)}" --json "$OUT/capacity.json"
    cleanup
}

broadcast_rates() { echo "${RATES:-$(pick 250,500,1000,1500,2000,2500,3000,4000 50,100)}"; }

run_broadcast() { # run_broadcast [OUTNAME]
    write_config "$WORK/b.toml" "127.0.0.1:$PORT"
    start_nodes 1 "$WORK/b.toml"
    wait_http "127.0.0.1:$PORT"
    [ -n "${PERF:-}" ] && profile "${NODE_PIDS[0]}" broadcast
    bench broadcast --server "127.0.0.1:$PORT" --server-pid "$(node_pids_csv)" \
        --subscribers "${SUBS:-$(pick 1000 20)}" \
        --rate "$(broadcast_rates)" \
        --batch "${BATCH:-$(pick 20 10)}" --payload 100 --duration "${DURATION:-$(pick 5s 1s)}" \
        --json "$OUT/${1:-broadcast}-herald.json"
    wait_profiler
    cleanup
}

run_peer() { # run_peer ws|socketio|floor
    local peer=$1 port=$((PORT + 100))
    if [ "$peer" = floor ]; then
        PORT=$port "${SERVER_ON[@]}" "$BIN/herald-floor" >>"$WORK/floor.log" 2>&1 &
    else
        "${SERVER_ON[@]}" bash "$ROOT/bench/peers/start.sh" "$peer" "$port" >>"$WORK/$peer.log" 2>&1 &
    fi
    PIDS+=($!)
    wait_http "127.0.0.1:$port"
    # start.sh execs node, so the pid is the server's.
    bench broadcast --target "$peer" --server "127.0.0.1:$port" --server-pid "${PIDS[-1]}" \
        --subscribers "${SUBS:-$(pick 1000 20)}" \
        --rate "${PEER_RATES:-$(pick 25,50,100,150,200,300,400 50,100)}" \
        --batch "${BATCH:-$(pick 20 10)}" --payload 100 --duration "${DURATION:-$(pick 5s 1s)}" \
        --json "$OUT/broadcast-$peer.json"
    cleanup
}

run_chat() {
    write_config "$WORK/c.toml" "127.0.0.1:$PORT"
    start_nodes 1 "$WORK/c.toml"
    wait_http "127.0.0.1:$PORT"
    bench chat --server "127.0.0.1:$PORT" --server-pid "$(node_pids_csv)" \
        --rooms "${ROOMS:-$(pick 500 4)}" --members "${MEMBERS:-$(pick 20 5)}" \
        --interval "${INTERVAL:-$(pick 2s 500ms)}" --duration "${DURATION:-$(pick 10s 2s)}" \
        --json "$OUT/chat.json"
    cleanup
}

run_market() {
    write_config "$WORK/m.toml" "127.0.0.1:$PORT"
    start_nodes 1 "$WORK/m.toml"
    wait_http "127.0.0.1:$PORT"
    bench market --server "127.0.0.1:$PORT" --server-pid "$(node_pids_csv)" \
        --symbols 1000 --clients "${CLIENTS:-$(pick 2000 20)}" --per-client 20 \
        --rate "${TICKS:-$(pick 50000 1000)}" --batch 100 --duration "${DURATION:-$(pick 10s 2s)}" \
        --json "$OUT/market.json"
    cleanup
}

run_livemap() {
    pg_isready -q -h 127.0.0.1 -p 5432 || { echo "livemap needs PostgreSQL on 127.0.0.1:5432" >&2; return 1; }
    DB="herald_bench_$$_$(date +%s)"
    psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $DB" >/dev/null
    local gt06=$((PORT + 23))
    cat >"$WORK/devices.toml" <<EOF
[devices]
enabled = true
spool_dir = "$WORK/spool"
store = "postgres://postgres@127.0.0.1:5432/$DB"
[devices.listen]
gt06 = "127.0.0.1:$gt06"
h02 = ""
teltonika = ""
osmand = ""
jsonl = ""
EOF
    write_config "$WORK/l.toml" "127.0.0.1:$PORT" "$WORK/devices.toml"
    start_nodes 1 "$WORK/l.toml"
    wait_http "127.0.0.1:$PORT"
    bench livemap --server "127.0.0.1:$PORT" --server-pid "$(node_pids_csv)" --gt06 "127.0.0.1:$gt06" \
        --devices "${DEVICES:-$(pick 10000 20)}" --interval "${DEVICE_INTERVAL:-$(pick 200ms 500ms)}" \
        --viewers "${VIEWERS:-$(pick 100 3)}" --duration "${DURATION:-$(pick 15s 3s)}" \
        --json "$OUT/livemap.json"
    # The rows themselves, counted in the database (the JSON has the writer's own count too).
    local rows
    rows=$(psql -h 127.0.0.1 -U postgres -d "$DB" -tAc "SELECT count(*) FROM positions")
    jq --argjson rows "$rows" '. + {positions_rows_in_postgres: $rows}' "$OUT/livemap.json" >"$WORK/l.json"
    mv "$WORK/l.json" "$OUT/livemap.json"
    echo "rows in PostgreSQL: $rows"
    cleanup
}

run_hostile() {
    # Production defaults (no raised limits), history on the honest channels, a channel with a big
    # history for the amplifiers, and the device listeners (DEVICES_ON=0 leaves them out).
    local gt06=$((PORT + 23)) h02=$((PORT + 13)) teltonika=$((PORT + 27)) osmand=$((PORT + 55))
    local jsonl=$((PORT + 99)) device_args=()
    cat >"$WORK/hostile.toml" <<EOF
[http]
listen = "127.0.0.1:$PORT"
shutdown_timeout = "2s"
[log]
level = "warn"
[client.token]
hmac_secret = "$SECRET"
[api]
key = "$API_KEY"
[[channel.namespaces]]
name = "live"
allow_subscribe_for_client = true
history_size = 100
history_ttl = "5m"
[[channel.namespaces]]
name = "big"
allow_subscribe_for_client = true
allow_history_for_client = true
history_size = 1000
history_ttl = "10m"
EOF
    if [ "${DEVICES_ON:-1}" = 1 ]; then
        cat >>"$WORK/hostile.toml" <<EOF
[devices]
enabled = true
spool_dir = "$WORK/spool"
store = "sqlite:$WORK/positions.db"
[devices.listen]
gt06 = "127.0.0.1:$gt06"
h02 = "127.0.0.1:$h02"
teltonika = "127.0.0.1:$teltonika"
osmand = "127.0.0.1:$osmand"
jsonl = "127.0.0.1:$jsonl"
EOF
        device_args=(--device-tcp "127.0.0.1:$gt06,127.0.0.1:$h02,127.0.0.1:$teltonika,127.0.0.1:$jsonl"
                     --osmand "127.0.0.1:$osmand")
    fi
    start_nodes 1 "$WORK/hostile.toml"
    wait_http "127.0.0.1:$PORT"
    local status=0
    bench hostile --server "127.0.0.1:$PORT" --server-pid "$(node_pids_csv)" \
        --subscribers "${SUBS:-$(pick 5000 200)}" --busy-subscribers "${BUSY_SUBS:-$(pick 50 10)}" \
        --rate "${RATE:-$(pick 500 200)}" --duration "${DURATION:-$(pick 60s 5s)}" \
        --hostile-scale "${SCALE:-$(pick 1 0.05)}" --bomb-commands "$(pick 100000 5000)" \
        --oversize-bytes "$(pick 2000000 200000)" --victims "$(pick 10 2)" "${device_args[@]}" \
        ${SKIP:+--skip "$SKIP"} \
        --json "$OUT/hostile.json" || status=$?
    cleanup
    return "$status"
}

# A Redis Cluster of 3 primaries on PORT+300.. (bus ports +10000), for BROKER=redis_cluster.
start_redis_cluster() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
        { echo "redis_cluster needs redis-server and redis-cli" >&2; return 1; }
    local addrs=() p
    for i in 0 1 2; do
        p=$((PORT + 300 + i))
        mkdir -p "$WORK/rc$p"
        redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --dir "$WORK/rc$p" \
            --cluster-config-file nodes.conf --save '' --appendonly no >>"$WORK/redis-cluster.log" 2>&1 &
        PIDS+=($!)
        addrs+=("127.0.0.1:$p")
    done
    for a in "${addrs[@]}"; do
        for _ in $(seq 1 100); do redis-cli -u "redis://$a" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-yes >>"$WORK/redis-cluster.log" 2>&1
    for a in "${addrs[@]}"; do
        for _ in $(seq 1 100); do
            redis-cli -u "redis://$a" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
            sleep 0.1
        done
    done
    CLUSTER_ADDRS=$(printf '"redis://%s", ' "${addrs[@]}")
}

broker_config() { # broker_config KIND FILE: the [broker] section for one cluster run
    local prefix="bench-$$-$(date +%s%N)"
    case "$1" in
        memory) printf '[broker]\nkind = "memory"\n' ;;
        redis) printf '[broker]\nkind = "redis"\nprefix = "%s"\n' "$prefix" ;;
        redis_cluster)
            start_redis_cluster
            printf '[broker]\nkind = "redis_cluster"\nprefix = "%s"\nredis_addresses = [%s]\n' \
                "$prefix" "${CLUSTER_ADDRS%, }" ;;
        nats) printf '[broker]\nkind = "nats"\nprefix = "%s"\n' "$prefix" ;;
        *) echo "unknown broker: $1" >&2; return 1 ;;
    esac >"$2"
}

CLUSTER_SERVERS=() CLUSTER_PIDS=
start_cluster() { # start_cluster BROKER NODES: NODES nodes linked by BROKER, ready
    # Nodes on consecutive ports linked by BROKER (or with CLUSTER_CONFIG, a TOML fragment,
    # appended instead); sets CLUSTER_SERVERS (--server arguments) and CLUSTER_PIDS (csv).
    local broker=$1 nodes=$2 pids=() fragment="$WORK/broker.toml" n
    CLUSTER_SERVERS=()
    if [ -n "${CLUSTER_CONFIG:-}" ]; then
        cp "$CLUSTER_CONFIG" "$fragment"
    else
        broker_config "$broker" "$fragment"
    fi
    for n in $(seq 1 "$nodes"); do
        local port=$((PORT + 200 + n))
        # Only the broadcast channel: no namespaces (the NATS broker refuses conflation).
        write_config "$WORK/n$n.toml" "127.0.0.1:$port" "$fragment" plain
        start_nodes 1 "$WORK/n$n.toml"
        pids+=("${NODE_PIDS[@]}")
        CLUSTER_SERVERS+=(--server "127.0.0.1:$port")
    done
    # Ready, not only alive: connected to the broker.
    for n in $(seq 1 "$nodes"); do wait_http "127.0.0.1:$((PORT + 200 + n))" /ready; done
    CLUSTER_PIDS=$(IFS=,; echo "${pids[*]}")
}

run_cluster() { # run_cluster BROKER
    # Subscribers are spread round-robin; the publisher talks to the first node, so 1 - 1/NODES
    # of the deliveries cross the broker. With the memory broker only the first node's
    # subscribers receive anything: a harness check only.
    local broker=$1
    start_cluster "$broker" "${NODES:-$(pick 3 2)}"
    bench broadcast "${CLUSTER_SERVERS[@]}" --server-pid "$CLUSTER_PIDS" --subscribers "${SUBS:-$(pick 3000 20)}" \
        --rate "${RATES:-$(pick 250,500,1000,1500,2000 50)}" --batch "${BATCH:-$(pick 20 10)}" \
        --duration "${DURATION:-$(pick 5s 1s)}" --drain "$(pick 3s 1s)" \
        --json "$OUT/cluster-${CLUSTER_NAME:-$broker}.json"
    cleanup
}

broker_pid() { # broker_pid redis|nats: the pid of the broker this machine runs on its standard port
    local port
    case "$1" in redis) port=6379 ;; nats) port=4222 ;; *) return 1 ;; esac
    ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}

cores_step() { # cores_step one|redis|nats SUBS ROUND: one saturating broadcast, its JSON
    # "one": a single node on the embedded broker. Otherwise CORES_NODES nodes linked by the
    # broker, whose process's CPU counts with theirs: a cluster's cores include its broker's.
    local setup=$1 subs=$2 round=$3 pids
    if [ "$setup" = one ]; then
        start_cluster memory 1
        pids=$CLUSTER_PIDS
    else
        start_cluster "$setup" "${CORES_NODES:-$(pick 3 2)}"
        local broker; broker=$(broker_pid "$setup" || true)
        pids="$CLUSTER_PIDS${broker:+,$broker}"
    fi
    saturating_broadcast "$subs" "$OUT/cores-$setup-$subs-$round.json" \
        "${CLUSTER_SERVERS[@]}" --server-pid "$pids"
    cleanup
}

run_cores() { # cluster against one node, per core used: alternating, ROUNDS times
    local subs round setup
    for subs in ${CORES_SUBS:-$(pick "5000" "20")}; do
        for round in $(seq 1 "${ROUNDS:-$(pick 3 1)}"); do
            for setup in one ${CORES_BROKERS:-redis nats}; do cores_step "$setup" "$subs" "$round"; done
        done
    done
    for setup in ${CORES_BROKERS:-redis nats}; do
        python3 "$ROOT/bench/ratios.py" "$OUT" cores "$setup" one "cores-$setup-ratios.json"
    done
}

# One saturating broadcast step: about 3M deliveries/s offered (more than either server delivers).
saturating_rate() { echo $(( ${OFFERED:-3000000} / $1 )); }

saturating_broadcast() { # saturating_broadcast SUBS JSON [herald-bench args]: one such step
    local subs=$1 json=$2
    shift 2
    bench broadcast "$@" --subscribers "$subs" --rate "$(saturating_rate "$subs")" \
        --batch "${BATCH:-$(pick 20 10)}" --payload 100 --duration "${DURATION:-$(pick 5s 1s)}" \
        --json "$json"
}

# COMPETE=1: a competing CPU load (one busy process, as another service on the box) while
# servers are measured; stopped with the run.
start_competitor() {
    [ "${COMPETE:-0}" = 1 ] || return 0
    (trap 'exit 0' TERM; while :; do :; done) &
    PIDS+=($!)
}

TARGET_PORT= TARGET_PID=
start_target() { # start_target herald|floor: one plain Herald node or the floor, under WRAP
    if [ "$1" = herald ]; then
        TARGET_PORT=$PORT
        write_config "$WORK/target.toml" "127.0.0.1:$PORT" "" plain
        start_nodes 1 "$WORK/target.toml"
        TARGET_PID=$(node_pids_csv)
    else
        TARGET_PORT=$((PORT + 300))
        PORT=$TARGET_PORT "${SERVER_ON[@]}" "${WRAP[@]}" "$BIN/herald-floor" >>"$WORK/floor.log" 2>&1 &
        PIDS+=($!)
        TARGET_PID=${PIDS[-1]}
    fi
}

floor_step() { # floor_step herald|floor SUBS VIA ROUND: one saturating broadcast, its JSON
    local target=$1 subs=$2 via=$3 round=$4
    local name="$(floor_prefix "$via")-$target-$subs-$round"
    start_target "$target"
    wait_http "127.0.0.1:$TARGET_PORT"
    start_competitor
    [ -n "${PERF:-}" ] && profile "$TARGET_PID" "$name"
    saturating_broadcast "$subs" "$OUT/$name.json" --target "$target" \
        --server "127.0.0.1:$TARGET_PORT" --server-pid "$TARGET_PID" \
        "${publish[@]}" --in-flight "${IN_FLIGHT:-8}"
    wait_profiler
    cleanup
}

floor_prefix() { # floor_prefix VIA: floor-api, floor-client, floor-api-compete, ...
    if [ "${COMPETE:-0}" = 1 ]; then echo "floor-$1-compete"; else echo "floor-$1"; fi
}

run_floor() { # Herald and the floor alternate, ROUNDS times at each subscriber count and source
    local subs round via
    for via in ${VIA:-api client}; do
        for subs in ${FLOOR_SUBS:-$(pick "1000 5000 15000" "20")}; do
            for round in $(seq 1 "${ROUNDS:-$(pick 3 1)}"); do
                floor_step herald "$subs" "$via" "$round"
                floor_step floor "$subs" "$via" "$round"
            done
        done
    done
    for via in ${VIA:-api client}; do
        python3 "$ROOT/bench/ratios.py" "$OUT" "$(floor_prefix "$via")" herald floor
    done
}

cg_run() { # cg_run herald|floor VIA SECONDS: one broadcast under callgrind; prints "INSTRUCTIONS DELIVERIES"
    local target=$1 via=$2 seconds=$3 out="$WORK/cg-$1-$2-$3.out"
    # Below what either server delivers under callgrind, so a run's batching does not depend on
    # timing: API batches of 20 every 100 ms; client publications 50 ms apart, each on its own.
    local rate=${CG_RATE:-200}
    [ "$via" = client ] && rate=${CG_CLIENT_RATE:-20}
    WRAP=(valgrind -q --tool=callgrind --callgrind-out-file="$out")
    start_target "$target"
    WRAP=()
    wait_http "127.0.0.1:$TARGET_PORT" >&2
    bench broadcast --target "$target" --server "127.0.0.1:$TARGET_PORT" --server-pid "$TARGET_PID" \
        --subscribers "${CG_SUBS:-$(pick 200 10)}" --rate "$rate" --batch 20 \
        "${publish[@]}" --in-flight "${IN_FLIGHT:-8}" --payload 100 --duration "${seconds}s" \
        --drain 60s --json "$WORK/cg.json" >/dev/null 2>&1
    cleanup
    echo "$(awk '/^(summary|totals):/ {print $2; exit}' "$out") $(jq '[.steps[].deliveries] | add' "$WORK/cg.json")"
}

run_instructions() { # marginal instructions per delivery: (long - short) / (its extra deliveries)
    command -v valgrind >/dev/null || { echo "instructions needs valgrind" >&2; return 1; }
    local via target short long result="$OUT/instructions.json" rows=()
    for via in ${VIA:-api client}; do
        for target in herald floor; do
            read -r i1 d1 < <(cg_run "$target" "$via" "$(pick 2 1)")
            read -r i2 d2 < <(cg_run "$target" "$via" "$(pick 6 2)")
            rows+=("{\"target\":\"$target\",\"via\":\"$via\",\"short\":[$i1,$d1],\"long\":[$i2,$d2],\"per_delivery\":$(( (i2 - i1) / (d2 - d1 > 0 ? d2 - d1 : 1) ))}")
            echo "$target ($via): $(( (i2 - i1) / (d2 - d1 > 0 ? d2 - d1 : 1) )) instructions per delivery ($i1/$d1, $i2/$d2)"
        done
    done
    (IFS=,; echo "[${rows[*]}]") | jq . >"$result"
    jq -r 'group_by(.via)[] | "\(.[0].via): herald/floor instructions per delivery " +
        ((map(select(.target == "herald"))[0].per_delivery / map(select(.target == "floor"))[0].per_delivery * 1000 | round / 1000 | tostring))' "$result"
}

run_formats() { # JSON and Protobuf subscribers alternate, ROUNDS times
    local round format
    local subs=${SUBS:-$(pick 5000 20)}
    for round in $(seq 1 "${ROUNDS:-$(pick 3 1)}"); do
        for format in json protobuf; do
            write_config "$WORK/p.toml" "127.0.0.1:$PORT" "" plain
            start_nodes 1 "$WORK/p.toml"
            wait_http "127.0.0.1:$PORT"
            saturating_broadcast "$subs" "$OUT/formats-$format-$subs-$round.json" \
                --format "$format" --server "127.0.0.1:$PORT" --server-pid "$(node_pids_csv)"
            cleanup
        done
    done
    python3 "$ROOT/bench/ratios.py" "$OUT" formats protobuf json
}

# Herald's Pusher app for the pusher step: channel X of the app is Herald channel pusher:X. Rates
# as high as a publisher needs (the default is 10 client events a second per connection).
write_pusher_app() { # write_pusher_app FILE
    cat >"$1" <<EOF
[[channel.namespaces]]
name = "pusher"
[pusher]
client_event_rate = 1000000
activity_timeout = "120s"
[[pusher.apps]]
id = "bench-app"
key = "bench-app-key"
secret = "bench-app-secret"
namespace = "pusher"
client_events = true
max_connections = 0
EOF
}

SOCKUDO_VERSION=${SOCKUDO_VERSION:-5.2.0}
SOCKUDO_BIN=
find_sockudo() { # sets SOCKUDO_BIN: $SOCKUDO, on PATH or in ~/.cargo/bin; SOCKUDO_INSTALL=1 installs it
    local candidate
    for candidate in "${SOCKUDO:-}" "$(command -v sockudo 2>/dev/null || true)" "$HOME/.cargo/bin/sockudo"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then SOCKUDO_BIN=$candidate; return 0; fi
    done
    if [ "${SOCKUDO_INSTALL:-0}" = 1 ]; then
        command -v protoc >/dev/null ||
            { echo "installing Sockudo needs protoc (Debian: apt-get install protobuf-compiler)" >&2; return 1; }
        CARGO_TARGET_DIR=${SOCKUDO_TARGET_DIR:-$ROOT/target/sockudo} \
            cargo install sockudo --version "$SOCKUDO_VERSION" --locked >&2 || return 1
        SOCKUDO_BIN=$HOME/.cargo/bin/sockudo
        return 0
    fi
    return 1
}

# Sockudo with the same app, memory adapter, app manager and cache, no queue (so no webhooks),
# client events on and every limit off: no per-connection client event limit (0), no IP rate
# limiter, no connection limits; no metrics listener; warnings only in its log, as Herald's (at
# info it logs every connection). Run with a clean environment: Sockudo reads PORT, HOST and
# many more settings from it.
start_sockudo() { # start_sockudo PORT; sets TARGET_PID
    local dir="$WORK/sockudo"
    mkdir -p "$dir"
    cat >"$dir/bench.toml" <<EOF
host = "127.0.0.1"
port = $1
mode = "production"
debug = false
activity_timeout = 120
max_connections = 0
[adapter]
driver = "local"
[app_manager]
driver = "memory"
[[app_manager.array.apps]]
id = "bench-app"
key = "bench-app-key"
secret = "bench-app-secret"
enabled = true
enable_client_messages = true
max_connections = 0
max_client_events_per_second = 0
[cache]
driver = "memory"
[queue]
driver = "none"
[metrics]
enabled = false
[rate_limiter]
enabled = false
EOF
    (cd "$dir" && ulimit -n 20000 2>/dev/null; exec env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn \
        "${SERVER_ON[@]}" "$SOCKUDO_BIN" --config "$dir/bench.toml") >>"$WORK/sockudo.log" 2>&1 &
    PIDS+=($!)
    TARGET_PID=$!
}

pusher_step() { # pusher_step centrifugo|pusher|sockudo SUBS VIA ROUND: one saturating broadcast
    # VIA: client (a client on a WebSocket publishes, the issue's mode: Herald's Centrifugo
    # publisher counts its own echo, a Pusher one a watcher's, as Pusher does not echo), watched
    # (the same, every server paced by a watcher connection), api (the server APIs at a fixed rate).
    local server=$1 subs=$2 via=$3 round=$4 port=$PORT args=() publish=(--publish-via client)
    [ "$via" = watched ] && publish+=(--watcher)
    [ "$via" = api ] && publish=(--publish-via api)
    local name="pusher-$via-$server-$subs-$round"
    if [ "$server" = sockudo ]; then
        port=$((PORT + 400))
        start_sockudo "$port"
        # Sockudo keeps its defaults (port 6001) when it cannot load the file: an answer on this
        # port is the file loaded.
        wait_http "127.0.0.1:$port" /up || { tail -n 20 "$WORK/sockudo.log" >&2; return 1; }
    else
        write_pusher_app "$WORK/pusher-app.toml"
        write_config "$WORK/pusher.toml" "127.0.0.1:$PORT" "$WORK/pusher-app.toml" plain
        start_nodes 1 "$WORK/pusher.toml"
        TARGET_PID=$(node_pids_csv)
        wait_http "127.0.0.1:$PORT"
    fi
    # The same channel in each protocol: Centrifugo "bench" (no namespace), Pusher "bench" or,
    # for client events, which Pusher allows on private channels only, "private-bench".
    if [ "$server" = centrifugo ]; then
        args=(--target herald --channel bench)
    elif [ "$via" = api ]; then
        args=(--target pusher --channel bench)
    else
        args=(--target pusher --channel private-bench)
    fi
    [ -n "${PERF:-}" ] && profile "$TARGET_PID" "$name"
    saturating_broadcast "$subs" "$OUT/$name.json" "${args[@]}" \
        --server "127.0.0.1:$port" --server-pid "$TARGET_PID" --settle "${SETTLE:-$(pick 2s 200ms)}" \
        "${publish[@]}" --in-flight "${IN_FLIGHT:-8}"
    wait_profiler
    cleanup
}

run_pusher() { # Herald (Centrifugo), Herald (Pusher) and Sockudo alternate, ROUNDS times at each size
    local OUT="$OUT/pusher" subs round server via servers=${PUSHER_SERVERS:-centrifugo pusher sockudo}
    mkdir -p "$OUT"
    if [[ " $servers " != *" sockudo "* ]]; then
        :
    elif find_sockudo; then
        "$SOCKUDO_BIN" --version >"$OUT/sockudo-version.txt" 2>&1 || true
        echo "Sockudo: $SOCKUDO_BIN ($(cat "$OUT/sockudo-version.txt"))"
    else
        echo "Sockudo is not installed (SOCKUDO=path, or SOCKUDO_INSTALL=1 to run" \
            "cargo install sockudo --version $SOCKUDO_VERSION, which needs protoc): measuring Herald only" >&2
        servers=${servers//sockudo/}
    fi
    for via in ${VIA:-client watched}; do
        for subs in ${PUSHER_SUBS:-$(pick "5000 15000" "20")}; do
            for round in $(seq 1 "${ROUNDS:-$(pick 3 1)}"); do
                for server in $servers; do pusher_step "$server" "$subs" "$via" "$round"; done
            done
        done
        [[ " $servers " == *" pusher "* ]] || continue
        [[ " $servers " == *" centrifugo "* ]] &&
            python3 "$ROOT/bench/ratios.py" "$OUT" "pusher-$via" pusher centrifugo "pusher-$via-vs-centrifugo.json"
        if [[ " $servers " == *" sockudo "* ]]; then
            python3 "$ROOT/bench/ratios.py" "$OUT" "pusher-$via" pusher sockudo "pusher-$via-vs-sockudo.json"
        fi
        python3 "$ROOT/bench/pusher_summary.py" "$OUT" "pusher-$via"
    done
}

run_clusters() { # BROKERS (default: redis redis_cluster nats)
    local b
    for b in ${BROKERS:-redis redis_cluster nats}; do run_cluster "$b"; done
}

case "$scenario" in
    idle) run_idle ;;
    broadcast) run_broadcast ;;
    peers) run_peer ws; run_peer socketio ;;
    ws | socketio) run_peer "$scenario" ;;
    # Herald's broadcast sweep against the floor's at the same rates (RATES), for latency.
    sweep) run_broadcast; PEER_RATES=$(broadcast_rates) run_peer floor ;;
    chat) run_chat ;;
    market) run_market ;;
    livemap) run_livemap ;;
    cluster) run_clusters ;;
    cores) run_cores ;;
    hostile) run_hostile ;;
    floor) run_floor ;;
    formats) run_formats ;;
    pusher) run_pusher ;;
    instructions) run_instructions ;;
    capacity) run_capacity ;;
    all | smoke)
        run_idle; run_broadcast; run_peer ws; run_peer socketio
        run_chat; run_market; run_livemap; run_clusters; run_cores; run_hostile; run_floor; run_formats; run_pusher; run_capacity
        run_instructions
        ;;
    *) echo "unknown scenario: $scenario" >&2; exit 2 ;;
esac
if [ -n "$SMOKE_TMP" ]; then
    echo "smoke run passed (its results were checks, not figures, and are removed)"
else
    echo "results in $OUT"
fi
