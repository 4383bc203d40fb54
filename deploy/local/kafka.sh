#!/usr/bin/env bash
# Apache Kafka 4.1.1 (KRaft, no ZooKeeper) on 127.0.0.1 for the local stack and
# for tests: single nodes, 3-node clusters, PLAINTEXT / SASL_PLAINTEXT / SASL_SSL
# with SCRAM-SHA-512. The broker is assembled from Maven Central jars
# (deploy/local/kafka/pom.xml) into a cache that every later run reuses.
#
#   kafka.sh install | classpath
#   kafka.sh start|run --dir DIR [--port P] [--controller-port C] [options]
#   kafka.sh wait|stop|restart|status|bootstrap --dir DIR
#   kafka.sh cluster up|down|status --dir DIR [--nodes 3] [--base-port P] [options]
#   kafka.sh tls --dir DIR
#   kafka.sh tool CLASS|ALIAS [ARGS...]
#
# `kafka.sh help` and deploy/local/README.md describe every option.
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname "$SCRIPT")
KAFKA_DIR=$SCRIPT_DIR/kafka
POM=$KAFKA_DIR/pom.xml
KAFKA_VERSION=4.1.1
HOST=127.0.0.1

CACHE_ROOT=${KAFKA_SH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gamestream}
DIST=$CACHE_ROOT/kafka-$KAFKA_VERSION
LIBS=$DIST/libs
MARKER=$DIST/.complete
CLASSPATH_FILE=$DIST/classpath

TIMEOUT=${KAFKA_SH_TIMEOUT:-60}
STOP_TIMEOUT=${KAFKA_SH_STOP_TIMEOUT:-30}
HEAP=${KAFKA_SH_HEAP:-512m}
BROKER_USER=kafka-broker # SCRAM user the brokers authenticate to each other with

# --------------------------------------------------------------- helpers ---

log() { printf '[kafka.sh] %s\n' "$*" >&2; }
warn() { printf '[kafka.sh] warning: %s\n' "$*" >&2; }
die() {
    printf '[kafka.sh] error: %s\n' "$*" >&2
    exit 1
}
# exit status 2: bad usage; 4: a port is taken (callers may retry on other ports)
usage_die() {
    printf '[kafka.sh] error: %s (kafka.sh help)\n' "$*" >&2
    exit 2
}

# print the tail of log files to stderr
show_logs() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf '[kafka.sh] ---- last lines of %s ----\n' "$f" >&2
        tail -n 25 "$f" >&2 || true
    done
    printf '[kafka.sh] ----\n' >&2
}

is_root() { [[ $(id -u) -eq 0 ]]; }

as_admin() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        as_admin env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_admin env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}

# major version of the `java` on PATH (0 when there is none)
java_major() {
    local v
    command -v java >/dev/null 2>&1 || {
        echo 0
        return
    }
    v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
    v=${v#1.}
    echo "${v%%[.+-]*}"
}

ensure_java() {
    if (($(java_major) < 17)); then
        apt_install openjdk-17-jre-headless
        (($(java_major) >= 17)) || die "Kafka $KAFKA_VERSION needs Java 17+; 'java' on PATH is $(java_major)"
    fi
}

ensure_maven() {
    command -v mvn >/dev/null 2>&1 || apt_install maven
}

ensure_openssl() {
    command -v openssl >/dev/null 2>&1 || apt_install openssl
}

# does a TCP connect to 127.0.0.1:$1 succeed?
tcp_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

port_holder() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n 1 || true
}

require_free_port() {
    local port=$1 what=$2 holder
    if tcp_open "$port"; then
        holder=$(port_holder "$port")
        printf '[kafka.sh] error: %s port %s:%s is already in use%s\n' "$what" "$HOST" "$port" "${holder:+ by $holder}" >&2
        exit 4
    fi
}

# a random port in [20000, 30000) such that $1 consecutive ports are free
free_port_run() {
    local count=$1 base i tries=0
    while ((tries++ < 200)); do
        base=$((20000 + RANDOM % (10000 - count)))
        for ((i = 0; i < count; i++)); do
            tcp_open $((base + i)) && continue 2
        done
        echo "$base"
        return 0
    done
    die "found no $count free consecutive ports"
}

valid_port() { [[ $1 =~ ^[0-9]+$ ]] && (($1 > 0 && $1 < 65536)); }

abs_dir() {
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

# a Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as
# `kafka-storage random-uuid`; like Kafka, never one that starts with '-')
new_cluster_id() {
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        [[ $id == -* || $id == AAAAAAAAAAAAAAAAAAAAA* ]] || break
    done
    printf '%s\n' "$id"
}

new_secret() { head -c 24 /dev/urandom | base64 | tr '+/' 'xy' | tr -d '=\n'; }

# ---------------------------------------------------------------- install ---

# cache key: the pom's content (a changed pom re-assembles)
pom_sum() { sha256sum "$POM" | cut -c1-16; }

# the running JDK, for the class-data-sharing archive (an archive is only valid
# for the JVM that wrote it)
jdk_fingerprint() {
    local java jvm
    java=$(readlink -f "$(command -v java)")
    jvm=$(dirname "$(dirname "$java")")/lib/server/libjvm.so
    [[ -f $jvm ]] || jvm=$java
    stat -L -c '%s-%Y' "$jvm"
}

cds_archive() { printf '%s/cds/jdk-%s.jsa\n' "$DIST" "$(jdk_fingerprint)"; }

dist_complete() { [[ -f $MARKER && $(cat "$MARKER" 2>/dev/null) == "$(pom_sum)" && -s $CLASSPATH_FILE ]]; }

# assemble the jars (idempotent; concurrent callers wait for the first)
cmd_install() {
    if command -v java >/dev/null 2>&1 && dist_complete &&
        [[ -f $(cds_archive) || -f $DIST/cds/.skip-$(jdk_fingerprint) ]]; then
        return 0
    fi
    ensure_java
    mkdir -p "$DIST"
    local lockfd
    exec {lockfd}>"$DIST/.lock"
    flock -w 900 "$lockfd" || die "another kafka.sh install holds $DIST/.lock"
    if ! dist_complete; then
        ensure_maven
        log "assembling Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS (log: $DIST/maven.log)"
        local t0=$SECONDS tmp=$DIST/libs.tmp.$$
        rm -rf "$tmp" "$MARKER"
        cp "$POM" "$DIST/pom.xml"
        if ! (cd "$DIST" && mvn -q -B -Dstyle.color=never -f "$DIST/pom.xml" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp") \
            </dev/null >"$DIST/maven.log" 2>&1; then
            rm -rf "$tmp"
            show_logs "$DIST/maven.log"
            die "maven could not assemble Kafka $KAFKA_VERSION"
        fi
        [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar && -f $tmp/kafka-tools-$KAFKA_VERSION.jar ]] ||
            die "maven ran but $tmp lacks the Kafka jars"
        rm -rf "$LIBS" "$DIST/cds"
        mv "$tmp" "$LIBS"
        # an explicit, sorted classpath (not libs/*): the class-data-sharing archive
        # records it and is only used with exactly the same one
        find "$LIBS" -maxdepth 1 -name '*.jar' | LC_ALL=C sort | paste -sd: >"$CLASSPATH_FILE"
        pom_sum >"$MARKER"
        log "assembled $(find "$LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - t0))s"
    fi
    if [[ ! -f $(cds_archive) && ! -f $DIST/cds/.skip-$(jdk_fingerprint) ]]; then
        build_cds_archive || true
    fi
    exec {lockfd}>&-
}

