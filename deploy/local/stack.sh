#!/usr/bin/env bash
# Local service stack for gamestream: PostgreSQL 15, Redis and Apache Kafka 4.1.1
# (a single KRaft node, through deploy/local/kafka.sh; or, with STACK_KAFKA=tansu,
# tansu, a Kafka-wire-compatible broker), all on 127.0.0.1, all state under
# $STACK_DIR.
#
#   deploy/local/stack.sh up|down|status|env
#   deploy/local/stack.sh start|stop|restart postgres|redis|kafka
#
# See deploy/local/README.md for the knobs (STACK_* env vars).
set -euo pipefail

# ---------------------------------------------------------------- settings ---

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

STACK_DIR=${STACK_DIR:-$REPO_ROOT/.stack}
case $STACK_DIR in
    /*) ;;
    *) STACK_DIR=$PWD/$STACK_DIR ;;
esac
STACK_DIR=${STACK_DIR%/}

PG_PORT=${STACK_PG_PORT:-5432}
REDIS_PORT=${STACK_REDIS_PORT:-6379}
KAFKA_PORT=${STACK_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${STACK_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_HEAP=${STACK_KAFKA_HEAP:-512m}
KAFKA_STORAGE=${STACK_KAFKA_STORAGE:-memory}
DB_USER_=${STACK_DB_USER:-gamestream}
DB_PASSWORD_=${STACK_DB_PASSWORD:-gamestream}
DB_NAME_=${STACK_DB_NAME:-gamestream}
TIMEOUT=${STACK_TIMEOUT:-60}
TANSU_VERSION=0.6.0
HOST=127.0.0.1

PG_BIN=/usr/lib/postgresql/15/bin
PG_ROOT=$STACK_DIR/postgres
PG_DATA=$PG_ROOT/data
PG_SOCK=$PG_ROOT/run
PG_LOG=$PG_ROOT/postgres.log

REDIS_ROOT=$STACK_DIR/redis
REDIS_PID=$REDIS_ROOT/redis.pid
REDIS_LOG=$REDIS_ROOT/redis.log

# Apache Kafka: kafka.sh's broker directory (server.properties, data/, server.log,
# kafka.pid); tansu: the tansu.* files beside it
KAFKA_SH=$SCRIPT_DIR/kafka.sh
KAFKA_ROOT=$STACK_DIR/kafka
KAFKA_FLAVOUR_FILE=$KAFKA_ROOT/flavour
KAFKA_PID=$KAFKA_ROOT/tansu.pid
KAFKA_LOG=$KAFKA_ROOT/tansu.log
KAFKA_DB=$KAFKA_ROOT/tansu.db

SERVICES=(postgres redis kafka)

# ----------------------------------------------------------------- helpers ---

log() { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] warning: %s\n' "$*" >&2; }
die() {
    printf '[stack] error: %s\n' "$*" >&2
    exit 1
}

# die with the tail of a service's log
die_log() {
    local msg=$1 file=$2
    printf '[stack] error: %s\n' "$msg" >&2
    if [[ -f $file ]]; then
        printf '[stack] ---- last lines of %s ----\n' "$file" >&2
        tail -n 30 "$file" >&2 || true
        printf '[stack] ----\n' >&2
    fi
    exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# run a privileged command (apt-get): directly as root, else through sudo
as_admin() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# run a PostgreSQL server binary: as the postgres OS user when we are root
# (the server refuses to run as root), from a directory that user can read
as_pg() {
    if is_root; then
        (cd "$PG_ROOT" && runuser -u postgres -- "$@")
    else
        (cd "$PG_ROOT" && "$@")
    fi
}

# does a TCP connect to 127.0.0.1:$1 succeed?
tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# fail unless the port is free; $2 names the env var that sets it
require_free_port() {
    local port=$1 var=$2 svc=$3 holder=""
    if tcp_open "$port"; then
        if command -v ss >/dev/null 2>&1; then
            holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n 1 || true)
        fi
        die "$svc: port $HOST:$port is already in use by a process this stack did not start${holder:+ ($holder)}; stop it or set $var to another port"
    fi
}

# is pid $1 alive (not a zombie waiting to be reaped) and is its command name $2?
pid_is() {
    local pid=$1 name=$2 comm stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    [[ $comm == "$name" ]]
}

# wait until "$@" succeeds, up to $TIMEOUT seconds
wait_until() {
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# record/read the port a service was started on (for status/env)
record_port() { printf '%s\n' "$2" >"$STACK_DIR/$1.port"; }
recorded_port() {
    local f=$STACK_DIR/$1.port
    if [[ -f $f ]]; then cat "$f"; else printf '%s\n' "$2"; fi
}

# ----------------------------------------------------------------- install ---

APT_UPDATED=0
apt_install() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        as_admin env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    # keep package maintainer scripts from starting their own services
    # (invoke-rc.d honours policy-rc.d exit code 101 = "action forbidden")
    local policy=/usr/sbin/policy-rc.d added=0
    if is_root && [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added=1
    fi
    local rc=0
    as_admin env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    if [[ $added -eq 1 ]]; then rm -f "$policy"; fi
    [[ $rc -eq 0 ]] || die "apt-get install $* failed (exit $rc)"
}

ensure_postgres_installed() {
    if [[ ! -x $PG_BIN/initdb ]] || [[ ! -x $PG_BIN/psql ]]; then
        apt_install postgresql-15 postgresql-client-15
    fi
    [[ -x $PG_BIN/initdb ]] || die "PostgreSQL 15 not found at $PG_BIN after install"
    if is_root && ! id postgres >/dev/null 2>&1; then
        die "no 'postgres' OS user to run PostgreSQL as (it comes with the postgresql-15 package)"
    fi
}

ensure_redis_installed() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        apt_install redis-server redis-tools
    fi
}

TANSU=""
tansu_version() { "$1" --version 2>/dev/null | awk '{print $2; exit}'; }

find_tansu() {
    local c
    for c in "$(command -v tansu 2>/dev/null || true)" "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"; do
        if [[ -n $c && -x $c && $(tansu_version "$c") == "$TANSU_VERSION" ]]; then
            TANSU=$c
            return 0
        fi
    done
    return 1
}

ensure_tansu_installed() {
    find_tansu && return 0
    # another `cargo install tansu` (e.g. machine setup) may be under way: wait for it
    local other
    other=$(pgrep -f 'cargo install .*tansu' 2>/dev/null | head -n 1 || true)
    if [[ -n $other ]]; then
        log "kafka: waiting for a running 'cargo install tansu' (pid $other) to finish"
        while kill -0 "$other" 2>/dev/null; do sleep 5; done
        find_tansu && return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to install tansu $TANSU_VERSION"
    log "kafka: installing tansu $TANSU_VERSION with cargo (takes 5-7 minutes on 2 cores; log: $STACK_DIR/tansu-install.log)"
    mkdir -p "$STACK_DIR"
    if ! cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql \
        </dev/null >"$STACK_DIR/tansu-install.log" 2>&1; then
        die_log "cargo install tansu $TANSU_VERSION failed" "$STACK_DIR/tansu-install.log"
    fi
    find_tansu || die "tansu $TANSU_VERSION still not found on PATH or in ${CARGO_HOME:-$HOME/.cargo}/bin after install"
}

# ---------------------------------------------------------------- postgres ---

pg_pid() {
    local pid
    [[ -f $PG_DATA/postmaster.pid ]] || return 1
    pid=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)
    pid_is "$pid" postgres || return 1
    printf '%s\n' "$pid"
}

pg_ready() { "$PG_BIN/pg_isready" -q -h "$HOST" -p "$1" -d postgres -t 2 >/dev/null 2>&1; }

pg_init() {
    mkdir -p "$STACK_DIR"
    install -d -m 755 "$PG_ROOT"
    install -d -m 700 "$PG_DATA"
    install -d -m 755 "$PG_SOCK"
    touch "$PG_LOG"
    if is_root; then
        chown postgres:postgres "$PG_ROOT" "$PG_DATA" "$PG_SOCK" "$PG_LOG"
        runuser -u postgres -- test -w "$PG_ROOT" 2>/dev/null ||
            die "postgres: the 'postgres' OS user cannot reach $PG_ROOT (a parent directory is not world-traversable); set STACK_DIR elsewhere"
    fi
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        log "postgres: initdb $PG_DATA"
        as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 --no-instructions \
            >"$PG_ROOT/initdb.log" 2>&1 ||
            die_log "postgres: initdb failed" "$PG_ROOT/initdb.log"
        printf "\n# gamestream local stack settings (rewritten by stack.sh on every start)\ninclude 'stack.conf'\n" \
            >>"$PG_DATA/postgresql.conf"
    fi
    # written on every start so that STACK_PG_PORT / STACK_DIR changes apply
    cat >"$PG_DATA/stack.conf" <<EOF
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 300
shared_buffers = 256MB
# durable: crash/kill tests rely on it
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = minimal
max_wal_senders = 0
password_encryption = scram-sha-256
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
log_checkpoints = off
EOF
    cat >"$PG_DATA/pg_hba.conf" <<'EOF'
# gamestream local stack (written by stack.sh)
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
EOF
    if is_root; then chown postgres:postgres "$PG_DATA/stack.conf" "$PG_DATA/pg_hba.conf"; fi
}

# create the project role and database if missing (as superuser, over the socket)
pg_bootstrap() {
    local port=$1 out
    out=$("$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$port" -U postgres -d postgres \
        -v u="$DB_USER_" -v pw="$DB_PASSWORD_" -v db="$DB_NAME_" 2>&1 <<'SQL'
SELECT 'created role ' || :'u' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u');
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'u', :'pw')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \gexec
SELECT 'set LOGIN CREATEDB on role ' || :'u' FROM pg_roles WHERE rolname = :'u' AND NOT (rolcanlogin AND rolcreatedb);
SELECT format('ALTER ROLE %I LOGIN CREATEDB', :'u')
  FROM pg_roles WHERE rolname = :'u' AND NOT (rolcanlogin AND rolcreatedb) \gexec
SELECT 'created database ' || :'db' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db');
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'u')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
    ) || { printf '%s\n' "$out" >&2; die "postgres: creating role/database failed"; }
    [[ -z $out ]] || while IFS= read -r line; do log "postgres: $line"; done <<<"$out"
    # the password must work over TCP (scram); reset it only when it does not
    if ! PGPASSWORD=$DB_PASSWORD_ "$PG_BIN/psql" -X -q -At -w -h "$HOST" -p "$port" -U "$DB_USER_" -d "$DB_NAME_" \
        -c 'select 1' >/dev/null 2>&1; then
        log "postgres: setting password of role $DB_USER_"
        "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$port" -U postgres -d postgres \
            -v u="$DB_USER_" -v pw="$DB_PASSWORD_" >/dev/null <<'SQL'
SELECT format('ALTER ROLE %I PASSWORD %L', :'u', :'pw') \gexec
SQL
        PGPASSWORD=$DB_PASSWORD_ "$PG_BIN/psql" -X -q -At -w -h "$HOST" -p "$port" -U "$DB_USER_" -d "$DB_NAME_" \
            -c 'select 1' >/dev/null || die "postgres: cannot log in as $DB_USER_ over TCP"
    fi
}

start_postgres() {
    local pid
    if pid=$(pg_pid); then
        local port
        port=$(recorded_port postgres "$PG_PORT")
        log "postgres: already running (pid $pid) on $HOST:$port"
        [[ $port == "$PG_PORT" ]] || warn "postgres runs on $port, not STACK_PG_PORT=$PG_PORT; restart it to move it"
        pg_bootstrap "$port"
        return 0
    fi
    ensure_postgres_installed
    require_free_port "$PG_PORT" STACK_PG_PORT postgres
    pg_init
    log "postgres: starting on $HOST:$PG_PORT"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" -s start >/dev/null 2>&1 9>&- ||
        die_log "postgres: did not start within ${TIMEOUT}s" "$PG_LOG"
    wait_until pg_ready "$PG_PORT" || die_log "postgres: not answering on $HOST:$PG_PORT after ${TIMEOUT}s" "$PG_LOG"
    record_port postgres "$PG_PORT"
    pg_bootstrap "$PG_PORT"
    log "postgres: running (pid $(pg_pid || echo '?')) on $HOST:$PG_PORT"
}

stop_postgres() {
    local pid
    if ! pid=$(pg_pid); then
        log "postgres: not running"
        return 0
    fi
    log "postgres: stopping (pid $pid)"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t "$TIMEOUT" -s stop >/dev/null 2>&1 ||
        die_log "postgres: did not stop within ${TIMEOUT}s" "$PG_LOG"
}

# ------------------------------------------------------------------- redis ---

redis_pid() {
    local pid
    [[ -f $REDIS_PID ]] || return 1
    pid=$(cat "$REDIS_PID" 2>/dev/null || true)
    pid_is "$pid" redis-server || return 1
    printf '%s\n' "$pid"
}

redis_ready() { [[ $(redis-cli -h "$HOST" -p "$1" ping 2>/dev/null) == PONG ]]; }

start_redis() {
    local pid
    if pid=$(redis_pid); then
        log "redis: already running (pid $pid) on $HOST:$(recorded_port redis "$REDIS_PORT")"
        return 0
    fi
    ensure_redis_installed
    require_free_port "$REDIS_PORT" STACK_REDIS_PORT redis
    mkdir -p "$REDIS_ROOT/data"
    rm -f "$REDIS_PID"
    log "redis: starting on $HOST:$REDIS_PORT (no persistence)"
    redis-server --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
        --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" \
        --dir "$REDIS_ROOT/data" --save '' --appendonly no </dev/null >/dev/null 2>&1 9>&- ||
        die_log "redis: redis-server failed to start" "$REDIS_LOG"
    wait_until redis_ready "$REDIS_PORT" || die_log "redis: not answering on $HOST:$REDIS_PORT after ${TIMEOUT}s" "$REDIS_LOG"
    wait_until redis_pid >/dev/null || die_log "redis: no pid file at $REDIS_PID" "$REDIS_LOG"
    record_port redis "$REDIS_PORT"
    log "redis: running (pid $(redis_pid)) on $HOST:$REDIS_PORT"
}

stop_redis() {
    local pid port
    if ! pid=$(redis_pid); then
        log "redis: not running"
        rm -f "$REDIS_PID"
        return 0
    fi
    port=$(recorded_port redis "$REDIS_PORT")
    log "redis: stopping (pid $pid)"
    redis-cli -h "$HOST" -p "$port" shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    stop_wait "$pid" redis-server redis
    rm -f "$REDIS_PID"
}

# wait for pid $1 (command $2) to exit, then SIGKILL it
stop_wait() {
    local pid=$1 name=$2 svc=$3 deadline=$((SECONDS + 20))
    while pid_is "$pid" "$name"; do
        if ((SECONDS >= deadline)); then
            warn "$svc: pid $pid still alive after 20s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
}

# ------------------------------------------------------------ kafka (tansu) --

tansu_pid() {
    local pid
    [[ -f $KAFKA_PID ]] || return 1
    pid=$(cat "$KAFKA_PID" 2>/dev/null || true)
    pid_is "$pid" tansu || return 1
    printf '%s\n' "$pid"
}

# `start|restart kafka` without STACK_KAFKA_STORAGE keep the storage the broker
# last ran with (a fault-injection restart must not swap sqlite for memory)
kafka_storage_url() {
    if [[ -z ${STACK_KAFKA_STORAGE:-} && $KAFKA_STICKY -eq 1 && -s $KAFKA_ROOT/storage ]]; then
        cat "$KAFKA_ROOT/storage"
        return 0
    fi
    case $KAFKA_STORAGE in
        memory) printf 'memory://tansu/\n' ;;
        sqlite)
            # tansu resolves sqlite://HOST/PATH as <cwd>/HOST/PATH, unescaped: we
            # start it from / and give it the absolute path
            [[ $KAFKA_DB =~ ^[A-Za-z0-9._/+-]+$ ]] ||
                die "kafka: STACK_DIR ($STACK_DIR) has characters the sqlite storage URL cannot carry; use a plain path"
            printf 'sqlite://%s\n' "$KAFKA_DB"
            ;;
        *) die "STACK_KAFKA_STORAGE must be 'memory' or 'sqlite', not '$KAFKA_STORAGE'" ;;
    esac
}

# a Kafka ApiVersions v0 request (correlation id 1); true if the broker answers it
kafka_ready() {
    local port=$1
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "\x00\x00\x00\x0f\x00\x12\x00\x00\x00\x00\x00\x01\x00\x05stack" >&3
        reply=$(head -c 8 <&3 | od -An -tx1 | tr -d " \n")
        [[ ${reply:8:8} == 00000001 ]]
    ' "$HOST" "$port" 2>/dev/null
}

start_tansu() {
    local pid url
    url=$(kafka_storage_url)
    if pid=$(tansu_pid); then
        local running
        running=$(cat "$KAFKA_ROOT/storage" 2>/dev/null || echo '?')
        log "kafka: already running (pid $pid) on $HOST:$(recorded_port kafka "$KAFKA_PORT"), storage $running"
        [[ $running == "$url" ]] || warn "kafka runs with storage $running, not $url; 'STACK_KAFKA_STORAGE=$KAFKA_STORAGE $0 restart kafka' to switch"
        return 0
    fi
    ensure_tansu_installed
    require_free_port "$KAFKA_PORT" STACK_KAFKA_PORT kafka
    mkdir -p "$KAFKA_ROOT"
    rm -f "$KAFKA_PID"
    log "kafka: starting tansu on $HOST:$KAFKA_PORT, storage $url"
    {
        printf '\n==== %s starting tansu %s, storage %s\n' "$(date -u +%FT%TZ)" "$TANSU_VERSION" "$url"
    } >>"$KAFKA_LOG"
    # From / : tansu reads a .env from its working directory (dotenv) and
    # resolves sqlite paths against it. Its own env vars (STORAGE_ENGINE,
    # LISTENER_URL, ...) are overridden by the flags; OTLP export and schema
    # registry are switched off. setsid: survives the shell that started it.
    (
        cd /
        exec env -u OTEL_EXPORTER_OTLP_ENDPOINT -u SCHEMA_REGISTRY \
            RUST_LOG="${STACK_KAFKA_RUST_LOG:-warn}" NO_COLOR=1 \
            setsid "$TANSU" broker \
            --cluster-id gamestream \
            --listener-url "tcp://$HOST:$KAFKA_PORT" \
            --advertised-listener-url "tcp://$HOST:$KAFKA_PORT" \
            --storage-engine "$url"
    ) </dev/null >>"$KAFKA_LOG" 2>&1 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$KAFKA_PID"
    printf '%s\n' "$url" >"$KAFKA_ROOT/storage"
    local deadline=$((SECONDS + TIMEOUT))
    until kafka_ready "$KAFKA_PORT"; do
        kill -0 "$pid" 2>/dev/null || die_log "kafka: tansu exited during startup" "$KAFKA_LOG"
        ((SECONDS < deadline)) || die_log "kafka: tansu not answering on $HOST:$KAFKA_PORT after ${TIMEOUT}s" "$KAFKA_LOG"
        sleep 0.5
    done
    sleep 1 # settle
    pid_is "$pid" tansu || die_log "kafka: tansu (pid $pid) is gone right after startup" "$KAFKA_LOG"
    record_port kafka "$KAFKA_PORT"
    printf 'tansu\n' >"$KAFKA_FLAVOUR_FILE"
    if [[ $url == sqlite://* ]]; then index_kafka_sqlite; fi
    log "kafka: running (pid $pid) on $HOST:$KAFKA_PORT"
}

# tansu 0.6's sqlite schema has no index on header (topition, offset_id) and it
# reads the headers of every record it fetches: without the index each fetched
# record scans the whole header table (every event has two headers), so the
# broker's CPU grows with the records stored until produce acks time out (a
# whole core at ~30k records). Idempotent; tansu has created its schema by now.
index_kafka_sqlite() {
    if ! command -v python3 >/dev/null 2>&1; then
        warn "kafka: python3 not found, cannot index the sqlite header table (fetches slow down as records accumulate)"
        return 0
    fi
    python3 - "$KAFKA_DB" <<'PY' || die_log "kafka: cannot index the header table of $KAFKA_DB" "$KAFKA_LOG"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("create index if not exists header_topition_offset_id on header (topition, offset_id)")
db.commit()
PY
}

stop_tansu() {
    local pid
    if ! pid=$(tansu_pid); then
        rm -f "$KAFKA_PID"
        return 1
    fi
    log "kafka: stopping tansu (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    stop_wait "$pid" tansu kafka
    rm -f "$KAFKA_PID"
}

# ----------------------------------------------------- kafka (Apache Kafka) --

# the pid of the stack's Apache Kafka broker, if it runs
apache_pid() {
    local line
    line=$("$KAFKA_SH" status --dir "$KAFKA_ROOT" 2>/dev/null) || return 1
    # "running pid N ..." (or "starting pid N ..." before it has started)
    line=${line#* pid }
    printf '%s\n' "${line%% *}"
}

start_apache() {
    local pid
    if pid=$(apache_pid); then
        local port
        port=$(recorded_port kafka "$KAFKA_PORT")
        log "kafka: Apache Kafka already running (pid $pid) on $HOST:$port"
        [[ $port == "$KAFKA_PORT" ]] || warn "kafka runs on $port, not STACK_KAFKA_PORT=$KAFKA_PORT; restart it to move it"
        return 0
    fi
    require_free_port "$KAFKA_PORT" STACK_KAFKA_PORT kafka
    require_free_port "$KAFKA_CONTROLLER_PORT" STACK_KAFKA_CONTROLLER_PORT "kafka (controller)"
    log "kafka: starting Apache Kafka on $HOST:$KAFKA_PORT (controller $HOST:$KAFKA_CONTROLLER_PORT), data $KAFKA_ROOT/data"
    mkdir -p "$KAFKA_ROOT"
    # kafka.sh assembles the broker on first use (Maven; apt-get installs Java and
    # Maven when missing), formats the storage on the first start, starts the
    # broker detached (its own session: a Ctrl-C in this terminal does not reach
    # it) and waits until it has started
    pid=$("$KAFKA_SH" start --dir "$KAFKA_ROOT" --port "$KAFKA_PORT" \
        --controller-port "$KAFKA_CONTROLLER_PORT" --heap "$KAFKA_HEAP" --timeout "$TIMEOUT" 9>&-) ||
        die_log "kafka: Apache Kafka did not start" "$KAFKA_ROOT/server.log"
    record_port kafka "$KAFKA_PORT"
    printf 'apache\n' >"$KAFKA_FLAVOUR_FILE"
    log "kafka: running (pid $pid) on $HOST:$KAFKA_PORT"
}

stop_apache() {
    local pid
    pid=$(apache_pid) || return 1
    log "kafka: stopping Apache Kafka (pid $pid)"
    "$KAFKA_SH" stop --dir "$KAFKA_ROOT" --timeout 30 9>&- 2>/dev/null ||
        die "kafka: could not stop Apache Kafka (pid $pid)"
}

# ------------------------------------------------------------------ kafka ---

# Which broker: STACK_KAFKA (apache|tansu), default apache. `start|restart kafka`
# without STACK_KAFKA keep the broker that ran last (a fault-injection restart
# must not swap brokers).
KAFKA_STICKY=0
kafka_flavour() {
    local f=${STACK_KAFKA:-}
    if [[ -z $f && $KAFKA_STICKY -eq 1 && -s $KAFKA_FLAVOUR_FILE ]]; then
        f=$(cat "$KAFKA_FLAVOUR_FILE")
    fi
    f=${f:-apache}
    case $f in
        apache | tansu) printf '%s\n' "$f" ;;
        *) die "STACK_KAFKA must be 'apache' or 'tansu', not '$f'" ;;
    esac
}

# the broker that runs now (apache|tansu), if any
kafka_running() {
    if apache_pid >/dev/null; then
        echo apache
    elif tansu_pid >/dev/null; then
        echo tansu
    else
        return 1
    fi
}

kafka_pid() { apache_pid || tansu_pid; }

start_kafka() {
    local want running
    want=$(kafka_flavour)
    running=$(kafka_running) || running=""
    if [[ -n $running && $running != "$want" ]]; then
        # one port, one broker: the requested one replaces the other
        log "kafka: $running runs, STACK_KAFKA=$want asked for: replacing it"
        "stop_$running"
    fi
    "start_$want"
}

stop_kafka() {
    local stopped=0
    if stop_apache; then stopped=1; fi
    if stop_tansu; then stopped=1; fi
    [[ $stopped -eq 1 ]] || log "kafka: not running"
}

# ------------------------------------------------------------- commands ---

status_line() {
    local svc=$1 pid port extra=""
    case $svc in
        postgres)
            port=$(recorded_port postgres "$PG_PORT")
            extra="  data $PG_DATA"
            pid=$(pg_pid) || pid=""
            ;;
        redis)
            port=$(recorded_port redis "$REDIS_PORT")
            pid=$(redis_pid) || pid=""
            ;;
        kafka)
            port=$(recorded_port kafka "$KAFKA_PORT")
            if pid=$(apache_pid); then
                extra="  Apache Kafka 4.1.1, data $KAFKA_ROOT/data"
            elif pid=$(tansu_pid); then
                extra="  tansu $TANSU_VERSION, storage $(cat "$KAFKA_ROOT/storage" 2>/dev/null || echo '?')"
            else
                pid=""
            fi
            ;;
    esac
    if [[ -n $pid ]]; then
        printf '%-9s running  pid %-7s %s:%s%s\n' "$svc" "$pid" "$HOST" "$port" "$extra"
        return 0
    fi
    printf '%-9s stopped\n' "$svc"
    return 1
}

cmd_status() {
    local rc=0 svc
    for svc in "${SERVICES[@]}"; do status_line "$svc" || rc=3; done
    return $rc
}

cmd_env() {
    local pg redis kafka
    pg=$(if pg_pid >/dev/null; then recorded_port postgres "$PG_PORT"; else echo "$PG_PORT"; fi)
    redis=$(if redis_pid >/dev/null; then recorded_port redis "$REDIS_PORT"; else echo "$REDIS_PORT"; fi)
    kafka=$(if kafka_pid >/dev/null; then recorded_port kafka "$KAFKA_PORT"; else echo "$KAFKA_PORT"; fi)
    printf 'export %s=%q\n' \
        KAFKA_BOOTSTRAP_SERVERS "$HOST:$kafka" \
        DB_HOST "$HOST" \
        DB_PORT "$pg" \
        DB_NAME "$DB_NAME_" \
        DB_USER "$DB_USER_" \
        DB_PASSWORD "$DB_PASSWORD_" \
        REDIS_HOST "$HOST" \
        REDIS_PORT "$redis"
}

cmd_up() {
    start_postgres
    start_redis
    start_kafka
    echo
    cmd_status || true
    echo
    echo "# environment (eval \"\$($0 env)\"):"
    cmd_env
}

cmd_down() {
    stop_kafka
    stop_redis
    stop_postgres
}

usage() {
    cat <<EOF
usage: $0 up|down|status|env
       $0 start|stop|restart postgres|redis|kafka

state dir: $STACK_DIR (STACK_DIR)
ports:     STACK_PG_PORT=$PG_PORT STACK_REDIS_PORT=$REDIS_PORT STACK_KAFKA_PORT=$KAFKA_PORT
           STACK_KAFKA_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT (all on $HOST)
kafka:     STACK_KAFKA=apache|tansu (default apache: Apache Kafka 4.1.1 via deploy/local/kafka.sh)
           tansu only: STACK_KAFKA_STORAGE=memory|sqlite (now: $KAFKA_STORAGE)
EOF
}

# serialise commands that change state (parallel CI jobs may all call `up`).
# The services are started with fd 9 closed (9>&-) so they do not hold the lock.
take_lock() {
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/.lock"
    flock -w 900 9 || die "another stack.sh holds $STACK_DIR/.lock"
}

check_service() {
    case ${1:-} in
        postgres | redis | kafka) ;;
        *) usage >&2; die "unknown service '${1:-}' (postgres|redis|kafka)" ;;
    esac
}

main() {
    local cmd=${1:-}
    case $cmd in
        up) take_lock; cmd_up ;;
        down) take_lock; cmd_down ;;
        status) cmd_status ;;
        env) cmd_env ;;
        start | stop | restart)
            check_service "${2:-}"
            KAFKA_STICKY=1
            take_lock
            case $cmd in
                start) "start_$2" ;;
                stop) "stop_$2" ;;
                restart) "stop_$2"; "start_$2" ;;
            esac
            ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
