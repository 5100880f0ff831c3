#!/usr/bin/env bash
# A real single-node Elasticsearch for neo-auditd's tests and CI, from the
# integration-test distribution on Maven Central (the only registry we can reach).
#
#   scripts/elasticsearch.sh start [--keep-data]   start (idempotent), print the URL
#   scripts/elasticsearch.sh stop                  stop, keep the data dir
#   scripts/elasticsearch.sh status                exit 0 if running and healthy
#   scripts/elasticsearch.sh url                   print the URL
#
# `start` gives the server a fresh data and log dir; `start --keep-data` reuses the
# data of the previous run (a restart after `stop`).
#
# Environment:
#   NEO_ES_VERSION   Elasticsearch version (default 9.2.0)
#   NEO_ES_PORT      HTTP port on 127.0.0.1 (default 9250, away from the usual 9200)
#   NEO_ES_HOME      cache of unpacked distributions and run dirs (/var/tmp/neo-auditd-es)
#   NEO_ES_RUN_DIR   config, data, logs and pid file of this server (NEO_ES_HOME/run-PORT)
#   NEO_ES_USER      user to run as when started as root (neo-es)
#   NEO_ES_HEAP      JVM heap (512m)
#   NEO_ES_START_TIMEOUT  seconds to wait for the cluster to turn yellow (120)
#   ES_JAVA_HOME     JDK to use; otherwise the newest suitable JDK found
#
# Exit status: 0 ok, 1 failure, 3 a prerequisite (Java, Maven, the download) is
# missing -- the test fixture skips on 3 outside CI and fails on anything else.
set -euo pipefail

readonly EXIT_UNAVAILABLE=3

VERSION=${NEO_ES_VERSION:-9.2.0}
PORT=${NEO_ES_PORT:-9250}
CACHE_DIR=${NEO_ES_HOME:-/var/tmp/neo-auditd-es}
RUN_DIR=${NEO_ES_RUN_DIR:-$CACHE_DIR/run-$PORT}
ES_USER=${NEO_ES_USER:-neo-es}
HEAP=${NEO_ES_HEAP:-512m}
START_TIMEOUT=${NEO_ES_START_TIMEOUT:-120}

DIST_DIR=$CACHE_DIR/elasticsearch-$VERSION
ARTIFACT=org.elasticsearch.distribution.integ-test-zip:elasticsearch:$VERSION:zip
ZIP=${NEO_ES_MAVEN_REPO:-$HOME/.m2/repository}/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$VERSION/elasticsearch-$VERSION.zip
PID_FILE=$RUN_DIR/elasticsearch.pid
URL=http://127.0.0.1:$PORT