# Class-data sharing: an archive of the classes a broker loads up to "started",
# written once by a throwaway broker at exit (-XX:ArchiveClassesAtExit). Every
# later JVM maps it instead of parsing and verifying ~5,000 classes: a broker
# starts in ~3.5 s instead of ~6 s, a tool in ~1.5 s instead of ~3 s.
# Best effort: without it everything works, only slower.
build_cds_archive() {
    local archive dir ports pid deadline
    archive=$(cds_archive)
    mkdir -p "$DIST/cds"
    rm -f "$DIST"/cds/*.jsa "$DIST"/cds/.skip-*
    log "writing a class-data-sharing archive for faster broker starts (once, ~15 s)"
    dir=$(mktemp -d "$DIST/cds/build.XXXXXX")
    ports=$(free_port_run 2)
    write_properties "$dir" 1 "$ports" $((ports + 1)) "1@$HOST:$((ports + 1))" PLAINTEXT >"$dir/server.properties"
    if ! java_tool kafka.tools.StorageTool format -t "$(new_cluster_id)" -c "$dir/server.properties" >"$dir/format.log" 2>&1; then
        show_logs "$dir/format.log"
        warn "no class-data-sharing archive (format failed); brokers start without it"
        touch "$DIST/cds/.skip-$(jdk_fingerprint)"
        return 1
    fi
    local opts=() check=()
    mapfile -t opts < <(broker_jvm_opts)
    (
        exec setsid java "${opts[@]}" -XX:ArchiveClassesAtExit="$archive.tmp" \
            -Dkafka.logs.dir="$dir" -cp "$(cat "$CLASSPATH_FILE")" kafka.Kafka "$dir/server.properties"
    ) </dev/null >"$dir/kafka.out" 2>&1 {lockfd}>&- &
    pid=$!
    deadline=$((SECONDS + 120))
    until grep -q 'Kafka Server started' "$dir/lifecycle.log" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS > deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            show_logs "$dir/server.log" "$dir/kafka.out"
            warn "no class-data-sharing archive (the throwaway broker did not start)"
            touch "$DIST/cds/.skip-$(jdk_fingerprint)"
            return 1
        fi
        sleep 0.2
    done
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    # the JVM must map it (-Xshare:on fails when it cannot)
    mapfile -t check < <(tool_jvm_opts_for "$archive.tmp")
    if [[ -s $archive.tmp ]] && java "${check[@]}" -Xshare:on -cp "$(cat "$CLASSPATH_FILE")" \
        kafka.tools.StorageTool version >/dev/null 2>&1; then
        mv "$archive.tmp" "$archive"
        rm -rf "$dir"
    else
        rm -f "$archive.tmp"
        warn "no class-data-sharing archive (the JVM did not write a usable one; see $dir/kafka.out)"
        touch "$DIST/cds/.skip-$(jdk_fingerprint)"
        return 1
    fi
}

cmd_classpath() {
    cmd_install
    cat "$CLASSPATH_FILE"
}

# ------------------------------------------------------------------ JVMs ---

# -Xlog: JVM warnings (e.g. a class-data-sharing archive it cannot use) go to
# stderr, never to stdout where the tools print their answers.
JVM_LOG_OPTS=(-Xlog:disable -Xlog:all=warning:stderr)

cds_opts() {
    local archive
    archive=$(cds_archive)
    [[ -f $archive ]] && printf -- '-XX:SharedArchiveFile=%s\n' "$archive"
    return 0
}

# Small heap, serial GC (2 cores, one heap of at most 512 MB: no concurrent
# collector threads to feed), no hsperfdata files.
broker_jvm_opts() {
    printf '%s\n' -Xms128m "-Xmx$HEAP" -XX:+UseSerialGC -XX:-UsePerfData \
        -XX:+ExitOnOutOfMemoryError "${JVM_LOG_OPTS[@]}" -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.yaml"
    # shellcheck disable=SC2086 # a list of options
    [[ -z ${KAFKA_SH_JVM_OPTS:-} ]] || printf '%s\n' $KAFKA_SH_JVM_OPTS
}

# tools: short-lived, so the quick C1 compiler only (-XX:TieredStopAtLevel=1)
tool_jvm_opts_for() {
    local archive=${1:-}
    printf '%s\n' -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData \
        "${JVM_LOG_OPTS[@]}" -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.yaml"
    [[ -z $archive ]] || printf -- '-XX:SharedArchiveFile=%s\n' "$archive"
}

# the command line of a Kafka tool class (no install check: callers did it)
tool_command() {
    local archive opts=()
    archive=$(cds_archive)
    [[ -f $archive ]] || archive=""
    mapfile -t opts < <(tool_jvm_opts_for "$archive")
    printf '%s\n' java "${opts[@]}" -cp "$(cat "$CLASSPATH_FILE")"
}

# run a Kafka class with the cached classpath
java_tool() {
    local cmd=()
    mapfile -t cmd < <(tool_command)
    "${cmd[@]}" "$@"
}

tool_class() {
    case $1 in
        topics) echo org.apache.kafka.tools.TopicCommand ;;
        groups | consumer-groups) echo org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
        configs) echo kafka.admin.ConfigCommand ;;
        storage) echo kafka.tools.StorageTool ;;
        quorum | metadata-quorum) echo org.apache.kafka.tools.MetadataQuorumCommand ;;
        features) echo org.apache.kafka.tools.FeatureCommand ;;
        cluster) echo org.apache.kafka.tools.ClusterTool ;;
        api-versions) echo org.apache.kafka.tools.BrokerApiVersionsCommand ;;
        console-producer) echo org.apache.kafka.tools.ConsoleProducer ;;
        console-consumer) echo org.apache.kafka.tools.consumer.ConsoleConsumer ;;
        producer-perf) echo org.apache.kafka.tools.ProducerPerformance ;;
        consumer-perf) echo org.apache.kafka.tools.ConsumerPerformance ;;
        get-offsets) echo org.apache.kafka.tools.GetOffsetShell ;;
        delete-records) echo org.apache.kafka.tools.DeleteRecordsCommand ;;
        log-dirs) echo org.apache.kafka.tools.LogDirsCommand ;;
        leader-election) echo org.apache.kafka.tools.LeaderElectionCommand ;;
        reassign) echo org.apache.kafka.tools.reassign.ReassignPartitionsCommand ;;
        acls) echo org.apache.kafka.tools.AclCommand ;;
        transactions) echo org.apache.kafka.tools.TransactionsCommand ;;
        *) echo "$1" ;;
    esac
}

cmd_tool() {
    [[ $# -ge 1 ]] || usage_die "tool: which class?"
    local class
    class=$(tool_class "$1")
    shift
    cmd_install
    local cmd=()
    mapfile -t cmd < <(tool_command)
    exec "${cmd[@]}" "$class" "$@"
}

# ------------------------------------------------------------------- TLS ---

# CA + broker certificate (SANs 127.0.0.1, localhost) in DIR; idempotent
cmd_tls() {
    local dir=""
    while [[ $# -gt 0 ]]; do
        case $1 in
            --dir) dir=${2:?--dir needs a value}; shift 2 ;;
            *) usage_die "tls: unknown option $1" ;;
        esac
    done
    [[ -n $dir ]] || usage_die "tls: --dir is required"
    make_tls "$(abs_dir "$dir")"
    printf '%s\n' "$(abs_dir "$dir")"
}

make_tls() {
    local d=$1 lockfd
    mkdir -p "$d"
    [[ -s $d/broker.pem && -s $d/ca.crt ]] && return 0
    exec {lockfd}>"$d/.lock"
    flock -w 120 "$lockfd" || die "tls: $d/.lock is busy"
    if [[ -s $d/broker.pem && -s $d/ca.crt ]]; then
        exec {lockfd}>&-
        return 0
    fi
    ensure_openssl
    log "tls: writing a CA and a broker certificate for $HOST/localhost in $d"
    (
        set -e
        cd "$d"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
            -keyout ca.key -out ca.crt -subj "/CN=gamestream local Kafka CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey rsa:2048 -nodes -sha256 \
            -keyout broker.key -out broker.csr -subj "/CN=localhost"
        printf '%s\n' "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" \
            "extendedKeyUsage=serverAuth,clientAuth" \
            "subjectAltName=IP:127.0.0.1,DNS:localhost" >broker.ext
        openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -sha256 -days 3650 -out broker.crt -extfile broker.ext
        # Kafka's PEM key store: the PKCS#8 key, then the certificate chain
        cat broker.key broker.crt ca.crt >broker.pem.tmp
        mv broker.pem.tmp broker.pem
        rm -f broker.csr broker.ext ca.srl
        chmod 644 ca.crt broker.crt
    ) >"$d/openssl.log" 2>&1 || {
        show_logs "$d/openssl.log"
        die "tls: openssl failed"
    }
    exec {lockfd}>&-
}

# ------------------------------------------------------------ one broker ---

# is pid $1 alive (and not a zombie)?
pid_alive() {
    local stat
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# the broker's pid if DIR's broker runs (a live JVM started on DIR's config)
broker_pid() {
    local dir=$1 pid
    [[ -f $dir/kafka.pid ]] || return 1
    pid=$(cat "$dir/kafka.pid" 2>/dev/null || true)
    pid_alive "$pid" || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$dir/server.properties" || return 1
    printf '%s\n' "$pid"
}

# A server.properties. Args: dir node-id port controller-port voters security
write_properties() {
    local dir=$1 node=$2 port=$3 cport=$4 voters=$5 security=$6
    local n rf isr name lname
    n=$(awk -F, '{print NF}' <<<"$voters")
    if ((n >= 3)); then rf=3 isr=2; elif ((n == 2)); then rf=2 isr=1; else rf=1 isr=1; fi
    name=$security
    lname=$(tr '[:upper:]' '[:lower:]' <<<"$name")
    cat <<EOF
# Written by deploy/local/kafka.sh (rewritten by every \`kafka.sh start\` that names
# ports); Apache Kafka $KAFKA_VERSION, KRaft combined broker+controller.
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
listeners=$name://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=$name://$HOST:$port
listener.security.protocol.map=$name:$security,CONTROLLER:PLAINTEXT
inter.broker.listener.name=$name
log.dirs=$dir/data

# topics and groups (a dev/test broker: topics appear when first used)
num.partitions=3
auto.create.topics.enable=true
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0

# a broker killed with SIGKILL can register again only once the controller has
# fenced its old session: 6 s instead of 9 (a restart after kill -9 takes ~10 s
# instead of ~14; in a cluster, its partitions move sooner)
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000

# 2 cores
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
EOF
    if [[ $security == SASL_* ]]; then
        cat <<EOF

# SCRAM-SHA-512 on the $name listener, for clients and between brokers (as
# $BROKER_USER); users were added when the storage was formatted
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.$lname.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$BROKER_USER" password="$(cat "$SHARED/cluster.secret")";
EOF
    fi
    if [[ $security == SASL_SSL ]]; then
        cat <<EOF
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.crt
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
EOF
    fi
    if [[ ${#EXTRA_PROPS[@]} -gt 0 ]]; then
        printf '\n# --set\n'
        printf '%s\n' "${EXTRA_PROPS[@]}"
    fi
}

# client settings for the tools (--command-config DIR/client.properties)
write_client_properties() {
    local security=$1 user=$2 password=$3
    printf '# for kafka.sh tool ... --command-config this-file (written by kafka.sh)\n'
    printf 'security.protocol=%s\n' "$security"
    if [[ $security == SASL_* ]]; then
        printf 'sasl.mechanism=SCRAM-SHA-512\n'
        printf 'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";\n' "$user" "$password"
    fi
    if [[ $security == SASL_SSL ]]; then
        printf 'ssl.truststore.type=PEM\nssl.truststore.location=%s/ca.crt\n' "$TLS_DIR"
    fi
}

# options of start/run/cluster up
DIR="" NODE_ID="" PORT="" CPORT="" VOTERS="" SECURITY="" CLUSTER_ID="" TLS_DIR=""
SCRAM=() EXTRA_PROPS=() NO_WAIT=0 WATCH_PID="" KILL=0 NODES=3 BASE_PORT=""
SHARED="" LOG_OFFSET=0 HEAP_GIVEN=""

parse_opts() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --dir) DIR=${2:?--dir needs a value}; shift 2 ;;
            --node-id) NODE_ID=${2:?}; shift 2 ;;
            --port) PORT=${2:?}; shift 2 ;;
            --controller-port) CPORT=${2:?}; shift 2 ;;
            --voters) VOTERS=${2:?}; shift 2 ;;
            --security) SECURITY=${2:?}; shift 2 ;;
            --scram) SCRAM+=("${2:?}"); shift 2 ;;
            --tls-dir) TLS_DIR=${2:?}; shift 2 ;;
            --cluster-id) CLUSTER_ID=${2:?}; shift 2 ;;
            --set) EXTRA_PROPS+=("${2:?}"); shift 2 ;;
            --heap) HEAP=${2:?} HEAP_GIVEN=1; shift 2 ;;
            --timeout) TIMEOUT=${2:?}; STOP_TIMEOUT=$2; shift 2 ;;
            --watch-pid) WATCH_PID=${2:?}; shift 2 ;;
            --no-wait) NO_WAIT=1; shift ;;
            --kill) KILL=1; shift ;;
            --nodes) NODES=${2:?}; shift 2 ;;
            --base-port) BASE_PORT=${2:?}; shift 2 ;;
            *) usage_die "unknown option '$1'" ;;
        esac
    done
    [[ -n $DIR ]] || usage_die "--dir is required"
    DIR=$(abs_dir "$DIR")
    [[ $TIMEOUT =~ ^[0-9]+$ ]] || usage_die "--timeout takes seconds"
}

# has the user given settings (rather than "start DIR again as configured")?
config_given() {
    [[ -n $PORT$CPORT$VOTERS$SECURITY$NODE_ID$CLUSTER_ID$TLS_DIR$HEAP_GIVEN || ${#SCRAM[@]} -gt 0 || ${#EXTRA_PROPS[@]} -gt 0 ]]
}

# Validate options, fill defaults and write DIR/kafka.env, server.properties and
# client.properties. DIR/kafka.env remembers the settings for restarts.
configure() {
    if ! config_given && [[ -f $DIR/kafka.env ]]; then
        load_env
        return 0
    fi
    # defaults: DIR's earlier settings (options not given keep them), else new
    local old=("" "" "" "" "" "") old_port old_cport old_security old_node old_voters old_tls
    if [[ -f $DIR/kafka.env ]]; then
        # shellcheck disable=SC1091
        mapfile -t old < <(. "$DIR/kafka.env" &&
            printf '%s\n' "$PORT" "$CONTROLLER_PORT" "$SECURITY" "$NODE_ID" "$VOTERS" "$TLS_DIR")
    fi
    old_port=${old[0]} old_cport=${old[1]} old_security=${old[2]} old_node=${old[3]}
    old_voters=${old[4]} old_tls=${old[5]}
    if [[ -z $VOTERS$CPORT && ( -z $NODE_ID || $NODE_ID == "$old_node" ) ]]; then VOTERS=$old_voters; fi
    TLS_DIR=${TLS_DIR:-$old_tls}
    NODE_ID=${NODE_ID:-${old_node:-1}}
    [[ $NODE_ID =~ ^[0-9]+$ ]] || usage_die "--node-id takes a number"
    SECURITY=${SECURITY:-${old_security:-PLAINTEXT}}
    case $SECURITY in
        PLAINTEXT | SASL_PLAINTEXT | SASL_SSL) ;;
        *) usage_die "--security is PLAINTEXT, SASL_PLAINTEXT or SASL_SSL, not '$SECURITY'" ;;
    esac
    # the controller port: given, or this node's entry in --voters
    if [[ -z $CPORT && -n $VOTERS ]]; then
        CPORT=$(tr ',' '\n' <<<"$VOTERS" | awk -F'[@:]' -v n="$NODE_ID" '$1 == n {print $3}')
    fi
    PORT=${PORT:-$old_port}
    CPORT=${CPORT:-$old_cport}
    if [[ -z $PORT && -z $CPORT ]]; then
        PORT=$(free_port_run 2)
        CPORT=$((PORT + 1))
    elif [[ -z $CPORT ]]; then
        usage_die "--controller-port is required with --port"
    elif [[ -z $PORT ]]; then
        usage_die "--port is required"
    fi
    valid_port "$PORT" || usage_die "bad --port '$PORT'"
    valid_port "$CPORT" || usage_die "bad --controller-port '$CPORT'"
    [[ $PORT != "$CPORT" ]] || usage_die "--port and --controller-port must differ"
    VOTERS=${VOTERS:-$NODE_ID@$HOST:$CPORT}
    [[ $VOTERS =~ ^[0-9]+@[^,:@]+:[0-9]+(,[0-9]+@[^,:@]+:[0-9]+)*$ ]] ||
        usage_die "--voters is ID@HOST:PORT[,ID@HOST:PORT...], not '$VOTERS'"
    tr ',' '\n' <<<"$VOTERS" | grep -qx "$NODE_ID@[^:]*:$CPORT" ||
        usage_die "--voters '$VOTERS' must list node $NODE_ID with its controller port $CPORT"
    local nvoters
    nvoters=$(awk -F, '{print NF}' <<<"$VOTERS")
    # cluster-wide files (cluster.id, cluster.secret, tls/): a single node keeps
    # them in DIR, a node of a cluster in the parent of DIR (shared by the nodes in
    # sibling directories, as `cluster up` lays them out)
    if ((nvoters > 1)); then SHARED=$(dirname "$DIR"); else SHARED=$DIR; fi
    local s
    for s in "${SCRAM[@]}"; do
        [[ $s =~ ^[A-Za-z0-9._@-]+:[A-Za-z0-9._@~+!#%^*:-]+$ ]] ||
            usage_die "--scram is USER:PASSWORD (user [A-Za-z0-9._@-], password [A-Za-z0-9._@~+!#%^*:-]), not '$s'"
        [[ ${s%%:*} != "$BROKER_USER" ]] || usage_die "--scram: '$BROKER_USER' is the brokers' own user"
    done
    if [[ $SECURITY == SASL_* && ${#SCRAM[@]} -eq 0 ]]; then
        if [[ -f $DIR/scram.users ]]; then
            mapfile -t SCRAM <"$DIR/scram.users"
        else
            usage_die "--security $SECURITY needs at least one --scram USER:PASSWORD"
        fi
    fi
    local p
    for p in "${EXTRA_PROPS[@]}"; do
        [[ $p =~ ^[A-Za-z0-9._-]+=.*$ ]] || usage_die "--set takes KEY=VALUE, not '$p'"
    done
    if [[ $SECURITY == SASL_* ]]; then
        local lockfd
        exec {lockfd}>"$SHARED/.cluster.lock"
        flock -w 60 "$lockfd" || die "$SHARED/.cluster.lock is busy"
        [[ -s $SHARED/cluster.secret ]] || (umask 077 && new_secret >"$SHARED/cluster.secret")
        exec {lockfd}>&-
    fi
    if [[ $SECURITY == SASL_SSL ]]; then
        TLS_DIR=$(abs_dir "${TLS_DIR:-$SHARED/tls}")
        make_tls "$TLS_DIR"
    else
        TLS_DIR=${TLS_DIR:+$(abs_dir "$TLS_DIR")}
    fi

    local props
    props=$(write_properties "$DIR" "$NODE_ID" "$PORT" "$CPORT" "$VOTERS" "$SECURITY")
    if [[ -f $DIR/server.properties ]] && [[ $(cat "$DIR/server.properties") != "$props" ]] &&
        broker_pid "$DIR" >/dev/null; then
        warn "the broker in $DIR runs with other settings; 'kafka.sh restart --dir $DIR' applies them"
    fi
    printf '%s\n' "$props" >"$DIR/server.properties"
    local first=${SCRAM[0]:-}
    write_client_properties "$SECURITY" "${first%%:*}" "${first#*:}" >"$DIR/client.properties"
    {
        printf '# written by kafka.sh: the settings of this broker (restart uses them)\n'
        printf '%s=%q\n' PORT "$PORT" CONTROLLER_PORT "$CPORT" NODE_ID "$NODE_ID" \
            VOTERS "$VOTERS" SECURITY "$SECURITY" SHARED "$SHARED" TLS_DIR "$TLS_DIR" HEAP "$HEAP"
    } >"$DIR/kafka.env"
    if [[ ${#SCRAM[@]} -gt 0 ]]; then printf '%s\n' "${SCRAM[@]}" >"$DIR/scram.users"; fi
    if [[ -f $DIR/scram.users ]]; then chmod 600 "$DIR/scram.users"; fi
}

load_env() {
    [[ -f $DIR/kafka.env ]] || die "$DIR has no broker configuration; start it with --port/--controller-port first"
    # shellcheck disable=SC1091
    . "$DIR/kafka.env"
    CPORT=$CONTROLLER_PORT
    if [[ -f $DIR/scram.users ]]; then mapfile -t SCRAM <"$DIR/scram.users"; fi
}

# the cluster id of DIR: --cluster-id, else the one DIR was formatted with, else
# the cluster's shared one, else a new one
resolve_cluster_id() {
    local id=$CLUSTER_ID lockfd
    if [[ -z $id && -s $DIR/cluster.id ]]; then id=$(cat "$DIR/cluster.id"); fi
    if [[ -z $id ]]; then
        exec {lockfd}>"$SHARED/.cluster.lock"
        flock -w 60 "$lockfd" || die "$SHARED/.cluster.lock is busy"
        [[ -s $SHARED/cluster.id ]] || new_cluster_id >"$SHARED/cluster.id"
        id=$(cat "$SHARED/cluster.id")
        exec {lockfd}>&-
    fi
    printf '%s\n' "$id" >"$DIR/cluster.id"
    printf '%s\n' "$id"
}

# format the storage on the first start only (SCRAM users go in here)
format_storage() {
    local id args=() s
    if [[ -f $DIR/data/meta.properties ]]; then
        for s in "${SCRAM[@]}"; do
            grep -qxF "${s%%:*}" "$DIR/scram.formatted" 2>/dev/null ||
                warn "SCRAM user '${s%%:*}' was not there when $DIR/data was formatted; add it with: kafka.sh tool configs --bootstrap-server $HOST:$PORT --command-config $DIR/client.properties --alter --add-config 'SCRAM-SHA-512=[password=...]' --entity-type users --entity-name ${s%%:*}"
        done
        return 0
    fi
    id=$(resolve_cluster_id)
    if [[ $SECURITY == SASL_* ]]; then
        args+=(--add-scram "SCRAM-SHA-512=[name=$BROKER_USER,password=$(cat "$SHARED/cluster.secret")]")
        for s in "${SCRAM[@]}"; do
            args+=(--add-scram "SCRAM-SHA-512=[name=${s%%:*},password=${s#*:}]")
        done
    fi
    log "formatting $DIR/data (cluster $id, node $NODE_ID)"
    if ! java_tool kafka.tools.StorageTool format -t "$id" -c "$DIR/server.properties" "${args[@]}" \
        >"$DIR/format.log" 2>&1; then
        show_logs "$DIR/format.log"
        die "formatting $DIR/data failed"
    fi
    if [[ $SECURITY == SASL_* ]]; then
        for s in "${SCRAM[@]}"; do printf '%s\n' "${s%%:*}"; done >"$DIR/scram.formatted"
    fi
}

# the broker's command line, one word a line
broker_command() {
    local opts=() cds=()
    mapfile -t opts < <(broker_jvm_opts)
    mapfile -t cds < <(cds_opts)
    printf '%s\n' java "${opts[@]}" "${cds[@]}" "-Dkafka.logs.dir=$DIR" \
        -cp "$(cat "$CLASSPATH_FILE")" kafka.Kafka "$DIR/server.properties"
}

# everything before the JVM starts; $1 = start|run
prepare_start() {
    cmd_install
    configure
    require_free_port "$PORT" "client (--port)"
    require_free_port "$CPORT" "controller (--controller-port)"
    format_storage
    rm -f "$DIR/kafka.pid" "$DIR/lifecycle.log"
    # where this start's lines begin in server.log (it appends)
    LOG_OFFSET=$(stat -c %s "$DIR/server.log" 2>/dev/null || echo 0)
    printf '\n==== %s starting Apache Kafka %s, node %s, %s://%s:%s\n' \
        "$(date -u +%FT%TZ)" "$KAFKA_VERSION" "$NODE_ID" "$SECURITY" "$HOST" "$PORT" >>"$DIR/kafka.out"
}

# wait until the broker that runs as $1 in DIR logged "started"
wait_started() {
    local pid=$1 deadline=$((SECONDS + TIMEOUT))
    until grep -q 'Kafka Server started' "$DIR/lifecycle.log" 2>/dev/null; do
        # (until the JVM has replaced the launching shell, the pid is not yet "broker_pid")
        if ! pid_alive "$pid"; then
            # gone: a port taken between our check and the JVM's bind is exit 4
            if tail -c +"$((LOG_OFFSET + 1))" "$DIR/server.log" 2>/dev/null | grep -q 'Address already in use'; then
                tail -c +"$((LOG_OFFSET + 1))" "$DIR/server.log" | grep -m 1 'Address already in use' >&2 || true
                printf '[kafka.sh] error: the broker in %s could not bind its ports (in use)\n' "$DIR" >&2
                exit 4
            fi
            show_logs "$DIR/server.log" "$DIR/kafka.out"
            die "the broker in $DIR (pid $pid) exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            show_logs "$DIR/server.log" "$DIR/kafka.out"
            die "the broker in $DIR (pid $pid) did not start within ${TIMEOUT}s (still running; 'kafka.sh stop --dir $DIR')"
        fi
        sleep 0.1
    done
}

cmd_start() {
    parse_opts "$@"
    local lockfd pid t0
    exec {lockfd}>"$DIR/.lock"
    flock -w 300 "$lockfd" || die "another kafka.sh works on $DIR"
    if pid=$(broker_pid "$DIR"); then
        if config_given; then configure; else load_env; fi
        log "already running (pid $pid) on $HOST:$PORT"
        if [[ $NO_WAIT -eq 0 ]]; then wait_started "$pid"; fi
        printf '%s\n' "$pid"
        return 0
    fi
    prepare_start
    t0=$(date +%s%N)
    local cmd
    mapfile -t cmd < <(broker_command)
    # setsid: its own session, so a Ctrl-C in the terminal that started it (make
    # run) does not reach it; no inherited fds but the log
    (exec setsid "${cmd[@]}") </dev/null >>"$DIR/kafka.out" 2>&1 {lockfd}>&- 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$DIR/kafka.pid"
    if [[ -n $WATCH_PID ]]; then
        (exec setsid "$SCRIPT" __watch "$DIR" "$pid" "$WATCH_PID") </dev/null >/dev/null 2>&1 {lockfd}>&- 9>&- &
    fi
    if [[ $NO_WAIT -eq 0 ]]; then
        wait_started "$pid"
        log "started node $NODE_ID (pid $pid) on $SECURITY://$HOST:$PORT in $((($(date +%s%N) - t0) / 1000000)) ms"
    else
        log "launched node $NODE_ID (pid $pid) on $SECURITY://$HOST:$PORT"
    fi
    printf '%s\n' "$pid"
}

# foreground: the JVM replaces this script (same pid), for a supervisor that owns it
cmd_run() {
    parse_opts "$@"
    [[ -z $WATCH_PID ]] || usage_die "run: --watch-pid is for start (run's parent owns the JVM)"
    local lockfd pid
    exec {lockfd}>"$DIR/.lock"
    flock -w 300 "$lockfd" || die "another kafka.sh works on $DIR"
    if pid=$(broker_pid "$DIR"); then
        die "a broker already runs in $DIR (pid $pid)"
    fi
    prepare_start
    local cmd
    mapfile -t cmd < <(broker_command)
    printf '%s\n' "$$" >"$DIR/kafka.pid"
    exec {lockfd}>&-
    exec "${cmd[@]}" </dev/null >>"$DIR/kafka.out" 2>&1
}

# `wait --dir DIR`: until the broker of DIR is started. A pid file of a dead
# process is tolerated for 5 s (a `run` just spawned may not have replaced it yet).
cmd_wait() {
    parse_opts "$@"
    local deadline=$((SECONDS + TIMEOUT)) grace=$((SECONDS + 5)) pid
    while :; do
        if pid=$(broker_pid "$DIR") && grep -q 'Kafka Server started' "$DIR/lifecycle.log" 2>/dev/null; then
            printf '%s\n' "$pid"
            return 0
        fi
        if [[ -z $pid ]] && ((SECONDS >= grace)) && [[ -f $DIR/kafka.pid ]]; then
            local p
            p=$(cat "$DIR/kafka.pid" 2>/dev/null || true)
            if [[ -n $p ]] && ! kill -0 "$p" 2>/dev/null; then
                show_logs "$DIR/server.log" "$DIR/kafka.out"
                die "the broker in $DIR (pid $p) is not running"
            fi
        fi
        if ((SECONDS >= deadline)); then
            show_logs "$DIR/server.log" "$DIR/kafka.out"
            die "the broker in $DIR did not start within ${TIMEOUT}s"
        fi
        sleep 0.1
    done
}

# stop DIR's broker: SIGTERM (controlled shutdown) and wait, SIGKILL after
# STOP_TIMEOUT; with --kill, SIGKILL at once (a crash, for fault tests)
stop_broker() {
    local dir=$1 kill=$2 pid deadline
    if ! pid=$(broker_pid "$dir"); then
        rm -f "$dir/kafka.pid"
        return 1
    fi
    if [[ $kill -eq 1 ]]; then
        kill -KILL "$pid" 2>/dev/null || true
    else
        kill -TERM "$pid" 2>/dev/null || true
    fi
    deadline=$((SECONDS + STOP_TIMEOUT))
    while broker_pid "$dir" >/dev/null; do
        if ((SECONDS >= deadline)); then
            warn "pid $pid ($dir) still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
        fi
        sleep 0.1
    done
    rm -f "$dir/kafka.pid"
    return 0
}

cmd_stop() {
    parse_opts "$@"
    local lockfd pid
    exec {lockfd}>"$DIR/.lock"
    flock -w 300 "$lockfd" || die "another kafka.sh works on $DIR"
    pid=$(broker_pid "$DIR") || pid=""
    if stop_broker "$DIR" "$KILL"; then
        log "stopped (pid $pid, $([[ $KILL -eq 1 ]] && echo SIGKILL || echo SIGTERM)) $DIR"
    else
        log "not running: $DIR"
    fi
}

cmd_restart() {
    parse_opts "$@"
    config_given && usage_die "restart takes --dir, --kill, --timeout, --watch-pid only (start applies new settings)"
    [[ -f $DIR/kafka.env ]] || die "$DIR has no broker configuration (nothing to restart)"
    local stop_args=(--dir "$DIR" --timeout "$STOP_TIMEOUT")
    if [[ $KILL -eq 1 ]]; then stop_args+=(--kill); fi
    (cmd_stop "${stop_args[@]}")
    cmd_start --dir "$DIR" --timeout "$TIMEOUT" ${WATCH_PID:+--watch-pid "$WATCH_PID"}
}

# status: one line; exit 0 running, 3 stopped
cmd_status() {
    parse_opts "$@"
    if [[ -f $DIR/cluster.env ]]; then
        cluster_status
        return
    fi
    local pid
    if pid=$(broker_pid "$DIR"); then
        load_env
        local state=starting
        grep -q 'Kafka Server started' "$DIR/lifecycle.log" 2>/dev/null && state=running
        printf '%s pid %s %s://%s:%s node %s dir %s\n' "$state" "$pid" "$SECURITY" "$HOST" "$PORT" "$NODE_ID" "$DIR"
        return 0
    fi
    printf 'stopped dir %s\n' "$DIR"
    return 3
}

# host:port[,host:port...] of DIR (a broker or a cluster directory)
cmd_bootstrap() {
    parse_opts "$@"
    if [[ -f $DIR/cluster.env ]]; then
        # shellcheck disable=SC1091
        (. "$DIR/cluster.env" && cluster_bootstrap_of "$BASE_PORT" "$NODES")
        return
    fi
    load_env
    printf '%s:%s\n' "$HOST" "$PORT"
}

# watchdog of `start --watch-pid`: stop the broker when the watched process exits
cmd_watch() {
    local dir=$1 broker=$2 parent=$3
    DIR=$dir
    while kill -0 "$broker" 2>/dev/null; do
        if ! kill -0 "$parent" 2>/dev/null; then
            stop_broker "$dir" 0 || true
            exit 0
        fi
        sleep 1
    done
}

# ---------------------------------------------------------------- cluster ---

cluster_bootstrap_of() {
    local base=$1 n=$2 i out=()
    for ((i = 0; i < n; i++)); do out+=("$HOST:$((base + i))"); done
    (
        IFS=,
        printf '%s\n' "${out[*]}"
    )
}

# `cluster up`: N combined nodes in DIR/node1..N; client ports BASE..BASE+N-1,
# controller ports BASE+N..BASE+2N-1
cluster_up() {
    parse_opts "$@"
    local lockfd i voters="" pids=() rc=0 t0
    exec {lockfd}>"$DIR/.cluster-up.lock"
    flock -w 300 "$lockfd" || die "another kafka.sh works on $DIR"
    if [[ -f $DIR/cluster.env ]]; then
        local want_nodes=$NODES want_base=$BASE_PORT
        # shellcheck disable=SC1091
        . "$DIR/cluster.env"
        [[ -z $want_base || $want_base == "$BASE_PORT" ]] || warn "cluster in $DIR uses base port $BASE_PORT, not $want_base"
        [[ $want_nodes == 3 || $want_nodes == "$NODES" ]] || warn "cluster in $DIR has $NODES nodes, not $want_nodes"
    else
        if ! [[ $NODES =~ ^[1-9]$ ]]; then usage_die "--nodes is 1..9"; fi
        [[ -n $PORT$CPORT$VOTERS$NODE_ID ]] && usage_die "cluster up sets --port/--controller-port/--voters/--node-id itself (use --base-port)"
        if [[ -z $BASE_PORT ]]; then BASE_PORT=$(free_port_run $((2 * NODES))); fi
        if ! valid_port "$BASE_PORT" || ! valid_port $((BASE_PORT + 2 * NODES - 1)); then
            usage_die "bad --base-port"
        fi
        SECURITY=${SECURITY:-PLAINTEXT}
        printf 'NODES=%q\nBASE_PORT=%q\nSECURITY=%q\n' "$NODES" "$BASE_PORT" "$SECURITY" >"$DIR/cluster.env"
    fi
    for ((i = 1; i <= NODES; i++)); do
        voters+="${voters:+,}$i@$HOST:$((BASE_PORT + NODES + i - 1))"
    done
    cmd_install
    [[ -s $DIR/cluster.id ]] || new_cluster_id >"$DIR/cluster.id"
    if [[ $SECURITY == SASL_* && ! -s $DIR/cluster.secret ]]; then
        (umask 077 && new_secret >"$DIR/cluster.secret")
    fi
    if [[ $SECURITY == SASL_SSL ]]; then make_tls "$(abs_dir "${TLS_DIR:-$DIR/tls}")"; fi
    t0=$(date +%s%N)
    # all nodes at once: none is "started" before a majority of controllers runs
    for ((i = 1; i <= NODES; i++)); do
        local node=$DIR/node$i args=(--dir "$DIR/node$i" --no-wait --timeout "$TIMEOUT")
        if [[ ! -f $node/kafka.env ]]; then
            args+=(--node-id "$i" --port $((BASE_PORT + i - 1)) --controller-port $((BASE_PORT + NODES + i - 1))
                --voters "$voters" --security "$SECURITY" --cluster-id "$(cat "$DIR/cluster.id")" --heap "$HEAP")
            local s p
            for s in "${SCRAM[@]}"; do args+=(--scram "$s"); done
            for p in "${EXTRA_PROPS[@]}"; do args+=(--set "$p"); done
            if [[ -n $TLS_DIR ]]; then args+=(--tls-dir "$TLS_DIR"); fi
        fi
        if [[ -n $WATCH_PID ]]; then args+=(--watch-pid "$WATCH_PID"); fi
        "$SCRIPT" start "${args[@]}" >/dev/null {lockfd}>&- &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || rc=$?; done
    ((rc == 0)) || die "could not launch every node of the cluster in $DIR (exit $rc)"
    for ((i = 1; i <= NODES; i++)); do
        "$SCRIPT" wait --dir "$DIR/node$i" --timeout "$TIMEOUT" >/dev/null {lockfd}>&- ||
            die "node $i of the cluster in $DIR did not start"
    done
    log "cluster of $NODES nodes up in $((($(date +%s%N) - t0) / 1000000)) ms: $(cluster_bootstrap_of "$BASE_PORT" "$NODES")"
    cluster_bootstrap_of "$BASE_PORT" "$NODES"
}

# `cluster down`: SIGTERM to every node at once. A node still in its controlled
# shutdown when a majority of the controllers is gone waits for a quorum that
# will not come back (until --timeout): 3 s after the quorum is lost it gets
# SIGKILL. --kill: SIGKILL to all at once.
cluster_down() {
    parse_opts "$@"
    [[ -f $DIR/cluster.env ]] || die "no cluster in $DIR"
    # shellcheck disable=SC1091
    . "$DIR/cluster.env"
    local i pid pids=() alive stopped=0 lost_at="" deadline=$((SECONDS + STOP_TIMEOUT)) killed=()
    for ((i = 1; i <= NODES; i++)); do
        if pid=$(broker_pid "$DIR/node$i"); then
            kill "-$([[ $KILL -eq 1 ]] && echo KILL || echo TERM)" "$pid" 2>/dev/null || true
            pids[i]=$pid
            stopped=$((stopped + 1))
        fi
    done
    while :; do
        alive=()
        for i in "${!pids[@]}"; do
            if pid_alive "${pids[i]}"; then alive+=("$i"); fi
        done
        ((${#alive[@]} > 0)) || break
        if ((2 * ${#alive[@]} <= NODES)); then
            lost_at=${lost_at:-$SECONDS}
        fi
        if [[ -n $lost_at ]] && ((SECONDS - lost_at >= 3)) || ((SECONDS >= deadline)); then
            for i in "${alive[@]}"; do
                kill -KILL "${pids[i]}" 2>/dev/null || true
                killed+=("node$i")
            done
            sleep 0.2
            continue
        fi
        sleep 0.1
    done
    for ((i = 1; i <= NODES; i++)); do rm -f "$DIR/node$i/kafka.pid"; done
    log "cluster in $DIR: stopped $stopped node(s)${killed[*]:+ (SIGKILL: ${killed[*]}, the controller quorum was gone)}"
}

cluster_status() {
    # shellcheck disable=SC1091
    . "$DIR/cluster.env"
    local i rc=0
    for ((i = 1; i <= NODES; i++)); do
        printf 'node%s: ' "$i"
        (cmd_status --dir "$DIR/node$i") || rc=3
    done
    return $rc
}

cmd_cluster() {
    local sub=${1:-}
    shift || true
    case $sub in
        up) cluster_up "$@" ;;
        down) cluster_down "$@" ;;
        status) parse_opts "$@"; [[ -f $DIR/cluster.env ]] || die "no cluster in $DIR"; cluster_status ;;
        *) usage_die "cluster up|down|status" ;;
    esac
}

# ------------------------------------------------------------------- main ---

usage() {
    cat <<EOF
usage: kafka.sh COMMAND [OPTIONS]        (Apache Kafka $KAFKA_VERSION, KRaft, on $HOST)

  install                      assemble the jars from Maven Central (once; cached) and
                               print the libs directory
  classpath                    print the broker/tools classpath
  start --dir DIR [options]    configure DIR, format its storage on the first start,
                               start the broker in the background, wait until it has
                               started; prints its pid. Already running: prints the pid.
  run --dir DIR [options]      the same, in the foreground (the JVM replaces this script:
                               same pid), for a supervisor that owns the process
  wait --dir DIR               wait until DIR's broker has started; prints its pid
  stop --dir DIR [--kill]      SIGTERM and wait (SIGKILL after --timeout); --kill: SIGKILL
  restart --dir DIR [--kill]   stop, then start with the same settings and data
  status --dir DIR             one line; exit 0 running, 3 stopped (a cluster dir: per node)
  bootstrap --dir DIR          host:port[,...] of a broker or cluster directory
  cluster up --dir DIR [--nodes 3] [--base-port P] [security options]
                               N combined nodes in DIR/node1..N on client ports P..P+N-1,
                               controller ports P+N..P+2N-1 (P: free ports if omitted);
                               prints the bootstrap servers. Again: restarts stopped nodes.
  cluster down --dir DIR [--kill]   stop every node at once
  cluster status --dir DIR
  tls --dir DIR                CA (ca.crt, ca.key) + broker certificate for 127.0.0.1 and
                               localhost (broker.pem = key + chain); idempotent
  tool CLASS|ALIAS [ARGS...]   run a Kafka tool class with the cached classpath. Aliases:
                               topics groups configs storage quorum features cluster
                               api-versions console-producer console-consumer producer-perf
                               consumer-perf get-offsets delete-records log-dirs
                               leader-election reassign acls transactions

start/run options (a directory started before keeps its settings when none are given):
  --port P                  client listener $HOST:P   } both free ports
  --controller-port C       controller listener       } if neither is given
  --node-id N               default 1
  --voters 1@$HOST:C1,2@$HOST:C2,...   controller quorum (default: this node alone)
  --cluster-id ID           default: DIR's, or for a node of a multi-voter quorum the
                            one in DIR/../cluster.id (created by the first node)
  --security PLAINTEXT|SASL_PLAINTEXT|SASL_SSL   client listener (default PLAINTEXT);
                            SASL: SCRAM-SHA-512, brokers authenticate to each other too
  --scram USER:PASSWORD     a SCRAM-SHA-512 user, added when the storage is formatted
                            (repeatable; the first is written to DIR/client.properties)
  --tls-dir D               certificates for SASL_SSL (default DIR/tls, or DIR/../tls
                            for a cluster node; generated when missing)
  --set KEY=VALUE           an extra server.properties line (repeatable)
  --heap SIZE               -Xmx (default $HEAP)
  --timeout S               seconds to wait for start/stop (default $TIMEOUT)
  --no-wait                 do not wait for "started" (then: kafka.sh wait)
  --watch-pid PID           stop the broker when process PID exits (test harnesses)

Exit status: 0 ok, 1 error, 2 bad usage, 3 stopped (status), 4 a port is in use.
Files in DIR: server.properties client.properties kafka.env kafka.pid cluster.id
  server.log (INFO) lifecycle.log kafka.out (JVM stdout/stderr) format.log data/
Cache: $DIST (KAFKA_SH_CACHE, else \${XDG_CACHE_HOME:-\$HOME/.cache}/gamestream)
EOF
}

main() {
    local command_=${1:-}
    shift || true
    case $command_ in
        install) cmd_install; printf '%s\n' "$LIBS" ;;
        classpath) cmd_classpath ;;
        start) cmd_start "$@" ;;
        run) cmd_run "$@" ;;
        wait) cmd_wait "$@" ;;
        stop) cmd_stop "$@" ;;
        restart) cmd_restart "$@" ;;
        status) cmd_status "$@" ;;
        bootstrap) cmd_bootstrap "$@" ;;
        cluster) cmd_cluster "$@" ;;
        tls) cmd_tls "$@" ;;
        tool) cmd_tool "$@" ;;
        __watch) cmd_watch "$@" ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
