#!/usr/bin/env bash
# HTTP ingestion benchmark: the figures of the ingest and speed issues, on this machine.
#
#   cargo build --release && benches/http_ingest.sh [BIN ...]
#   benches/http_ingest.sh /tmp/gamestream-before target/release/gamestream   # A/B, one session
#
# Each BIN (default: the release build) runs `gamestream serve --mode ingest` (on
# HTTP_PORT) against a broker of the script's own (BROKER=kafka: a private Apache Kafka
# 4.1.1 broker from deploy/local/kafka.sh, its log in a temporary directory, started
# once and warmed up for WARMUP seconds so that its JIT has compiled the produce path;
# BROKER=tansu: tansu with memory storage, fresh for each measurement as it slows down
# while it fills), so the shared dev stack is neither used nor filled. Phases, each with
# every BIN in turn, so that the binaries are compared under the same conditions:
#   1. ROUNDS times, alternating the binaries: GET /health with wrk, a warp endpoint
#      answering a constant (the reference), then POST /api/v1/events with wrk
#      (benches/wrk/event.lua): single-event requests/s, and its ratio to the constant
#      endpoint of the same server in the same minute,
#   2. POST /api/v1/events/batch with wrk (benches/wrk/batch.lua): events/s at 1,000
#      events per request, plain JSON and gzip-encoded (Content-Encoding: gzip),
#   3. `gamestream loadgen --rate RATE` for LOADGEN_SECONDS: the HTTP answer's latency
#      percentiles at a fixed request rate (open loop), the server's RSS sampled every
#      second. The client is the last BIN's loadgen for every server.
# Every ingest answer must be 2xx: a run with non-2xx answers is reported as failed.
#
# Settings (environment): DURATION (wrk seconds per run, 15), CONNECTIONS (wrk, 64),
# BATCH_CONNECTIONS (wrk for the batch runs, 4), THREADS (wrk, 1), RATE (loadgen
# requests/s, 5000), LOADGEN_SECONDS (30), ROUNDS (2), WARMUP (20 s), BROKER (kafka |
# tansu), KAFKA_PORT (19092),
# HTTP_PORT (18080), TANSU (the tansu binary), PHASES ("single batch loadgen"). Server
# settings can be passed as GAMESTREAM_* variables (e.g. GAMESTREAM_PRODUCER__LINGER).
# wrk is installed with apt-get when missing (as root, or with sudo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
if (($# == 0)); then set -- "${CARGO_TARGET_DIR:-$root/target}/release/gamestream"; fi
bins=("$@")
DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-64}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-4}
THREADS=${THREADS:-1}
RATE=${RATE:-5000}
LOADGEN_SECONDS=${LOADGEN_SECONDS:-30}
BROKER=${BROKER:-kafka}
KAFKA_PORT=${KAFKA_PORT:-19092}
HTTP_PORT=${HTTP_PORT:-18080}
PHASES=${PHASES:-single batch loadgen}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-20}
TANSU=${TANSU:-$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")}

die() { echo "http_ingest: $*" >&2; exit 1; }
for bin in "${bins[@]}"; do [[ -x $bin ]] || die "no gamestream binary at $bin (cargo build --release)"; done
case $BROKER in
    kafka) ;;
    tansu) [[ -x $TANSU ]] || die "no tansu binary (set TANSU); STACK_KAFKA=tansu deploy/local/stack.sh installs it" ;;
    *) die "BROKER is kafka or tansu, not $BROKER" ;;
esac
if ! command -v wrk >/dev/null; then
    echo "http_ingest: installing wrk" >&2
    sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null ||
        { "${sudo[@]}" apt-get update -qq >/dev/null && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } ||
        die "cannot install wrk (apt-get install wrk)"
fi
for port in "$KAFKA_PORT" "$HTTP_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is in use"; fi
done

