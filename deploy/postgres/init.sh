#!/bin/sh
# First start of the PostgreSQL of docker-compose.yml (run once, from
# /docker-entrypoint-initdb.d, on an empty data volume):
#   - the services' roles must log in with their passwords: these pg_hba.conf
#     lines come before the image's `trust` line, which stays for the
#     development superuser `postgres`;
#   - the roles exist before the first migration (deploy/postgres/roles.sql,
#     passwords from DB_OWNER_PASSWORD, DB_INGRESS_PASSWORD, DB_WORKER_PASSWORD,
#     DB_ADMIN_PASSWORD).
set -eu

sed -i '1i host all clerk_owner,clerk_ingress,clerk_worker,clerk_admin all scram-sha-256' "$PGDATA/pg_hba.conf"

psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner=clerk_owner -v ingress=clerk_ingress -v worker=clerk_worker -v admin=clerk_admin \
    -f /etc/clerk-events/roles.sql
