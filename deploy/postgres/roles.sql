-- One PostgreSQL role per service, each with the least rights it needs
-- (README, "Production notes"):
--
--   owner    owns the schema and applies the migrations (`worker migrate`)
--   ingress  stores deliveries and runs the publish relay
--   worker   runs the handlers and the operators' commands
--   admin    serves the admin API and console (optional: -v admin=NAME)
--
-- Run it with psql (15 or newer) as a superuser (or a role with CREATEROLE
-- that may grant on the product's tables), connected to the product's database:
--
--   DB_OWNER_PASSWORD=… DB_INGRESS_PASSWORD=… DB_WORKER_PASSWORD=… \
--   psql "postgres://postgres@db.internal/clerk_events" \
--     -v owner=clerk_owner -v ingress=clerk_ingress -v worker=clerk_worker \
--     -f deploy/postgres/roles.sql
--
-- The passwords come from those environment variables (kept off the command
-- line) or from -v owner_password=… ingress_password=… worker_password=….
-- With -v admin=clerk_admin, the admin service's role too (password from
-- DB_ADMIN_PASSWORD or -v admin_password=…); without it, no admin role is
-- made or changed.
--
-- Every run converges on the same state, so run it
--   1. before the first migration: it creates the roles and lets the owner
--      create tables (grants on tables that do not exist yet are skipped), and
--   2. again after every `worker migrate`: it grants exactly what this
--      version's services touch on the tables the migrations made.
-- There are no default privileges: a later table is granted to a service only
-- by this file of the version that uses it, never to every role at once.
--
-- The passwords are optional (omit them for certificate or peer
-- authentication); a role that exists keeps its attributes, only its password
-- is changed when one is given. Other applications sharing the database keep
-- their own roles and grants: this file touches only the roles above.

\set ON_ERROR_STOP on
\set QUIET on

\if :{?owner}
\else
DO $$ BEGIN RAISE EXCEPTION 'roles.sql needs -v owner=NAME -v ingress=NAME -v worker=NAME'; END $$;
\endif
\if :{?ingress}
\else
DO $$ BEGIN RAISE EXCEPTION 'roles.sql needs -v ingress=NAME'; END $$;
\endif
\if :{?worker}
\else
DO $$ BEGIN RAISE EXCEPTION 'roles.sql needs -v worker=NAME'; END $$;
\endif

-- The admin service's role is optional; '' stands for "not asked for".
\if :{?admin}
\set clerk_admin :admin
\else
\set clerk_admin ''
\endif

-- The roles: plain login roles, never superusers.
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', name)
FROM (VALUES (:'owner'), (:'ingress'), (:'worker'), (:'clerk_admin')) AS wanted(name)
WHERE name <> '' AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted.name)
\gexec

\if :{?owner_password}
\else
\getenv owner_password DB_OWNER_PASSWORD
\endif
\if :{?ingress_password}
\else
\getenv ingress_password DB_INGRESS_PASSWORD
\endif
\if :{?worker_password}
\else
\getenv worker_password DB_WORKER_PASSWORD
\endif
\if :{?admin_password}
\else
\getenv admin_password DB_ADMIN_PASSWORD
\endif

\if :{?owner_password}
ALTER ROLE :"owner" PASSWORD :'owner_password';
\endif
\if :{?ingress_password}
ALTER ROLE :"ingress" PASSWORD :'ingress_password';
\endif
\if :{?worker_password}
ALTER ROLE :"worker" PASSWORD :'worker_password';
\endif
\if :{?admin}
\if :{?admin_password}
ALTER ROLE :"admin" PASSWORD :'admin_password';
\endif
\endif

BEGIN;

-- The database and its schema: only the owner creates objects.
SELECT format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I',
              current_database(), :'owner', :'ingress', :'worker')
\gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;  -- the default since PostgreSQL 15
GRANT USAGE, CREATE ON SCHEMA public TO :"owner";
GRANT USAGE ON SCHEMA public TO :"ingress", :"worker";
\if :{?admin}
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'admin')
\gexec
GRANT USAGE ON SCHEMA public TO :"admin";
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"admin";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"admin";
\endif

-- Start from nothing on the tables, so a right this version no longer needs
-- is taken away; the whole file is one transaction, so no session sees a gap.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"ingress", :"worker";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"ingress", :"worker";

