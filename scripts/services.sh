#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672,
# then creates the database named in DATABASE_URL.
#
# Already running: nothing is started. Docker engine available: the compose
# services `postgres` and `rabbitmq` are started. Otherwise the Debian packages
# are installed (if missing) and started. Safe to run again at any time.
#
# Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/clerk_events),
# SERVICES_TIMEOUT (seconds to wait for each service, default 60).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
database_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/clerk_events}"
timeout_secs="${SERVICES_TIMEOUT:-60}"
pg_port=5432
amqp_port=5672
used_docker=0
apt_updated=0
apt_log="$root/.dev/services-apt.log"

say() { printf 'services: %s\n' "$*"; }
fail() {
    printf 'services: FAILED: %s\n' "$*" >&2
    exit 1
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Waits until port $1 accepts connections; $2 names the service.
wait_for_port() {
    local port="$1" name="$2" deadline=$((SECONDS + timeout_secs))
    until port_open "$port"; do
        if ((SECONDS >= deadline)); then
            fail "$name does not answer on 127.0.0.1:$port after ${timeout_secs}s"
        fi
        sleep 1
    done
}

# Runs a command as root: directly, or through sudo.
as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        fail "need root to run '$1' and sudo is not installed"
    fi
}

can_be_root() {
    [[ "$(id -u)" == 0 ]] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

# Runs a command as the postgres operating-system user (peer authentication).
as_postgres() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres "$@"
    fi
}

apt_install() {
    local package="$1"
    mkdir -p "$(dirname "$apt_log")"
    if ((apt_updated == 0)); then
        say "apt-get update (log: ${apt_log#"$root"/})"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 ||
            fail "apt-get update failed (see ${apt_log#"$root"/})"
        apt_updated=1
    fi
    say "installing $package with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >>"$apt_log" 2>&1 ||
        fail "apt-get install $package failed (see ${apt_log#"$root"/})"
}

# Prints "VERSION CLUSTER" of the local cluster configured for port 5432.
pg_cluster() {
    pg_lsclusters -h 2>/dev/null | awk -v port="$pg_port" '$3 == port { print $1, $2; exit }'
}

start_postgres_locally() {
    if ! command -v pg_lsclusters >/dev/null 2>&1 || [[ -z "$(pg_cluster)" ]]; then
        apt_install postgresql
    fi
    local cluster
    cluster="$(pg_cluster)"
    [[ -n "$cluster" ]] || fail "no PostgreSQL cluster is configured for port $pg_port (see pg_lsclusters; create one with pg_createcluster)"
    # shellcheck disable=SC2086 # "VERSION CLUSTER" is meant to split
    set -- $cluster
    if ! port_open "$pg_port"; then
        say "starting PostgreSQL $1/$2"
        as_root pg_ctlcluster --skip-systemctl-redirect "$1" "$2" start >/dev/null 2>&1 ||
            port_open "$pg_port" ||
            fail "pg_ctlcluster $1 $2 start failed (see /var/log/postgresql/postgresql-$1-$2.log)"
    fi
    wait_for_port "$pg_port" PostgreSQL
    say "PostgreSQL $1/$2 answers on 127.0.0.1:$pg_port"
}

start_rabbitmq_locally() {
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        apt_install rabbitmq-server
    fi
    if ! port_open "$amqp_port"; then
        if as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
            say "RabbitMQ node is up; waiting for its AMQP listener"
        else
            say "starting RabbitMQ"
            as_root rabbitmq-server -detached >/dev/null 2>&1 ||
                fail "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
        fi
    fi
    wait_for_port "$amqp_port" RabbitMQ
    say "RabbitMQ answers on 127.0.0.1:$amqp_port"
}

start_with_docker() {
    local services=()
    port_open "$pg_port" || services+=(postgres)
    port_open "$amqp_port" || services+=(rabbitmq)
    say "starting ${services[*]} with docker compose"
    # Compose checks every variable of the file, including the ingress's
    # required secret, even when only these two services are started.
    (cd "$root" && CLERK_WEBHOOK_SECRET="${CLERK_WEBHOOK_SECRET:-unused}" \
        docker compose up -d --wait "${services[@]}") >/dev/null ||
        fail "docker compose up ${services[*]} failed (run it from $root to see why)"
    used_docker=1
    wait_for_port "$pg_port" PostgreSQL
    wait_for_port "$amqp_port" RabbitMQ
    say "PostgreSQL answers on 127.0.0.1:$pg_port, RabbitMQ on 127.0.0.1:$amqp_port"
}

