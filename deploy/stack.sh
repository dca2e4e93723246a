#!/usr/bin/env bash
# Local infrastructure for license billing: one Kafka 4.1 broker (KRaft, combined broker+controller)
# and one PostgreSQL server, both bound to 127.0.0.1. No Docker needed: Kafka comes from Maven Central
# (deploy/kafka/pom.xml), PostgreSQL from Debian.
#
# Secured: the broker's client listeners take SASL/SCRAM-SHA-512 (or SASL_SSL with KAFKA_TLS=1) and
# StandardAuthorizer denies whatever contracts/access.py does not grant; PostgreSQL takes passwords
# (scram-sha-256) and each service's role owns only its own database. Passwords are generated per
# stack into $STACK_DIR/secrets (deploy/credentials.py says how a process gets its own).
#
#   bash deploy/stack.sh up | down | status | reset
#   bash deploy/stack.sh kafka-start | kafka-stop | pg-start | pg-stop     (fault injection in tests)
#
# Environment (all optional):
#   STACK_DIR              Kafka jars/data/logs + bookkeeping      (default <repo>/.stack)
#   PG_DIR                 PostgreSQL root, holds data/ + server.log (default /var/tmp/license-billing-pg-<hash>)
#   KAFKA_PORT             broker listener                         (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener               (default 9093)
#   PG_PORT                PostgreSQL port                         (default 55432)
#   KAFKA_TLS              1: client listeners SASL_SSL, with a CA and certificate made here; 0: SASL_PLAINTEXT
#                          (default: what the last start used, else 0)
#   KAFKA_START_TIMEOUT / PG_START_TIMEOUT  seconds to wait for readiness (default 60)
set -euo pipefail
export LC_NUMERIC=C   # "up took 1.2 s" arithmetic with EPOCHREALTIME needs a "." decimal point

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEPLOY="$REPO/deploy"
STACK_DIR="${STACK_DIR:-$REPO/.stack}"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
# A second client listener the fault tests reach through their own TCP proxy (tests/faults/proxy.py):
# the broker listens on KAFKA_PROXIED_PORT and tells clients to come back via KAFKA_PROXY_PORT.
KAFKA_PROXIED_PORT="${KAFKA_PROXIED_PORT:-$((KAFKA_PORT + 2))}"
KAFKA_PROXY_PORT="${KAFKA_PROXY_PORT:-$((KAFKA_PORT + 3))}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
KAFKA_HOME="$STACK_DIR/kafka"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_CONFIG="$KAFKA_HOME/server.properties"
KAFKA_LOG="$KAFKA_HOME/broker.log"
KAFKA_PID="$KAFKA_HOME/broker.pid"
KAFKA_POM="$DEPLOY/kafka/pom.xml"
KAFKA_POM_STAMP="$KAFKA_LIBS/.pom.sha256"
KAFKA_LOG4J="$DEPLOY/kafka/log4j2.properties"
KAFKA_SECURED_MARKER="$KAFKA_DATA/.scram-users"   # storage formatted with the stack's SCRAM super user
PY="$REPO/.venv/bin/python"
SECRETS="$STACK_DIR/secrets"
TLS_DIR="$STACK_DIR/tls"

PG_PORT="${PG_PORT:-55432}"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
PG_DIR_RECORD="$STACK_DIR/postgres.path"
PG_MARKER_NAME=".license-billing-stack"   # reset only deletes a PG_DIR carrying this marker
PG_SECURED_MARKER_NAME=".scram-roles"   # cluster made with passwords and per-service roles
PG_SECRET_PRINT_NAME=".superuser-password.sha256"   # which $SECRETS the cluster was made with

# Call in a subshell right before exec'ing a long-lived server: close every fd above stderr (our lock fd,
# pipes the caller's CI runner/test harness may have passed down). A daemon holding the write end of a
# caller's pipe would keep that caller waiting for EOF forever.
close_inherited_fds() {
    local fd n
    for fd in "/proc/$BASHPID/fd"/*; do
        n="${fd##*/}"
        if ((n > 2)); then eval "exec $n>&-"; fi
    done
    return 0
}

