#!/bin/sh
# The Compose setup's broker (the apache/kafka image's entrypoint): one KRaft node in combined mode,
# with deploy/stack.sh's security. Clients log in with SCRAM-SHA-512 as a principal of
# contracts/access.py; the controller listener takes PLAIN with its own user (SCRAM cannot run
# between KRaft controllers); the StandardAuthorizer denies whatever no ACL grants (the ACLs and the
# other SCRAM users: the provision service). The super user `stack` gets its SCRAM credential
# when the storage is formatted, the first time only.
set -eu
: "${KAFKA_PASSWORD_STACK:?not set: python -m deploy.compose_env writes deploy/.env}"
: "${KAFKA_PASSWORD_CONTROLLER:?not set: python -m deploy.compose_env writes deploy/.env}"
KAFKA_HOME="${KAFKA_HOME:-/opt/kafka}"
DATA="${KAFKA_DATA:-/var/lib/kafka/data}"
CONFIG_DIR="${KAFKA_CONFIG_DIR:-/tmp/kafka-config}"
ADVERTISED="${KAFKA_ADVERTISED:-kafka:9092}"
LISTEN_PORT="${ADVERTISED##*:}"
umask 077   # the files below hold passwords
mkdir -p "$CONFIG_DIR"

cat >"$CONFIG_DIR/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${KAFKA_CONTROLLER_LISTEN_PORT:-9093}
controller.listener.names=CONTROLLER
listeners=CLIENT://:${LISTEN_PORT},CONTROLLER://127.0.0.1:${KAFKA_CONTROLLER_LISTEN_PORT:-9093}
advertised.listeners=CLIENT://${ADVERTISED}
inter.broker.listener.name=CLIENT
listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT

sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="stack" password="${KAFKA_PASSWORD_STACK}";
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" password="${KAFKA_PASSWORD_CONTROLLER}" user_controller="${KAFKA_PASSWORD_CONTROLLER}";

authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:stack;User:controller

log.dirs=${DATA}
num.partitions=6
auto.create.topics.enable=false
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.coordinator.append.linger.ms=0
PROPERTIES

# For the health check (kafka-broker-api-versions.sh --command-config), as the super user.
cat >"$CONFIG_DIR/client.properties" <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="stack" password="${KAFKA_PASSWORD_STACK}";
PROPERTIES

if [ ! -f "$DATA/meta.properties" ]; then
    # A cluster id is any random 16 bytes in base64url; one starting with '-' would read as an option.
    cluster_id=-
    while [ "${cluster_id#-}" != "$cluster_id" ]; do
        cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    done
    "$KAFKA_HOME/bin/kafka-storage.sh" format --config "$CONFIG_DIR/server.properties" --cluster-id "$cluster_id" \
        --add-scram "SCRAM-SHA-512=[name=stack,password=${KAFKA_PASSWORD_STACK}]"
fi
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$CONFIG_DIR/server.properties"