work=$(mktemp -d)
broker=""
server=""
sampler=""
stop_broker() {
    case $BROKER in
        kafka) [[ -d $work/kafka ]] && bash "$root/deploy/local/kafka.sh" stop --dir "$work/kafka" --kill >/dev/null 2>&1 || true
            rm -rf "$work/kafka" ;;
        tansu) [[ -n $broker ]] && { kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true; } ;;
    esac
    broker=""
}
stop_server() {
    if [[ -n $server ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    server=""
}
cleanup() {
    [[ -n $sampler ]] && kill "$sampler" 2>/dev/null || true
    stop_server
    stop_broker
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
url=http://127.0.0.1:$HTTP_PORT

# fresh_stack BIN: the broker (Kafka: the one started first, warmed up once; tansu: a
# fresh one) with the contract's topics, and BIN's server on it.
warmed=0
fresh_stack() {
    local bin=$1
    stop_server
    case $BROKER in
        kafka)
            if [[ ! -d $work/kafka ]]; then
                bash "$root/deploy/local/kafka.sh" start --dir "$work/kafka" --port "$KAFKA_PORT" \
                    --controller-port $((KAFKA_PORT + 1)) >>"$work/kafka.log" 2>&1 ||
                    { tail -n 30 "$work/kafka.log" >&2; die "the Kafka broker did not start"; }
            fi
            ;;
        tansu)
            stop_broker
            (cd "$work" && exec env -u OTEL_EXPORTER_OTLP_ENDPOINT -u SCHEMA_REGISTRY RUST_LOG=warn NO_COLOR=1 \
                "$TANSU" broker --cluster-id bench --storage-engine memory://tansu/ \
                --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
                >>"$work/tansu.log" 2>&1) &
            broker=$!
            ;;
    esac
    local topics=0
    for _ in $(seq 50); do
        if "$bin" topics create >>"$work/topics.log" 2>&1 &&
            "$bin" topics list 2>>"$work/topics.log" | grep -q player.events.raw; then
            topics=1
            break
        fi
        sleep 0.5
    done
    ((topics == 1)) || { tail -n 20 "$work/topics.log" >&2; die "no topics on the broker"; }
    RUST_LOG=${RUST_LOG:-warn} "$bin" serve --mode ingest --port "$HTTP_PORT" >>"$work/gamestream.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do
        curl -fs "$url/health" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fs "$url/health" >/dev/null || die "the server did not start (log: $work/gamestream.log)"
    if [[ $BROKER == kafka && $warmed == 0 ]]; then
        echo "== broker warm-up: ${WARMUP}s of single-event POSTs"
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" -s "$here/wrk/event.lua" "$url" >/dev/null
        warmed=1
    fi
}

# wrk_rps SCRIPT CONNECTIONS: runs wrk, prints its output, sets $rps and $p99 (ms);
# fails on non-2xx answers.
wrk_rps() {
    local out
    out=$(wrk -t"$THREADS" -c"$2" -d"${DURATION}s" --latency -s "$here/wrk/$1" "$url")
    echo "$out" | sed 's/^/    /'
    if grep -q "Non-2xx" <<<"$out"; then die "$1: the server answered non-2xx (see above)"; fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms/, "", v)} else if (v ~ /s$/) {sub(/s/, "", v); v *= 1000}; print v}' <<<"$out")
}

# The gzip bodies of the batch phase: benches/wrk/batch_gzip.lua reads them.
export BODY_DIR=$work/bodies
mkdir -p "$BODY_DIR"
python3 - "$BODY_DIR" <<'EOF'
import gzip, json, sys
types = ["player_score"] * 3 + ["player_level_up"] * 2 + ["quest_completed"] * 2 + ["achievement_unlocked"] * 2 + ["boss_defeated"]
for b in range(1, 11):
    items = []
    for i in range(1, 1001):
        p = (b * 1000 + i) % 5000
        items.append({"event_type": types[i % len(types)], "player_id": f"player-{p}", "game_id": f"game-{p % 10}",
                      "timestamp": "2024-01-15T10:30:00Z", "data": {"score": i % 1000}})
    open(f"{sys.argv[1]}/{b}.json.gz", "wb").write(gzip.compress(json.dumps(items, separators=(",", ":")).encode()))
EOF

declare -A health event event_p99 batch batch_gz lat_p50 lat_p99 lat_rate rss_peak
loadgen_failed=0
echo "broker: $BROKER; binaries: ${bins[*]}; $(uptime)"
if [[ $PHASES == *single* ]]; then
    for round in $(seq "$ROUNDS"); do
        for i in "${!bins[@]}"; do
            bin=${bins[$i]}
            fresh_stack "$bin"
            echo "== [$i] round $round, $bin: warm-up"
            wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$here/wrk/event.lua" "$url" >/dev/null
            echo "== [$i] GET /health (constant): wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s; $(uptime)"
            wrk_rps health.lua "$CONNECTIONS"
            health[$i]+="$rps "
            echo "== [$i] POST /api/v1/events: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s -s benches/wrk/event.lua"
            wrk_rps event.lua "$CONNECTIONS"
            event[$i]+="$rps "
            event_p99[$i]+="$p99 "
        done
    done