log() { printf '[stack] %s\n' "$*"; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# ----------------------------------------------------------------------------------------- prerequisites

require_java_and_maven() {
    command -v java >/dev/null 2>&1 || die "java 17 not found: apt-get install -y openjdk-17-jre-headless"
    local major
    major="$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p')"
    [[ -n "$major" && "$major" -ge 17 ]] \
        || die "java >= 17 needed for Kafka 4.x (found ${major:-unknown}): apt-get install -y openjdk-17-jre-headless"
    command -v mvn >/dev/null 2>&1 || die "maven not found: apt-get install -y maven"
}

# Newest installed PostgreSQL major version's bin dir, or empty.
pg_bin_dir() {
    local d
    d="$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
    [[ -n "$d" && -x "$d/initdb" ]] && printf '%s\n' "$d"
    return 0
}

ensure_postgres_installed() {
    [[ -n "$(pg_bin_dir)" ]] && return 0
    [[ $EUID -eq 0 ]] || die "PostgreSQL server not found: sudo apt-get install -y postgresql"
    log "PostgreSQL server not found, installing it with apt-get (takes a minute)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    [[ -n "$(pg_bin_dir)" ]] || die "apt-get install postgresql did not provide /usr/lib/postgresql/*/bin/initdb"
}

# ------------------------------------------------------------------------------------------ credentials

# Every password the stack needs, generated once per stack (deploy/credentials.py; the principals and
# databases come from contracts/access.py, so the venv must exist).
ensure_secrets() {
    [[ -x "$PY" ]] || die "$PY not found: run scripts/bootstrap first (credentials come from contracts/access.py)"
    (cd "$REPO" && STACK_DIR="$STACK_DIR" "$PY" -m deploy.credentials ensure) || die "could not create $SECRETS"
}

secret() { cat "$SECRETS/$1"; }

service_databases() { (cd "$REPO" && "$PY" -m deploy.credentials databases); }

# SASL_PLAINTEXT or SASL_SSL: KAFKA_TLS when given, else what the last start used.
choose_kafka_protocol() {
    local recorded
    recorded="$(cat "$SECRETS/kafka.protocol" 2>/dev/null || echo SASL_PLAINTEXT)"
    case "${KAFKA_TLS:-}" in
        1 | yes | true) KAFKA_PROTOCOL=SASL_SSL ;;
        0 | no | false) KAFKA_PROTOCOL=SASL_PLAINTEXT ;;
        "") KAFKA_PROTOCOL="$recorded" ;;
        *) die "KAFKA_TLS must be 1 or 0 (got '$KAFKA_TLS')" ;;
    esac
    printf '%s\n' "$KAFKA_PROTOCOL" >"$SECRETS/kafka.protocol"
}

# The stack's own CA and a server certificate for 127.0.0.1 (clients check the IP in the SAN), as PEM
# files the broker reads directly.
ensure_tls() {
    [[ -f "$TLS_DIR/server.pem" && -f "$TLS_DIR/ca.pem" ]] && return 0
    command -v openssl >/dev/null 2>&1 || die "openssl not found: apt-get install -y openssl"
    log "making a CA and a certificate for 127.0.0.1 in $TLS_DIR"
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    chmod 700 "$TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
            -subj "/CN=license-billing local stack CA" -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.crt -days 825 \
            -extfile server.ext
        cat server.key server.crt >server.pem
        chmod 600 ./*.key server.pem
    ) >"$STACK_DIR/tls.log" 2>&1 || { cat "$STACK_DIR/tls.log" >&2; die "openssl could not make the certificates"; }
}

# ----------------------------------------------------------------------------------------------- Kafka

pom_sha() { sha256sum "$KAFKA_POM" | cut -d' ' -f1; }

kafka_jars_current() {
    [[ -f "$KAFKA_POM_STAMP" && "$(cat "$KAFKA_POM_STAMP")" == "$(pom_sha)" ]] && compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null
}

# Download the broker jars only when missing or when pom.xml changed (stamp = sha256 of the pom).
# Resolved into a temp dir and swapped in, so a failed download never leaves a half-filled libs dir
# and jars dropped from the pom do not linger.
ensure_kafka_jars() {
    kafka_jars_current && return 0
    log "resolving Kafka jars from Maven Central into $KAFKA_LIBS"
    local tmp="$KAFKA_HOME/libs.tmp"
    rm -rf "$tmp"
    mkdir -p "$KAFKA_HOME"
    mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$KAFKA_HOME/mvn.log" 2>&1 \
        || { tail -n 30 "$KAFKA_HOME/mvn.log" >&2; die "mvn could not resolve $KAFKA_POM (is Maven Central reachable?)"; }
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    pom_sha >"$KAFKA_POM_STAMP"
}

kafka_version() {
    local jar
    jar="$(compgen -G "$KAFKA_LIBS/kafka-clients-*.jar" | head -n1 || true)"
    jar="${jar##*/kafka-clients-}"
    printf '%s\n' "${jar%.jar}"
}

