#!/usr/bin/env bash
# HTTP ingestion benchmark: reproduces the figures of the ingest issue on this machine.
#
#   cargo build --release && benches/http_ingest.sh [path/to/gamestream]
#
# It starts its own tansu broker (memory storage, on KAFKA_PORT) and its own
# `gamestream serve --mode ingest` (on HTTP_PORT), so the shared dev stack is neither
# used nor filled, and measures, in one run:
#   1. GET /health with wrk: a warp endpoint answering a constant (the reference),
#   2. POST /api/v1/events with wrk (benches/wrk/event.lua): single-event events/s,
#   3. POST /api/v1/events/batch with wrk (benches/wrk/batch.lua): events/s at 1,000
#      events per request,
#   4. `gamestream loadgen --rate RATE` for RSS_SECONDS: latency percentiles at a fixed
#      request rate (open loop), while the server's RSS is sampled every second.
# Every ingest answer must be 200: a run with non-2xx answers is reported as failed.
#
# Settings (environment): DURATION (wrk seconds per run, 15), CONNECTIONS (wrk, 128),
# BATCH_CONNECTIONS (wrk for the batch run, 4), THREADS (wrk, 1), RATE (loadgen
# requests/s, 5000), RSS_SECONDS (60), KAFKA_PORT (19092), HTTP_PORT (18080),
# TANSU (the tansu binary). Server settings can be passed as GAMESTREAM_* variables.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$here/../target}/release/gamestream}
DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-128}
BATCH_CONNECTIONS=${BATCH_CONNECTIONS:-4}
THREADS=${THREADS:-1}
RATE=${RATE:-5000}
RSS_SECONDS=${RSS_SECONDS:-60}
KAFKA_PORT=${KAFKA_PORT:-19092}
HTTP_PORT=${HTTP_PORT:-18080}
TANSU=${TANSU:-$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")}

die() { echo "http_ingest: $*" >&2; exit 1; }
[[ -x $bin ]] || die "no gamestream binary at $bin (run cargo build --release, or pass its path)"
[[ -x $TANSU ]] || die "no tansu binary (set TANSU); deploy/local/stack.sh installs it"
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
for port in "$KAFKA_PORT" "$HTTP_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is in use"; fi
done

work=$(mktemp -d)
broker=""
server=""
sampler=""
cleanup() {
    for pid in $sampler $server $broker; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
url=http://127.0.0.1:$HTTP_PORT

# A fresh broker (tansu's memory storage slows down as it fills, so each measurement
# starts from an empty one) with the contract's topics, and a fresh server on it.
fresh_stack() {
    for pid in $server $broker; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    (cd "$work" && exec env -u OTEL_EXPORTER_OTLP_ENDPOINT -u SCHEMA_REGISTRY RUST_LOG=warn NO_COLOR=1 \
        "$TANSU" broker --cluster-id bench --storage-engine memory://tansu/ \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        >>"$work/tansu.log" 2>&1) &
    broker=$!
    for _ in $(seq 50); do
        "$bin" topics create >/dev/null 2>&1 && break
        sleep 0.2
    done
    "$bin" topics list 2>/dev/null | grep -q player.events.raw || die "tansu did not start (log: $work/tansu.log)"
    RUST_LOG=${RUST_LOG:-warn} "$bin" serve --mode ingest --port "$HTTP_PORT" >>"$work/gamestream.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do
        curl -fs "$url/health" >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fs "$url/health" >/dev/null || die "the server did not start (log: $work/gamestream.log)"
}

# wrk_rps SCRIPT CONNECTIONS: runs wrk, prints its output, sets $rps; fails on non-2xx.
wrk_rps() {
    local out
    out=$(wrk -t"$THREADS" -c"$2" -d"${DURATION}s" --latency -s "$here/wrk/$1" "$url")
    echo "$out" | sed 's/^/    /'
    if grep -q "Non-2xx" <<<"$out"; then die "$1: the server answered non-2xx (see above)"; fi
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
}

fresh_stack
echo "== warm-up"
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -s "$here/wrk/event.lua" "$url" >/dev/null

echo "== GET /health (constant): wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s"
wrk_rps health.lua "$CONNECTIONS"
health_rps=$rps
echo "== POST /api/v1/events: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s -s benches/wrk/event.lua"
wrk_rps event.lua "$CONNECTIONS"
event_rps=$rps
fresh_stack
echo "== POST /api/v1/events/batch (1000 events): wrk -t$THREADS -c$BATCH_CONNECTIONS -d${DURATION}s -s benches/wrk/batch.lua"
wrk_rps batch.lua "$BATCH_CONNECTIONS"
batch_rps=$rps

fresh_stack
echo "== loadgen --rate $RATE for ${RSS_SECONDS}s, RSS of the server sampled every second"
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$server/status"; }
rss_start=$(rss_kb)
(
    t=0
    while kill -0 "$server" 2>/dev/null; do
        echo "$t $(rss_kb || echo 0)" >>"$work/rss"
        t=$((t + 1))
        sleep 1
    done
) &
sampler=$!
set +e
"$bin" loadgen --url "$url" --count $((RATE * RSS_SECONDS)) --rate "$RATE" --concurrency 1024 \
    --players 1000 --games 10 | sed 's/^/    /'
loadgen_status=${PIPESTATUS[0]}
set -e
kill "$sampler" 2>/dev/null || true
sampler=""
rss_series=$(awk '$1 % 10 == 0 {printf "%s%ds %d MiB", sep, $1, $2 / 1024; sep = ", "}' "$work/rss")
rss_peak=$(awk '$2 > p {p = $2} END {print p}' "$work/rss")
rss_end=$(tail -n 1 "$work/rss" | awk '{print $2}')

echo
echo "== summary"
awk -v h="$health_rps" -v e="$event_rps" -v b="$batch_rps" 'BEGIN {
    printf "GET /health (constant)          %10.0f requests/s\n", h
    printf "POST /api/v1/events             %10.0f events/s   (%.0f%% of the constant endpoint)\n", e, 100 * e / h
    printf "POST /api/v1/events/batch       %10.0f events/s   (%.1f requests/s of 1000)\n", b * 1000, b
}'
echo "server RSS during the loadgen run: ${rss_start} kB at start, peak ${rss_peak} kB, ${rss_end} kB at the end"
echo "    every 10 s: $rss_series"
((loadgen_status == 0)) || die "loadgen reported failed requests"