fi
for i in "${!bins[@]}"; do
    bin=${bins[$i]}
    if [[ $PHASES == *batch* ]]; then
        fresh_stack "$bin"
        echo "== [$i] POST /api/v1/events/batch (1000 events): wrk -t$THREADS -c$BATCH_CONNECTIONS -d${DURATION}s -s benches/wrk/batch.lua; $(uptime)"
        wrk_rps batch.lua "$BATCH_CONNECTIONS"
        batch[$i]=$rps
        fresh_stack "$bin"
        echo "== [$i] the same, gzip bodies: -s benches/wrk/batch_gzip.lua"
        wrk_rps batch_gzip.lua "$BATCH_CONNECTIONS"
        batch_gz[$i]=$rps
    fi
done
client=${bins[-1]}
for i in "${!bins[@]}"; do
    bin=${bins[$i]}
    if [[ $PHASES == *loadgen* ]]; then
        fresh_stack "$bin"
        echo "== [$i] loadgen --rate $RATE for ${LOADGEN_SECONDS}s, RSS of the server sampled every second; $(uptime)"
        rm -f "$work/rss"
        (
            while kill -0 "$server" 2>/dev/null; do
                awk '/^VmRSS:/ {print $2}' "/proc/$server/status" >>"$work/rss" 2>/dev/null || true
                sleep 1
            done
        ) &
        sampler=$!
        set +e
        out=$("$client" loadgen --url "$url" --count $((RATE * LOADGEN_SECONDS)) --rate "$RATE" --concurrency 1024 \
            --players 1000 --games 10 2>/dev/null)
        status=$?
        set -e
        echo "$out" | sed 's/^/    /'
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        sampler=""
        ((status == 0)) || loadgen_failed=1
        lat_p50[$i]=$(awk '$1 == "latency" && $2 == "p50" {print $3}' <<<"$out")
        lat_p99[$i]=$(awk '$1 == "latency" && $2 == "p99" {print $3}' <<<"$out")
        lat_rate[$i]=$(awk '/^achieved rate/ {print $3}' <<<"$out")
        rss_peak[$i]=$(awk '$1 > p {p = $1} END {printf "%.0f", p / 1024}' "$work/rss")
    fi
done

echo
echo "== summary (broker: $BROKER; $(uptime))"
for i in "${!bins[@]}"; do
    echo "[$i] ${bins[$i]}"
    if [[ -n ${health[$i]:-} ]]; then
        # One line per round: the two figures of a round come from the same minute.
        awk -v h="${health[$i]}" -v e="${event[$i]}" -v p="${event_p99[$i]}" -v c="$CONNECTIONS" 'BEGIN {
            n = split(h, hs, " "); split(e, es, " "); split(p, ps, " ")
            for (r = 1; r <= n; r++) {
                printf "    round %d: GET /health %6.0f req/s; POST /api/v1/events %6.0f req/s, ratio %.2f, p99 %s ms (%d conn.)\n", r, hs[r], es[r], es[r] / hs[r], ps[r], c
                sh += hs[r]; se += es[r]
            }
            printf "    mean ratio %.2f (%.0f / %.0f req/s)\n", se / sh, se / n, sh / n
        }'
    fi
    if [[ -n ${batch[$i]:-} ]]; then
        awk -v b="${batch[$i]}" -v g="${batch_gz[$i]}" 'BEGIN {
            printf "    POST /api/v1/events/batch             %10.0f events/s (%.1f requests/s of 1000)\n", b * 1000, b
            printf "    the same, gzip bodies                 %10.0f events/s\n", g * 1000
        }'
    fi
    if [[ -n ${lat_p99[$i]:-} ]]; then
        echo "    loadgen at $RATE/s: achieved ${lat_rate[$i]} events/s, HTTP answer p50 ${lat_p50[$i]} ms, p99 ${lat_p99[$i]} ms; server peak RSS ${rss_peak[$i]} MiB"
    fi
done
((loadgen_failed == 0)) || die "loadgen reported failed requests"