write_kafka_config() {
    mkdir -p "$KAFKA_DATA"
    local stack_pw controller_pw tls=""
    stack_pw="$(secret kafka-stack)"
    controller_pw="$(secret kafka-controller)"
    if [[ "$KAFKA_PROTOCOL" == SASL_SSL ]]; then
        tls="ssl.keystore.type=PEM
ssl.keystore.location=${TLS_DIR}/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=${TLS_DIR}/ca.pem
ssl.endpoint.identification.algorithm=https"
    fi
    (umask 077 && : >"$KAFKA_CONFIG")   # it holds the broker's passwords
    cat >"$KAFKA_CONFIG" <<EOF
# Generated by deploy/stack.sh on every broker start; edit the script, not this file.
# Single node KRaft, combined mode: this process is both the broker and the only controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${KAFKA_CONTROLLER_PORT}
controller.listener.names=CONTROLLER
listeners=CLIENT://127.0.0.1:${KAFKA_PORT},CONTROLLER://127.0.0.1:${KAFKA_CONTROLLER_PORT},PROXIED://127.0.0.1:${KAFKA_PROXIED_PORT}
advertised.listeners=CLIENT://127.0.0.1:${KAFKA_PORT},PROXIED://127.0.0.1:${KAFKA_PROXY_PORT}
inter.broker.listener.name=CLIENT
listener.security.protocol.map=CLIENT:${KAFKA_PROTOCOL},PROXIED:${KAFKA_PROTOCOL},CONTROLLER:SASL_PLAINTEXT

# Clients (both listeners) log in with SCRAM-SHA-512 as a principal of contracts/access.py. SCRAM
# cannot run between KRaft controllers, so the controller listener takes PLAIN with its own user.
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="stack" password="${stack_pw}";
listener.name.proxied.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" password="${controller_pw}" user_controller="${controller_pw}";
${tls}

# Nothing is allowed that no ACL grants (the ACLs come from contracts/access.py, deploy/provision.py);
# the broker's own principals are super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:stack;User:controller

log.dirs=${KAFKA_DATA}
num.partitions=6
auto.create.topics.enable=false
delete.topic.enable=true

# One broker: every internal topic must be satisfiable with a single replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Consumers in tests should get their assignment immediately, not after the 3 s default delay.
group.initial.rebalance.delay.ms=0
# Kafka 4's group coordinator holds offset commits up to 5 ms to batch them; a consumer has one
# commit in flight at a time, so that hold delays every later commit. Flush at once.
group.coordinator.append.linger.ms=0

# After a SIGKILL the restarted broker cannot re-register until the controller expires the old incarnation's
# session (default 9 s, "DUPLICATE_BROKER_REGISTRATION" in the log). Tests kill the broker on purpose, so
# keep that window short; heartbeats are in-process (combined mode), so a tight timeout is safe.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
EOF
}