log() { echo "elasticsearch.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
unavailable() { log "unavailable: $*"; exit "$EXIT_UNAVAILABLE"; }

# --- prerequisites ---------------------------------------------------------------

java_major() {  # JDK home -> major version, from its `release` file
    local release=$1/release version
    [[ -r $release && -x $1/bin/java ]] || return 1
    version=$(sed -n 's/^JAVA_VERSION="\([0-9]*\).*/\1/p' "$release")
    [[ -n $version ]] && echo "$version"
}

find_java() {
    # Elasticsearch 9 needs Java 21+, 8 needs 17+. The integ-test zip bundles no JDK.
    local need=17 best="" best_major=0 home major
    [[ ${VERSION%%.*} -ge 9 ]] && need=21
    if [[ -n ${ES_JAVA_HOME:-} ]]; then  # an explicit choice is honoured or refused
        major=$(java_major "$ES_JAVA_HOME") \
            || unavailable "ES_JAVA_HOME=$ES_JAVA_HOME is not a JDK"
        [[ $major -ge $need ]] \
            || unavailable "ES_JAVA_HOME=$ES_JAVA_HOME is Java $major; Elasticsearch $VERSION needs $need+"
        echo "$ES_JAVA_HOME"; return
    fi
    for home in ${JAVA_HOME:-} /usr/lib/jvm/*; do
        major=$(java_major "$home") || continue
        if [[ $major -ge $need && $major -gt $best_major ]]; then
            best=$home; best_major=$major
        fi
    done
    [[ -n $best ]] || unavailable "no Java $need+ JDK found: set ES_JAVA_HOME, or install one (Debian 13: openjdk-21-jdk-headless; Debian 12 packages only Java 17: e.g. temurin-21-jdk from Adoptium's apt repository)"
    echo "$best"
}

fetch_zip() {
    [[ -f $ZIP ]] && return
    command -v mvn >/dev/null || unavailable "mvn not found; it fetches $ARTIFACT (apt-get install maven)"
    log "fetching $ARTIFACT from Maven Central"
    local output
    if ! output=$(mvn -q -B dependency:get -Dartifact="$ARTIFACT" -Dtransitive=false 2>&1); then
        grep -m 1 'ERROR' <<<"$output" >&2 || true  # Maven's reason, without its advice
        unavailable "could not download $ARTIFACT"
    fi
    [[ -f $ZIP ]] || unavailable "mvn succeeded but $ZIP is missing (custom local repository? set NEO_ES_MAVEN_REPO)"
}

unpack() {
    [[ -x $DIST_DIR/bin/elasticsearch ]] && return
    command -v python3 >/dev/null || unavailable "python3 is needed to unpack $ZIP"
    log "unpacking into $DIST_DIR"
    local tmp
    tmp=$(mktemp -d "$CACHE_DIR/.unpack.XXXXXX")
    # Python, not unzip, so there is no extra package to install; keep the modes.
    python3 - "$ZIP" "$tmp" <<'EOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive:
    for member in archive.infolist():
        path = archive.extract(member, sys.argv[2])
        mode = member.external_attr >> 16 & 0o777
        if mode:
            os.chmod(path, mode)
EOF
    chmod -R a+rX "$tmp"  # readable by the ES user whatever our umask was
    rm -rf -- "$DIST_DIR"
    # Rename into place only when complete, so a broken unpack is never reused.
    mv "$tmp/elasticsearch-$VERSION" "$DIST_DIR"
    rm -rf -- "$tmp"
}

ensure_user() {
    # Elasticsearch refuses to run as root.
    id -u "$ES_USER" >/dev/null 2>&1 && return
    log "creating system user $ES_USER"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$ES_USER"
}

# --- process state -------------------------------------------------------------------

server_pid() {  # the pid of our running server, or nothing
    local pid
    [[ -r $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    # Guard against a stale pid file whose pid now belongs to something else.
    [[ $pid =~ ^[0-9]+$ ]] && grep -qa org.elasticsearch "/proc/$pid/cmdline" 2>/dev/null \
        && echo "$pid"
}

healthy() {  # $1: seconds the server may take to turn yellow
    curl -fsS -o /dev/null --max-time $(($1 + 5)) \
        "$URL/_cluster/health?wait_for_status=yellow&timeout=${1}s" 2>/dev/null
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

show_log_tail() {
    local file
    for file in "$RUN_DIR/logs/console.log" "$RUN_DIR/logs/neo-auditd-test.log"; do
        [[ -s $file ]] || continue
        log "--- last lines of $file"
        tail -n 40 "$file" >&2
    done
}

# --- commands --------------------------------------------------------------------

write_config() {
    local config=$RUN_DIR/config
    rm -rf -- "$config"
    cp -r "$DIST_DIR/config" "$config"
    cat >"$config/elasticsearch.yml" <<EOF
# Written by scripts/elasticsearch.sh for tests; changes are lost on the next start.
cluster.name: neo-auditd-test
node.name: neo-auditd-test
discovery.type: single-node
network.host: 127.0.0.1
http.port: $PORT
path.data: $RUN_DIR/data
path.logs: $RUN_DIR/logs
# A loopback-only, throwaway test server: no TLS or passwords to set up.
xpack.security.enabled: false
# Tests must not go read-only because the build machine's disk is nearly full.
cluster.routing.allocation.disk.threshold_enabled: false
# Lets tests clean up with wildcards (delete index neo-*).
action.destructive_requires_name: false
EOF
}

start() {
    local keep_data=$1 java_home pid
    [[ $RUN_DIR == /* && $RUN_DIR != / ]] || die "NEO_ES_RUN_DIR must be an absolute path, not '$RUN_DIR'"
    command -v curl >/dev/null || unavailable "curl not found"

    if pid=$(server_pid); then
        healthy "$START_TIMEOUT" || { show_log_tail; die "server (pid $pid) runs but is not healthy"; }
        log "already running (pid $pid)"
        echo "$URL"; return
    fi
    port_in_use && die "port $PORT is taken by another process; set NEO_ES_PORT"

    java_home=$(find_java)
    fetch_zip
    unpack

    local run_as=()
    if [[ $(id -u) -eq 0 ]]; then
        ensure_user
        run_as=(runuser -u "$ES_USER" --)
    fi

    mkdir -p "$RUN_DIR"
    [[ $keep_data == yes ]] || rm -rf -- "$RUN_DIR/data" "$RUN_DIR/logs"
    mkdir -p "$RUN_DIR/data" "$RUN_DIR/logs"
    rm -rf -- "$RUN_DIR/tmp" && mkdir "$RUN_DIR/tmp"
    rm -f -- "$PID_FILE"
    write_config
    [[ ${#run_as[@]} -eq 0 ]] || chown -R "$ES_USER:" "$RUN_DIR"

    log "starting Elasticsearch $VERSION on $URL (Java: $java_home, data: $RUN_DIR/data)"
    # -d returns once the node has started. Its console output goes to a file, and
    # the lock is closed, so the daemon holds neither our stdout pipe nor the lock.
    if ! (cd "$RUN_DIR" && "${run_as[@]}" env \
            ES_JAVA_HOME="$java_home" ES_PATH_CONF="$RUN_DIR/config" \
            ES_TMPDIR="$RUN_DIR/tmp" ES_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP ${ES_JAVA_OPTS:-}" \
            "$DIST_DIR/bin/elasticsearch" -d -p "$PID_FILE" \
            >"$RUN_DIR/logs/console.log" 2>&1 </dev/null 9>&-); then
        show_log_tail
        die "Elasticsearch did not start"
    fi
    if ! healthy "$START_TIMEOUT"; then
        show_log_tail
        stop >/dev/null 2>&1 || true
        die "cluster not yellow within ${START_TIMEOUT}s"
    fi
    log "ready (pid $(server_pid || echo '?'))"
    echo "$URL"
}

stop() {
    local pid deadline
    if ! pid=$(server_pid); then
        rm -f -- "$PID_FILE"
        log "not running"
        return
    fi
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 60))  # a clean shutdown takes seconds; never hang CI
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "pid $pid ignored SIGTERM for 60s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 3600))
        fi
        sleep 0.2
    done
    rm -f -- "$PID_FILE"
    log "stopped; data kept in $RUN_DIR/data"
}

status() {
    local pid
    pid=$(server_pid) || { log "not running"; return 1; }
    healthy 5 || { log "pid $pid runs but is not healthy"; return 1; }
    log "running (pid $pid)"
    echo "$URL"
}

with_lock() {
    # One start or stop at a time per cache: two test sessions starting together must
    # not both unpack, or both launch on one run dir.
    if [[ ! -d $CACHE_DIR ]]; then
        mkdir -p "$CACHE_DIR" && chmod 755 "$CACHE_DIR"  # the ES user traverses it
    fi
    exec 9>"$CACHE_DIR/.lock"
    if command -v flock >/dev/null; then
        flock -w 900 9 || die "another start or stop has held $CACHE_DIR/.lock for 15 min"
    fi
    "$@"
}

case ${1:-} in
    start)
        case ${2:-} in
            "") with_lock start no ;;
            --keep-data) with_lock start yes ;;
            *) die "unknown option '$2' (usage: start [--keep-data])" ;;
        esac ;;
    stop) with_lock stop ;;
    status) status ;;
    url) echo "$URL" ;;
    *) echo "usage: $0 {start [--keep-data]|stop|status|url}" >&2; exit 2 ;;
esac