# Splits DATABASE_URL into the database name and a URL of the `postgres`
# maintenance database on the same server, with the same credentials.
url_base="${database_url%%\?*}"
url_query="${database_url#"$url_base"}"
[[ "${url_base#*://}" == */* ]] || fail "DATABASE_URL names no database"
db_name="${url_base##*/}"
admin_url="${url_base%/*}/postgres${url_query}"
[[ "$db_name" =~ ^[A-Za-z_][A-Za-z0-9_-]*$ ]] ||
    fail "DATABASE_URL database name '$db_name' is not a plain identifier"
db_user="${url_base#*://}"
db_user="${db_user%%/*}"
if [[ "$db_user" == *@* ]]; then
    db_user="${db_user%@*}"
    db_user="${db_user%%:*}"
else
    db_user="$(id -un)"
fi

# Runs SQL against the maintenance database; prints the result (unaligned).
admin_sql() {
    if command -v psql >/dev/null 2>&1; then
        psql "$admin_url" -X -w -v ON_ERROR_STOP=1 -Atq -c "$1"
    elif ((used_docker)); then
        (cd "$root" && CLERK_WEBHOOK_SECRET="${CLERK_WEBHOOK_SECRET:-unused}" docker compose exec -T postgres psql -U postgres -X -v ON_ERROR_STOP=1 -Atq -c "$1")
    else
        fail "psql not found (install postgresql-client)"
    fi
}

# 1. The two services.
if port_open "$pg_port" && port_open "$amqp_port"; then
    say "PostgreSQL answers on 127.0.0.1:$pg_port, RabbitMQ on 127.0.0.1:$amqp_port"
elif docker info >/dev/null 2>&1; then
    start_with_docker
else
    start_postgres_locally
    start_rabbitmq_locally
fi

if ! command -v psql >/dev/null 2>&1 && ((used_docker == 0)); then
    apt_install postgresql-client
fi

# 2. Password-less TCP access for the development role.
if ! auth_error="$(admin_sql 'select 1' 2>&1 >/dev/null)"; then
    auth_error="$(printf '%s' "$auth_error" | head -n 1)"
    if [[ "$auth_error" =~ authentication\ failed|no\ password\ supplied|pg_hba\.conf ]] &&
        ((used_docker == 0)) && [[ -n "$(pg_cluster 2>/dev/null || true)" ]] && can_be_root; then
        hba_file="$(as_postgres psql -p "$pg_port" -X -Atq -c 'show hba_file')" ||
            fail "cannot read the pg_hba.conf location as the postgres user"
        rule="host all $db_user 127.0.0.1/32 trust"
        if ! as_root grep -qxF "$rule" "$hba_file"; then
            as_root sed -i "1i # Development setup (scripts/services.sh): $db_user connects over TCP without a password.\n$rule" "$hba_file"
        fi
        as_postgres psql -p "$pg_port" -X -Atq -c 'select pg_reload_conf()' >/dev/null ||
            fail "cannot reload PostgreSQL after editing $hba_file"
        say "added '$rule' at the top of $hba_file (development only) and reloaded PostgreSQL"
        admin_sql 'select 1' >/dev/null 2>&1 ||
            fail "still cannot connect as $db_user to 127.0.0.1:$pg_port after editing $hba_file"
    else
        fail "cannot connect to PostgreSQL as $db_user: $auth_error"
    fi
fi
say "PostgreSQL accepts $db_user over TCP"

# 3. The database.
exists="$(admin_sql "select 1 from pg_database where datname = '$db_name'")" ||
    fail "cannot query the list of databases"
if [[ "$exists" == 1 ]]; then
    say "database $db_name exists"
else
    if ! create_error="$(admin_sql "create database \"$db_name\"" 2>&1)"; then
        # Another run may have created it in the meantime.
        [[ "$create_error" == *"already exists"* ]] ||
            fail "cannot create database $db_name: $(printf '%s' "$create_error" | head -n 1)"
    fi
    say "created database $db_name"
fi