# Format the KRaft storage once. The cluster id is any random 16-byte base64url UUID; generating it in bash
# saves a JVM start (kafka-storage random-uuid). Static voters (controller.quorum.voters) means no
# --standalone / --initial-controllers flag.
format_kafka_storage() {
    if [[ -f "$KAFKA_DATA/meta.properties" && ! -f "$KAFKA_SECURED_MARKER" ]]; then
        # Storage from an older stack.sh: it has no SCRAM users, so no client could log in.
        log "Kafka storage in $KAFKA_DATA was formatted without SCRAM users (an older deploy/stack.sh): reformatting it (its topics and records are deleted)"
        rm -rf "$KAFKA_DATA"
        write_kafka_config
    fi
    [[ -f "$KAFKA_DATA/meta.properties" ]] && return 0
    local cluster_id="-"
    # a leading '-' would be parsed as an option by the tool's argument parser
    while [[ "$cluster_id" == -* ]]; do
        cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    log "formatting Kafka storage (cluster id $cluster_id)"
    java -cp "$KAFKA_LIBS/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
        kafka.tools.StorageTool format --config "$KAFKA_CONFIG" --cluster-id "$cluster_id" --ignore-formatted \
        --add-scram "SCRAM-SHA-512=[name=stack,password=$(secret kafka-stack)]" \
        >"$KAFKA_HOME/format.log" 2>&1 \
        || { cat "$KAFKA_HOME/format.log" >&2; die "kafka storage format failed"; }
    touch "$KAFKA_SECURED_MARKER"
}

