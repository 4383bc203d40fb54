#!/usr/bin/env bash
# How long `gamestream migrate` takes to adopt the old pipeline's database, per million
# `events` rows (issue 18; README, "Cut-over from the old pipeline").
#
#   eval "$(deploy/local/stack.sh env)" && benches/adopt_legacy.sh [ROWS] [path/to/gamestream]
#
# Creates a scratch database `gs_adopt_bench` on the configured Postgres, loads
# ../shared/legacy/schema.sql with ROWS events (default 1,000,000; 20,000 players, 5
# games, 10% player_score) and as many player_statistics rows as players, runs
# `gamestream migrate` on it, prints its answer and the wall time, and drops the database.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
rows=${1:-1000000}
bin=${2:-${CARGO_TARGET_DIR:-$here/../target}/debug/gamestream}
db=gs_adopt_bench
export PGHOST=$DB_HOST PGPORT=$DB_PORT PGUSER=$DB_USER PGPASSWORD=$DB_PASSWORD
psql -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
trap 'psql -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
psql -q -d "$db" -f "$here/../../shared/legacy/schema.sql"
echo "loading $rows events rows ..."
psql -q -d "$db" <<SQL
INSERT INTO events (event_id, event_type, player_id, game_id, event_timestamp, ingested_at, data)
SELECT md5(i::text)::uuid,
       CASE WHEN i % 10 = 0 THEN 'player_score' ELSE 'quest_completed' END,
       'player-' || (i % 20000), 'game-' || (i % 5),
       timestamp '2026-11-25 00:00:00' + i * interval '500 ms',
       timestamp '2026-11-25 00:00:01' + i * interval '500 ms',
       CASE WHEN i % 10 = 0 THEN jsonb_build_object('score', i % 1000) ELSE '{"level": 3}' END
FROM generate_series(1, $rows) AS i;
INSERT INTO player_statistics (player_id, total_events, event_breakdown)
SELECT 'player-' || i, 50, '{"quest_completed": 45, "player_score": 5}' FROM generate_series(0, 19999) AS i;
VACUUM ANALYZE;
SQL
start=$(date +%s.%N)
DB_NAME=$db RUST_LOG=warn "$bin" migrate
end=$(date +%s.%N)
python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); print(f'migrate (adoption + later migrations): {s:.1f} s wall for {n:,} events rows = {s*1e6/n:.1f} s per million rows')" "$start" "$end" "$rows"