-- What each service touches. Both read `_sqlx_migrations` at start to see
-- whether migrations are pending.
--
-- ingress (ingress/src/store.rs, relay.rs, ops.rs): inserts events
-- and their outbox entries; the relay reads the outbox with its events, locks
-- outbox rows (FOR UPDATE needs UPDATE), deletes them once published, and sets
-- `published_at` and `status`.
--
-- worker (worker/src/**): the handlers, the Clerk sync and the operators'
-- commands. No DELETE on users, memberships or the audit and ledger tables;
-- memberships are inserted by the application that shares the database.
--
-- admin (admin/src/**): reads what the API and the console show; through the
-- worker's operations it adjusts credits, runs the sync (the user.deleted
-- effects included), replays stored events and dead letters; it keeps its
-- tokens and sessions. No DELETE on events, users, memberships, the ledger or
-- the audit log.
CREATE TEMPORARY TABLE clerk_grants (service text, object text, privileges text) ON COMMIT DROP;
INSERT INTO clerk_grants VALUES
    ('ingress', '_sqlx_migrations',      'SELECT'),
    ('ingress', 'webhook_event_bodies',  'SELECT, INSERT'),
    ('ingress', 'webhook_event_states',  'SELECT, INSERT, UPDATE (published_at, status)'),
    ('ingress', 'webhook_events_id_seq', 'USAGE'),

    ('worker',  '_sqlx_migrations',      'SELECT'),
    ('worker',  'webhook_events',        'SELECT, INSERT, UPDATE, DELETE'),
    ('worker',  'webhook_event_bodies',  'SELECT, UPDATE (subject), DELETE'),
    ('worker',  'webhook_event_states',  'SELECT, UPDATE, DELETE'),
    ('worker',  'webhook_events_id_seq', 'USAGE'),
    ('worker',  'users',                 'SELECT, INSERT, UPDATE'),
    ('worker',  'memberships',           'SELECT, UPDATE'),
    ('worker',  'admin_actions',         'INSERT'),
    ('worker',  'admin_actions_id_seq',  'USAGE'),
    ('worker',  'credit_accounts',       'SELECT, INSERT, UPDATE'),
    ('worker',  'credit_ledger',         'SELECT, INSERT'),
    ('worker',  'credit_ledger_id_seq',  'USAGE'),
    ('worker',  'credit_plan_ends',      'SELECT, INSERT'),
    ('worker',  'clerk_sync_queue',      'SELECT, INSERT, UPDATE, DELETE'),

    ('admin',   '_sqlx_migrations',      'SELECT'),
    ('admin',   'webhook_events',        'SELECT'),
    ('admin',   'webhook_event_bodies',  'SELECT'),
    ('admin',   'webhook_event_states',  'SELECT, UPDATE'),
    ('admin',   'users',                 'SELECT, INSERT, UPDATE'),
    ('admin',   'memberships',           'SELECT, UPDATE'),
    ('admin',   'admin_actions',         'SELECT, INSERT'),
    ('admin',   'admin_actions_id_seq',  'USAGE'),
    ('admin',   'credit_accounts',       'SELECT, INSERT, UPDATE'),
    ('admin',   'credit_ledger',         'SELECT, INSERT'),
    ('admin',   'credit_ledger_id_seq',  'USAGE'),
    ('admin',   'credit_plan_ends',      'SELECT, INSERT'),
    ('admin',   'clerk_sync_queue',      'SELECT, INSERT, UPDATE'),
    ('admin',   'admin_tokens',          'SELECT, INSERT, UPDATE'),
    ('admin',   'admin_tokens_id_seq',   'USAGE'),
    ('admin',   'admin_sessions',        'SELECT, INSERT, UPDATE, DELETE');

SELECT format('GRANT %s ON %s %I TO %I',
              g.privileges,
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
              g.object,
              CASE g.service WHEN 'ingress' THEN :'ingress'
                             WHEN 'worker' THEN :'worker'
                             ELSE :'clerk_admin' END)
FROM clerk_grants g
JOIN pg_class c ON c.relname = g.object
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
WHERE g.service <> 'admin' OR :'clerk_admin' <> ''
ORDER BY g.service, g.object
\gexec

SELECT coalesce(string_agg(DISTINCT g.object, ', '), '') AS clerk_missing
FROM clerk_grants g
WHERE to_regclass(format('public.%I', g.object)) IS NULL
  AND (g.service <> 'admin' OR :'clerk_admin' <> '')
\gset

COMMIT;

\if :{?clerk_missing}
SELECT :'clerk_missing' <> '' AS clerk_some_missing
\gset
\if :clerk_some_missing
\echo 'roles.sql: not created yet, so not granted:' :clerk_missing
\echo 'roles.sql: run `worker migrate` as the owner, then this file again'
\endif
\endif