# SCRAM users and ACLs of every principal, from contracts/access.py (as the stack's super user). Skipped
# when this storage already has them from the same registry and passwords (a restart: the fault tests
# stop and start the broker many times, and a Python start costs seconds on a busy machine).
access_stamp() { cat "$REPO/contracts/access.py" "$REPO/contracts/topics.py" "$REPO/deploy/provision.py" "$SECRETS"/kafka-* | sha256sum | cut -c1-16; }
kafka_grant_access() {
    local stamp
    stamp="$(access_stamp)"
    [[ "$(cat "$KAFKA_DATA/.access-granted" 2>/dev/null)" == "$stamp" ]] && return 0
    (cd "$REPO" && STACK_DIR="$STACK_DIR" BILLING_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT" \
        "$PY" -m deploy.provision --access-only) || die "could not create the Kafka users and ACLs"
    printf '%s\n' "$stamp" >"$KAFKA_DATA/.access-granted"
}

# Pid of our broker, or empty. Checks the command line so a recycled pid is never mistaken for it; falls
# back to searching for a java process using *our* config file (pid file lost, e.g. .stack partly wiped).
kafka_pid() {
    local pid=""
    [[ -f "$KAFKA_PID" ]] && pid="$(cat "$KAFKA_PID")"
    if [[ -n "$pid" ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $KAFKA_CONFIG"; then
        printf '%s\n' "$pid"
        return 0
    fi
    pgrep -f "kafka\.Kafka $KAFKA_CONFIG\$" | head -n1 || true
}

kafka_config_port() { sed -nE 's#^listeners=CLIENT://[^:]+:([0-9]+).*#\1#p' "$KAFKA_CONFIG" 2>/dev/null || true; }

# kill -0 also succeeds for a zombie. The broker is re-parented to pid 1 once the starting script exits, and
# a container's pid 1 may be slow (or fail) to reap it, so a zombie counts as dead.
pid_alive() {
    local state
    state="$(sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
    [[ -n "$state" && "$state" != Z ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Line KafkaRaftServer logs once the broker has registered and its listeners accept requests.
KAFKA_STARTED_RE='Kafka Server started'

wait_for_kafka() {
    local pid="$1" deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! pid_alive "$pid"; then
            tail -n 40 "$KAFKA_LOG" >&2 || true
            die "Kafka broker exited during startup (full log: $KAFKA_LOG)"
        fi
        if port_open "$KAFKA_PORT" && grep -q "$KAFKA_STARTED_RE" "$KAFKA_LOG" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    tail -n 40 "$KAFKA_LOG" >&2 || true
    die "Kafka broker not ready on 127.0.0.1:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s (full log: $KAFKA_LOG)"
}

kafka_start() {
    local pid
    pid="$(kafka_pid)"
    if [[ -n "$pid" ]]; then
        log "kafka already running (pid $pid, port $(kafka_config_port))"
        kafka_jars_current || log "WARNING: $KAFKA_POM changed since the jars were resolved; kafka-stop + kafka-start to apply"
        return 0
    fi
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is already in use by another process (set KAFKA_PORT)"
    port_open "$KAFKA_CONTROLLER_PORT" \
        && die "port $KAFKA_CONTROLLER_PORT is already in use by another process (set KAFKA_CONTROLLER_PORT)"
    ensure_kafka_jars
    ensure_secrets
    choose_kafka_protocol
    [[ "$KAFKA_PROTOCOL" == SASL_SSL ]] && ensure_tls
    write_kafka_config
    format_kafka_storage
    [[ -f "$KAFKA_LOG" ]] && mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"   # readiness check greps this run's log only
    log "starting Kafka broker on 127.0.0.1:$KAFKA_PORT"
    # setsid: own session, so Ctrl-C / SIGHUP aimed at the caller (terminal, CI step) does not reach it.
    # stdio redirected + other fds closed, so no caller pipe is held open by the JVM.
    # The subshell execs (setsid/nohup exec too), so $! is the JVM's pid. GC flags as in kafka-run-class.sh.
    (
        close_inherited_fds
        exec setsid nohup java -Xms256m -Xmx768m \
            -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
            -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$KAFKA_LOG4J" -Dkafka.logs.dir="$KAFKA_HOME" \
            -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONFIG"
    ) </dev/null >"$KAFKA_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$KAFKA_PID"
    wait_for_kafka "$pid"
    kafka_grant_access
    log "kafka ready (pid $pid, $KAFKA_PROTOCOL)"
}

kafka_stop() {
    local pid
    pid="$(kafka_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$KAFKA_PID"
        return 0
    fi
    log "stopping Kafka broker (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if pid_alive "$pid"; then
        log "broker did not stop within 30 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while pid_alive "$pid"; do sleep 0.1; done
    fi
    rm -f "$KAFKA_PID"
}

kafka_status() {
    local pid
    pid="$(kafka_pid)"
    if [[ -n "$pid" ]]; then
        printf 'kafka     running  pid %-8s port %s\n' "$pid" "$(kafka_config_port)"
    else
        printf 'kafka     stopped  pid %-8s port %s\n' "-" "$KAFKA_PORT"
        return 1
    fi
}

# ------------------------------------------------------------------------------------------ PostgreSQL

# The PostgreSQL dir lives outside the repo: the server must run as the postgres OS user (initdb refuses
# root) and CI clones into a mode-700 mktemp dir that user cannot enter. Explicit PG_DIR wins, then the
# path recorded by the last `up`, then a per-checkout default.
pg_root() {
    if [[ -n "${PG_DIR:-}" ]]; then
        printf '%s\n' "$PG_DIR"
    elif [[ -s "$PG_DIR_RECORD" ]]; then
        cat "$PG_DIR_RECORD"
    else
        # Keyed on the checkout (and on STACK_DIR when overridden), so parallel clones / stacks never share it.
        local key="$REPO"
        [[ "$STACK_DIR" != "$REPO/.stack" ]] && key="$REPO|$STACK_DIR"
        printf '/var/tmp/license-billing-pg-%s\n' "$(printf '%s' "$key" | sha256sum | cut -c1-10)"
    fi
}

PG_ROOT=""   # set by pg_init_paths
PG_DATA=""
PG_LOG=""
pg_init_paths() {
    PG_ROOT="$(pg_root)"
    PG_DATA="$PG_ROOT/data"
    PG_LOG="$PG_ROOT/server.log"
}

# Run a command as the postgres OS user when we are root (otherwise as ourselves, which initdb accepts).
# cd / first: the caller's cwd may be a mode-700 dir the postgres user cannot stat.
# close_inherited_fds: pg_ctl start leaves the postmaster running, and it must not inherit our lock fd
# (it would hold the stack lock forever) or a caller's pipe.
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        (cd / && close_inherited_fds && exec runuser -u postgres -- "$@")
    else
        (cd / && close_inherited_fds && exec "$@")
    fi
}

# Not `pg_ctl status`: like the postmaster's own lock-file check it uses kill(pid, 0), which reports a
# SIGKILLed but not yet reaped (zombie) postmaster as running.
pg_running() {
    local pid
    pid="$(pg_pid)"
    [[ -n "$pid" ]] && pid_alive "$pid" && grep -q postgres "/proc/$pid/cmdline" 2>/dev/null
}

# Live processes working in our data dir (backends chdir there); survivors of a killed postmaster.
pg_leftover_pids() {
    local d pid
    for d in /proc/[0-9]*; do
        pid="${d#/proc/}"
        [[ "$(readlink "$d/cwd" 2>/dev/null)" == "$PG_DATA" ]] && pid_alive "$pid" && echo "$pid"
    done
    return 0
}

# After a postmaster crash/SIGKILL: wait for orphaned backends to notice and exit, then drop the stale
# postmaster.pid and socket lock file, since a fresh postmaster refuses to start while the pid recorded in
# them still looks alive to kill(pid, 0) (an unreaped zombie; this container's pid 1 reaps late).
pg_clear_stale_lock() {
    [[ -f "$PG_DATA/postmaster.pid" ]] || return 0
    local deadline=$((SECONDS + 15))
    while [[ -n "$(pg_leftover_pids)" ]]; do
        ((SECONDS < deadline)) || die "processes $(pg_leftover_pids | xargs) still use $PG_DATA; stop them first"
        sleep 0.2
    done
    log "removing stale postmaster.pid and socket lock (pid $(pg_pid) is gone)"
    rm -f "$PG_DATA/postmaster.pid" "$PG_DATA"/.s.PGSQL.*
}

pg_pid() { head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || true; }
pg_running_port() { sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

pg_initdb() {
    local bin="$1"
    [[ -f "$PG_DATA/PG_VERSION" ]] && return 0
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "OS user 'postgres' missing: apt-get install -y postgresql"
    fi
    log "initialising PostgreSQL cluster in $PG_DATA"
    mkdir -p "$PG_ROOT"
    printf '%s\n' "$REPO" >"$PG_ROOT/$PG_MARKER_NAME"
    rm -rf "$PG_DATA"   # a half-finished earlier initdb (no PG_VERSION) would make initdb refuse
    # The superuser's password, for initdb only (the postgres OS user cannot read $SECRETS).
    (umask 077 && secret pg-postgres >"$PG_ROOT/.pwfile")
    [[ $EUID -eq 0 ]] && chown -R postgres:postgres "$PG_ROOT"
    chmod 700 "$PG_ROOT"
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -A scram-sha-256 --pwfile="$PG_ROOT/.pwfile" -E UTF8 \
        --locale=C.UTF-8 --no-sync >"$PG_ROOT/initdb.log" 2>&1 \
        || { rm -f "$PG_ROOT/.pwfile"; cat "$PG_ROOT/initdb.log" >&2; die "initdb failed"; }
    rm -f "$PG_ROOT/.pwfile"
    echo "include_if_exists = 'stack.conf'" >>"$PG_DATA/postgresql.conf"
    touch "$PG_ROOT/$PG_SECURED_MARKER_NAME"
    pg_secret_print >"$PG_ROOT/$PG_SECRET_PRINT_NAME"
}

# A digest of the superuser's password (a random 32-byte secret, so the digest gives nothing away).
pg_secret_print() { secret pg-postgres | sha256sum | cut -d' ' -f1; }

# A cluster this stack's secrets cannot log into is deleted and made anew: one from an older stack.sh
# (trust authentication, one shared role), or one made with other secrets (an earlier clone at the same
# path left it in /var/tmp, and its .stack/secrets went with that clone). Its data is unreachable anyway.
pg_replace_foreign() {
    [[ -f "$PG_DATA/PG_VERSION" ]] || return 0
    local why=""
    if [[ ! -f "$PG_ROOT/$PG_SECURED_MARKER_NAME" ]]; then
        why="trusts every local connection (an older deploy/stack.sh)"
    elif [[ "$(cat "$PG_ROOT/$PG_SECRET_PRINT_NAME" 2>/dev/null)" != "$(pg_secret_print)" ]]; then
        why="was made with other passwords than $SECRETS holds (an earlier checkout at this path)"
    else
        return 0
    fi
    [[ -f "$PG_ROOT/$PG_MARKER_NAME" ]] || die "$PG_ROOT has no $PG_MARKER_NAME marker (not created by stack.sh); set PG_DIR"
    log "PostgreSQL cluster in $PG_DATA $why: deleting it and making a new one"
    if pg_running; then
        as_pg "$(pg_bin_dir)/pg_ctl" -D "$PG_DATA" stop -m fast -w -t 60 >/dev/null || true
    fi
    rm -rf "$PG_ROOT"
}

# Our settings live in their own file (included from postgresql.conf) and are rewritten before every
# start, so changing PG_PORT just works.
pg_write_config() {
    cat >"$PG_DATA/stack.conf" <<EOF
# Generated by deploy/stack.sh before every start.
listen_addresses = '127.0.0.1'
port = ${PG_PORT}
unix_socket_directories = '${PG_DATA}'
max_connections = 200
shared_buffers = 256MB
# Write-heavy workers: checkpoints (and the full-page images after each) at most every 15 min
# instead of every 1 GB of WAL, and those images compressed: less WAL for each commit to wait on.
max_wal_size = 4GB
checkpoint_timeout = 15min
wal_compression = lz4
# Each statement's totals, which the benchmarks read in the postgres database (bench/common.py,
# StatementTimes). Loaded at start only: a server started before this line has them after a restart.
shared_preload_libraries = 'pg_stat_statements'
EOF
    # Passwords for everyone: the superuser for the stack's own set-up, each service's role for its
    # own database only (TCP and the Unix socket alike). Nothing is trusted.
    {
        echo "# Generated by deploy/stack.sh before every start."
        echo "local   all   postgres                 scram-sha-256"
        echo "host    all   postgres   127.0.0.1/32  scram-sha-256"
        local db
        for db in $(service_databases); do
            echo "local   $db   $db                 scram-sha-256"
            echo "host    $db   $db   127.0.0.1/32  scram-sha-256"
        done
    } >"$PG_DATA/pg_hba.conf"
    [[ $EUID -eq 0 ]] && chown postgres:postgres "$PG_DATA/stack.conf" "$PG_DATA/pg_hba.conf"
    return 0
}

pg_wait_ready() {
    local bin="$1" port="$2" deadline=$((SECONDS + PG_START_TIMEOUT))
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 2; do
        if ((SECONDS >= deadline)); then
            tail -n 30 "$PG_LOG" >&2 || true
            die "PostgreSQL not ready on 127.0.0.1:$port after ${PG_START_TIMEOUT}s (log: $PG_LOG)"
        fi
        sleep 0.5
    done
}

pg_psql() {
    local bin="$1" port="$2"
    shift 2
    PGPASSWORD="$(secret pg-postgres)" "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres \
        -d postgres "$@"
}

# Idempotent: per service a login role (no other rights) owning its database, which no one else may
# connect to; the role's password is the stack's generated one.
pg_bootstrap_app() {
    local bin="$1" port="$2" db
    {
        for db in $(service_databases); do
            cat <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${db}') THEN
        CREATE ROLE ${db} LOGIN;
    END IF;
END
\$\$;
ALTER ROLE ${db} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '$(secret "pg-$db")';
SELECT format('CREATE DATABASE %I OWNER %I ENCODING ''UTF8''', '${db}', '${db}')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '${db}')
\gexec
REVOKE ALL ON DATABASE ${db} FROM PUBLIC;
SQL
        done
        # In postgres only, not a service's database; no NOTICE when it is there already.
        echo "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS pg_stat_statements;"
    } | pg_psql "$bin" "$port" >/dev/null
}

pg_start() {
    ensure_postgres_installed
    local bin
    bin="$(pg_bin_dir)"
    pg_init_paths
    mkdir -p "$STACK_DIR"
    ensure_secrets
    pg_replace_foreign
    if pg_running; then
        log "postgres already running (pid $(pg_pid), port $(pg_running_port))"
        pg_wait_ready "$bin" "$(pg_running_port)"
        pg_write_config
        pg_psql "$bin" "$(pg_running_port)" -c 'select pg_reload_conf()' >/dev/null
        pg_bootstrap_app "$bin" "$(pg_running_port)"
        printf '%s\n' "$PG_ROOT" >"$PG_DIR_RECORD"
        return 0
    fi
    port_open "$PG_PORT" && die "port $PG_PORT is already in use by another process (set PG_PORT)"
    pg_initdb "$bin"
    printf '%s\n' "$PG_ROOT" >"$PG_DIR_RECORD"
    pg_clear_stale_lock
    pg_write_config
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT (data $PG_DATA)"
    as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" start >/dev/null \
        || { tail -n 30 "$PG_LOG" >&2 || true; die "pg_ctl start failed (log: $PG_LOG)"; }
    pg_wait_ready "$bin" "$PG_PORT"
    pg_bootstrap_app "$bin" "$PG_PORT"
    log "postgres ready (pid $(pg_pid))"
}

pg_stop() {
    pg_init_paths
    local bin
    bin="$(pg_bin_dir)"
    pg_running || return 0
    log "stopping PostgreSQL (pid $(pg_pid))"
    as_pg "$bin/pg_ctl" -D "$PG_DATA" stop -m fast -w -t 60 >/dev/null \
        || as_pg "$bin/pg_ctl" -D "$PG_DATA" stop -m immediate -w -t 30 >/dev/null
}

pg_status() {
    pg_init_paths
    if pg_running; then
        printf 'postgres  running  pid %-8s port %s\n' "$(pg_pid)" "$(pg_running_port)"
    else
        printf 'postgres  stopped  pid %-8s port %s\n' "-" "$PG_PORT"
        return 1
    fi
}

pg_version() {
    local bin
    bin="$(pg_bin_dir)"
    "$bin/postgres" --version | sed -E 's/^postgres \(PostgreSQL\) //'
}

# ------------------------------------------------------------------------------------------- commands

# Serialise concurrent invocations (e.g. two test sessions calling `up`) on one lock per STACK_DIR.
take_lock() {
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/stack.lock"
    flock -w 180 9 || die "another deploy/stack.sh is still running (lock $STACK_DIR/stack.lock)"
}

cmd_up() {
    local t0=$EPOCHREALTIME
    kafka_start
    pg_start
    local kport pport
    kport="$(kafka_config_port)"
    pport="$(pg_running_port)"
    echo
    echo "  Kafka $(kafka_version)   bootstrap 127.0.0.1:${kport}   (pid $(kafka_pid), log $KAFKA_LOG)"
    echo "  PostgreSQL $(pg_version)   postgresql://<service>@127.0.0.1:${pport}/<service>  ($(service_databases | xargs | tr ' ' ,))"
    echo "                     (pid $(pg_pid), data $PG_DATA)"
    echo "  credentials        $SECRETS  (python -m deploy.credentials run PRINCIPAL -- COMMAND)"
    echo "  up took $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"
}

cmd_down() {
    kafka_stop
    pg_stop
    log "stack is down"
}

cmd_status() {
    local rc=0
    kafka_status || rc=3
    pg_status || rc=3
    return "$rc"
}

cmd_reset() {
    cmd_down
    log "deleting Kafka data $KAFKA_DATA"
    rm -rf "$KAFKA_DATA" "$KAFKA_LOG" "$KAFKA_LOG.1" "$KAFKA_CONFIG" "$KAFKA_HOME/format.log"
    pg_init_paths
    if [[ -d "$PG_ROOT" ]]; then
        # Guard against deleting something that is not ours (e.g. PG_DIR=/ by mistake).
        [[ -f "$PG_ROOT/$PG_MARKER_NAME" ]] \
            || die "refusing to delete $PG_ROOT: no $PG_MARKER_NAME marker (not created by stack.sh)"
        log "deleting PostgreSQL dir $PG_ROOT"
        rm -rf "$PG_ROOT"
    fi
    rm -f "$PG_DIR_RECORD"
    log "deleting the stack's passwords and certificates ($SECRETS, $TLS_DIR)"
    rm -rf "$SECRETS" "$TLS_DIR"
    log "reset done (Kafka jars kept in $KAFKA_LIBS)"
}

usage() {
    echo "usage: bash deploy/stack.sh up|down|status|reset|kafka-start|kafka-stop|pg-start|pg-stop" >&2
    exit 2
}

main() {
    [[ $# -eq 1 ]] || usage
    case "$1" in
        up) require_java_and_maven; take_lock; cmd_up ;;
        down) take_lock; cmd_down ;;
        status) cmd_status ;;
        reset) take_lock; cmd_reset ;;
        kafka-start) require_java_and_maven; take_lock; kafka_start ;;
        kafka-stop) take_lock; kafka_stop ;;
        pg-start) take_lock; pg_start ;;
        pg-stop) take_lock; pg_stop ;;
        *) usage ;;
    esac
}

main "$@"
