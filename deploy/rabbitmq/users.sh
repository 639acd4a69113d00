#!/bin/sh
# One RabbitMQ user per service, each allowed only the exchanges and queues of
# one AMQP_PREFIX (README, "Production notes"). Creates the users, or changes
# their passwords when they exist, then sets their permissions. Safe to run
# again at any time.
#
# Environment:
#   AMQP_PREFIX             prefix of the names (default clerk)
#   RABBITMQ_VHOST          virtual host (default /)
#   INGRESS_AMQP_USER       default clerk_ingress
#   INGRESS_AMQP_PASSWORD   required
#   WORKER_AMQP_USER        default clerk_worker
#   WORKER_AMQP_PASSWORD    required
#   ADMIN_AMQP_USER         default clerk_admin
#   ADMIN_AMQP_PASSWORD     optional: without it, no admin user is made
#   RABBITMQCTL             how to run rabbitmqctl (default rabbitmqctl), e.g.
#                           "rabbitmqctl -n rabbit@broker" or
#                           "docker compose exec -T rabbitmq rabbitmqctl"
#
# The names, for the prefix P: exchange P.events (events, routing key = type),
# quorum queue P.events.worker (bound with #, dead-letters to P.events.dlx),
# exchange P.events.dlx and quorum queue P.events.dlq (shared/src/amqp.rs);
# the worker's retries: headers exchange P.events.retry and one delay queue
# per retry step, P.events.retry.<milliseconds>, dead-lettering back to
# P.events (shared/src/amqp/retry.rs).
# RabbitMQ checks configure to declare (or delete) an exchange or queue, write
# to publish to an exchange or bind a queue, read to consume a queue or bind
# from an exchange.
#
#   ingress  configure ^P\.events(\.worker|\.dlx|\.dlq)?$  its relay declares
#                                                          the whole topology
#            write     ^P\.events(\.worker|\.dlq)?$        publish events; bind
#                                                          the two queues
#            read      ^P\.events(\.dlx)?$                 bind from the two
#                                                          exchanges; no queue
#   worker   configure, write and read
#            ^P\.events(\.worker|\.dlx|\.dlq|\.retry(\.[0-9]+)?)?$
#            declare; consume the worker queue and the DLQ; publish dead
#            letters to P.events.dlx, retries to P.events.retry and replays
#            to P.events
#   admin    configure, write and read ^P\.events(\.worker|\.dlx|\.dlq)?$
#            it reads the DLQ and replays through the worker's own
#            operations, whose publisher declares the topology first
#
# Declaring the worker queue for the first time also needs read on it
# (RabbitMQ checks that whoever sets a dead-letter exchange may read the
# queue), so the worker (or an operator) creates it; an ingress that starts on
# an empty broker keeps its events stored and publishes them once it exists.
set -eu

ctl="${RABBITMQCTL:-rabbitmqctl}"
prefix="${AMQP_PREFIX:-clerk}"
vhost="${RABBITMQ_VHOST:-/}"
ingress_user="${INGRESS_AMQP_USER:-clerk_ingress}"
worker_user="${WORKER_AMQP_USER:-clerk_worker}"
admin_user="${ADMIN_AMQP_USER:-clerk_admin}"
: "${INGRESS_AMQP_PASSWORD:?set INGRESS_AMQP_PASSWORD}"
: "${WORKER_AMQP_PASSWORD:?set WORKER_AMQP_PASSWORD}"

# AMQP_PREFIX is letters, digits, '-', '_' and '.'; only the dot needs escaping.
case "$prefix" in
    '' | *[!A-Za-z0-9._-]*)
        echo "users.sh: AMQP_PREFIX must be letters, digits, '-', '_' or '.'" >&2
        exit 1
        ;;
esac
p="$(printf '%s' "$prefix" | sed 's/\./\\./g')"
all="^$p\\.events(\\.worker|\\.dlx|\\.dlq)?\$"
worker="^$p\\.events(\\.worker|\\.dlx|\\.dlq|\\.retry(\\.[0-9]+)?)?\$"

# Creates the user $1 with the password $2 (given on stdin, never as an
# argument), or sets the password of the existing one.
user() {
    if ! printf '%s\n' "$2" | $ctl --quiet add_user "$1" >/dev/null 2>&1; then
        printf '%s\n' "$2" | $ctl --quiet change_password "$1" >/dev/null
    fi
    echo "users.sh: user $1 ready"
}

user "$ingress_user" "$INGRESS_AMQP_PASSWORD"
$ctl --quiet set_permissions -p "$vhost" "$ingress_user" \
    "$all" "^$p\\.events(\\.worker|\\.dlq)?\$" "^$p\\.events(\\.dlx)?\$"

user "$worker_user" "$WORKER_AMQP_PASSWORD"
$ctl --quiet set_permissions -p "$vhost" "$worker_user" "$worker" "$worker" "$worker"

# The admin service (optional: only with ADMIN_AMQP_PASSWORD) reads the DLQ
# and re-publishes through the worker's own operations, whose publisher
# declares the topology first; it never retries, so no delay queue.
if [ -n "${ADMIN_AMQP_PASSWORD:-}" ]; then
    user "$admin_user" "$ADMIN_AMQP_PASSWORD"
    $ctl --quiet set_permissions -p "$vhost" "$admin_user" "$all" "$all" "$all"
fi

echo "users.sh: permissions set on vhost $vhost for prefix $prefix"
