#!/bin/sh
# Run once by the postgres image when it makes the cluster (/docker-entrypoint-initdb.d), as the
# local stack's deploy/stack.sh sets PostgreSQL up: per service of BILLING_DATABASES a login role
# with nothing else (its password PG_PASSWORD_<ROLE>, stored as scram-sha-256) owning its own
# database, which PUBLIC may not connect to; and a pg_hba.conf with no trust line: each role
# reaches only its own database over the network, the superuser only from inside the container.
set -eu
: "${BILLING_DATABASES:?the services databases, one word each}"
for db in $BILLING_DATABASES; do
    variable="PG_PASSWORD_$(printf '%s' "$db" | tr '[:lower:]-' '[:upper:]_')"
    password="$(printenv "$variable" || true)"
    if [ -z "$password" ]; then
        echo "$variable is not set: python -m deploy.compose_env writes deploy/.env" >&2
        exit 1
    fi
    psql -X -q -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v db="$db" -v password="$password" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE :"db" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"db" ENCODING 'UTF8';
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
done
{
    echo "# Written by deploy/compose/postgres-init.sh when the cluster was made."
    echo "local   all   $POSTGRES_USER   peer"
    for db in $BILLING_DATABASES; do
        echo "host    $db   $db   all   scram-sha-256"
    done
} >"$PGDATA/pg_hba.conf"
