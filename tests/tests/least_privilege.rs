//! The services under their own restricted PostgreSQL roles and RabbitMQ
//! users, made with `deploy/postgres/roles.sql` and `deploy/rabbitmq/users.sh`
//! as an operator makes them: they work, and they can do no more than that.

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    commands::{run_worker, run_worker_at},
    db::TestDb,
    deliveries::{new_secret, user_created, user_deleted, Delivery},
    process::Service,
    roles::{BrokerUsers, PgRoles},
    worker::{store, wait_processed},
};
use lapin::{
    options::{BasicGetOptions, ExchangeDeclareOptions},
    types::FieldTable,
    ExchangeKind,
};
use serde_json::Value;
use shared::{amqp, secret::Secret};
use sqlx::{Connection as _, PgConnection};

const DEADLINE: Duration = Duration::from_secs(30);

/// A fresh database whose tables belong to the owner role and whose service
/// roles have this version's grants, like a production database after
/// `worker migrate` and the grants file.
async fn migrated_by_the_owner() -> (TestDb, PgRoles) {
    let db = TestDb::empty().await;
    let roles = PgRoles::create(&db);
    let migrated = migrate_as_owner(&roles).await;
    assert_eq!(
        migrated,
        format!("applied={}", shared::db::MIGRATOR.iter().count())
    );
    let granted = roles.apply();
    assert!(
        !granted.contains("not created yet"),
        "the grants name a table the migrations do not make: {granted}"
    );
    (db, roles)
}

/// `worker migrate` with the owner's URL; returns its last line.
async fn migrate_as_owner(roles: &PgRoles) -> String {
    let owner_url = roles.url(&roles.owner);
    let migrated = run_worker_at(&owner_url, "unused", &["migrate"], &[]).await;
    assert!(migrated.status.success(), "{}", migrated.stderr);
    migrated.last_line().to_owned()
}

fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn ingress_env<'a>(
    database_url: &'a str,
    amqp_url: &'a str,
    prefix: &'a str,
    secret: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CLERK_WEBHOOK_SECRET", secret),
        ("INGRESS_ADDR", "127.0.0.1:0"),
        ("DATABASE_URL", database_url),
        ("AMQP_URL", amqp_url),
        ("AMQP_PREFIX", prefix),
    ]
}

/// The ingress's webhook URL, from its "ingress listening" log line.
fn webhook_url(ingress: &mut Service) -> String {
    let listening = ingress.wait_for_line("ingress listening", DEADLINE);
    let log: Value = serde_json::from_str(&listening).expect("JSON log line");
    let addr = log["addr"].as_str().expect("addr field");
    format!("http://{addr}/webhooks/clerk")
}

async fn post(url: &str, delivery: &Delivery) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("svix-id", &delivery.id)
        .header("svix-timestamp", &delivery.timestamp)
        .header("svix-signature", &delivery.signature)
        .header("content-type", "application/json")
        .body(delivery.body.clone())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// The SQLSTATE of what `role` gets for `sql`, or `None` if it is allowed.
async fn refusal(roles: &PgRoles, role: &str, sql: &str) -> Option<String> {
    let mut connection = PgConnection::connect(&roles.url(role))
        .await
        .expect("connect as the role");
    let outcome = sqlx::query(sql).execute(&mut connection).await;
    connection.close().await.ok();
    match outcome {
        Ok(_) => None,
        Err(error) => Some(
            error
                .as_database_error()
                .and_then(|e| e.code())
                .map_or_else(|| error.to_string(), |code| code.into_owned()),
        ),
    }
}

fn is_access_refused(error: &lapin::Error) -> bool {
    error.to_string().contains("ACCESS_REFUSED")
}

#[tokio::test(flavor = "multi_thread")]
async fn ingress_and_worker_under_their_own_roles_process_a_user_and_can_do_no_more() {
    let (db, roles) = migrated_by_the_owner().await;
    let prefix = unique_prefix();
    let broker = TestBroker::adopt(&prefix).await;
    let users = BrokerUsers::create(&prefix);
    let secret = new_secret();
    sqlx::query(
        "INSERT INTO memberships (email, user_id, status, activated_at) VALUES \
         ('ada@example.org', 'user_roles', 'active', now()), ('next@example.org', NULL, 'waitlisted', NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let worker_db = roles.url(&roles.worker);
    let worker_amqp = users.url(&users.worker);
    let mut worker = Service::worker_run(&worker_db, &prefix, &[("AMQP_URL", &worker_amqp)]);
    worker.wait_for_line("worker ready", DEADLINE);
    let ingress_db = roles.url(&roles.ingress);
    let ingress_amqp = users.url(&users.ingress);
    let mut ingress = Service::start(
        "ingress",
        &[],
        &ingress_env(&ingress_db, &ingress_amqp, &prefix, &secret),
    );
    let url = webhook_url(&mut ingress);

    for body in [user_created("user_roles"), user_deleted("user_roles")] {
        let (status, answer) = post(&url, &Delivery::signed(&secret, body)).await;
        assert_eq!((status, answer["status"].as_str()), (200, Some("ok")));
    }
    wait_processed(&db, 2, DEADLINE).await;

    let deleted: bool =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM users WHERE id = 'user_roles'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(deleted);
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM memberships ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(statuses, ["canceled", "active"]);
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_actions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(audited, 2);

    // The ingress reads and writes only the events and their outbox.
    for sql in [
        "SELECT * FROM users",
        "SELECT * FROM credit_accounts",
        "SELECT * FROM memberships",
        "UPDATE webhook_events SET attempts = 0",
        "DELETE FROM webhook_events",
        "CREATE TABLE intruder (id int)",
    ] {
        assert_eq!(
            refusal(&roles, &roles.ingress, sql).await.as_deref(),
            Some("42501"),
            "ingress: {sql}"
        );
    }
    assert_eq!(
        refusal(
            &roles,
            &roles.ingress,
            "SELECT count(*) FROM webhook_event_states WHERE published_at IS NULL"
        )
        .await,
        None
    );
    // The worker changes data but not the schema, and deletes no user.
    for sql in [
        "CREATE TABLE intruder (id int)",
        "DROP TABLE credit_ledger",
        "DELETE FROM users",
        "DELETE FROM credit_ledger",
    ] {
        assert_eq!(
            refusal(&roles, &roles.worker, sql).await.as_deref(),
            Some("42501"),
            "worker: {sql}"
        );
    }

    // The ingress's broker user cannot take the worker's messages, and
    // neither user reaches another prefix.
    let as_ingress = amqp::connect(&Secret::new(ingress_amqp.clone()), "e2e-ingress-user")
        .await
        .expect("ingress user connects");
    for queue in [&broker.names.worker_queue, &broker.names.dead_letter_queue] {
        let channel = as_ingress.create_channel().await.unwrap();
        let taken = channel
            .basic_get(queue.as_str().into(), BasicGetOptions::default())
            .await;
        assert!(
            taken.as_ref().is_err_and(is_access_refused),
            "ingress user reads {queue}: {taken:?}"
        );
    }
    let as_worker = amqp::connect(&Secret::new(worker_amqp.clone()), "e2e-worker-user")
        .await
        .expect("worker user connects");
    let other_prefix = format!("{prefix}x.events");
    for connection in [&as_ingress, &as_worker] {
        let channel = connection.create_channel().await.unwrap();
        let declared = channel
            .exchange_declare(
                other_prefix.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert!(
            declared.as_ref().is_err_and(is_access_refused),
            "{declared:?}"
        );
    }
    let _ = as_ingress.close(200, "done".into()).await;
    let _ = as_worker.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ingress_started_before_any_worker_publishes_once_the_worker_made_the_queue() {
    let (db, roles) = migrated_by_the_owner().await;
    let prefix = unique_prefix();
    let broker = TestBroker::adopt(&prefix).await;
    let users = BrokerUsers::create(&prefix);
    let secret = new_secret();
    let ingress_db = roles.url(&roles.ingress);
    let ingress_amqp = users.url(&users.ingress);
    let mut ingress = Service::start(
        "ingress",
        &[],
        &ingress_env(&ingress_db, &ingress_amqp, &prefix, &secret),
    );
    let url = webhook_url(&mut ingress);

    let (status, _) = post(&url, &Delivery::signed(&secret, user_created("user_early"))).await;
    assert_eq!(status, 200);
    // Its user may not create the worker queue: the event stays stored.
    ingress.wait_for_line("relay could not publish", DEADLINE);
    let worker_db = roles.url(&roles.worker);
    let worker_amqp = users.url(&users.worker);
    let mut worker = Service::worker_run(&worker_db, &prefix, &[("AMQP_URL", &worker_amqp)]);
    worker.wait_for_line("worker ready", DEADLINE);

    wait_processed(&db, 1, Duration::from_secs(60)).await;
    assert_eq!(broker.worker_queue_depth().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_role_and_user_are_enough_for_the_operators_commands() {
    let (db, roles) = migrated_by_the_owner().await;
    let prefix = unique_prefix();
    let broker = TestBroker::adopt(&prefix).await;
    let users = BrokerUsers::create(&prefix);
    let worker_db = roles.url(&roles.worker);
    let worker_amqp = users.url(&users.worker);
    let as_worker = amqp::connect(&Secret::new(worker_amqp.clone()), "e2e-worker-user")
        .await
        .expect("worker user connects");
    let channel = as_worker.create_channel().await.unwrap();
    amqp::declare_topology(&channel, &broker.names)
        .await
        .expect("the worker user declares the topology");
    let _ = as_worker.close(200, "done".into()).await;
    sqlx::query("INSERT INTO users (id, email) VALUES ('user_ops', 'ops@example.org')")
        .execute(&db.pool)
        .await
        .unwrap();
    store(&db, "msg_ops", &user_created("user_ops")).await;
    let env = [
        ("DATABASE_URL", worker_db.as_str()),
        ("AMQP_URL", worker_amqp.as_str()),
    ];

    let adjusted = run_worker(
        &db,
        &broker,
        &[
            "credits", "adjust", "user_ops", "--add", "5", "--reason", "test",
        ],
        &env,
    )
    .await;
    let replayed = run_worker(
        &db,
        &broker,
        &["replay", "--from-store", "--id", "msg_ops"],
        &env,
    )
    .await;
    let listed = run_worker(&db, &broker, &["dlq", "list", "--json"], &env).await;
    sqlx::query(
        "UPDATE webhook_events SET status = 'processed', processed_at = now(), \
         received_at = now() - interval '2 days'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pruned = run_worker(&db, &broker, &["prune", "--older-than", "1d"], &env).await;

    for finished in [&adjusted, &replayed, &listed, &pruned] {
        assert!(finished.status.success(), "{}", finished.stderr);
    }
    assert!(adjusted.last_line().contains("after=5"), "{adjusted:?}");
    assert_eq!(replayed.last_line(), "republished=1");
    assert_eq!(listed.last_line(), "[]");
    assert_eq!(pruned.last_line(), "deleted=1");
    assert_eq!(broker.worker_queue_depth().await, 1);
    // The event's state went with its body.
    let states: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_event_states")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(states, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_whose_role_cannot_apply_pending_migrations_stops_with_one_clear_line() {
    let db = TestDb::empty().await;
    let roles = PgRoles::create(&db);
    let prefix = unique_prefix();
    let ingress_db = roles.url(&roles.ingress);
    let secret = new_secret();
    let amqp_url = e2e::amqp_url();
    let mut ingress = Service::start(
        "ingress",
        &[],
        &ingress_env(&ingress_db, &amqp_url, &prefix, &secret),
    );

    let (status, stderr) = ingress.wait_exit(DEADLINE);

    assert!(!status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ingress: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    for expected in [
        "migrations are pending",
        &roles.ingress,
        "cannot apply them",
        "`worker migrate` with the owner's DATABASE_URL",
    ] {
        assert!(line.contains(expected), "{line}");
    }

    // One migration behind: the owner applied all but the newest.
    migrate_as_owner(&roles).await;
    roles.apply();
    let newest = shared::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .execute(&db.pool)
        .await
        .unwrap();
    let worker_db = roles.url(&roles.worker);
    let mut worker = Service::worker_run(&worker_db, &prefix, &[]);

    let (status, stderr) = worker.wait_exit(DEADLINE);

    assert!(!status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("worker: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains(&format!(
            "migrations are pending ({newest}) and role {} cannot apply them",
            roles.worker
        )),
        "{line}"
    );
}

/// The admin service under its own role and broker user: its tokens, the
/// reads, a credit change, a replay of a stored event and of a dead letter;
/// and no more (it deletes no event and no user).
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_role_and_user_are_enough_for_the_admin_service() {
    let (db, roles) = migrated_by_the_owner().await;
    let prefix = unique_prefix();
    let broker = TestBroker::adopt(&prefix).await;
    let users = BrokerUsers::create(&prefix);
    let admin_db = roles.url(&roles.admin);
    let admin_amqp = users.url(&users.admin);
    let worker_amqp = users.url(&users.worker);
    let as_worker = amqp::connect(&Secret::new(worker_amqp), "e2e-worker-user")
        .await
        .expect("worker user connects");
    let channel = as_worker.create_channel().await.unwrap();
    amqp::declare_topology(&channel, &broker.names)
        .await
        .unwrap();
    let _ = as_worker.close(200, "done".into()).await;
    sqlx::query("INSERT INTO users (id, email) VALUES ('user_adm', 'adm@example.org')")
        .execute(&db.pool)
        .await
        .unwrap();
    store(&db, "msg_adm", &user_created("user_adm")).await;
    store(&db, "msg_dead", &user_created("user_dead")).await;
    e2e::commands::mark_dead(&db, "msg_dead", 5, "injected failure").await;
    e2e::commands::dead_letter(
        &broker,
        "msg_dead",
        &user_created("user_dead"),
        5,
        "injected failure",
        None,
    )
    .await;
    let env = [
        ("DATABASE_URL", admin_db.as_str()),
        ("AMQP_URL", admin_amqp.as_str()),
        ("AMQP_PREFIX", prefix.as_str()),
        ("ADMIN_ADDR", "127.0.0.1:0"),
    ];
    let created = std::process::Command::new(e2e::binary("admin"))
        .args(["tokens", "create", "ops"])
        .env("DATABASE_URL", &admin_db)
        .env("LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let mut admin = Service::start("admin", &[], &env);
    let ready = admin.wait_for_line("admin ready", DEADLINE);
    let log: Value = serde_json::from_str(&ready).unwrap();
    let base = format!("http://{}", log["addr"].as_str().unwrap());
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: &str| {
        http.request(method, format!("{base}{path}"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };

    let mut statuses = Vec::new();
    for (method, path, body) in [
        (reqwest::Method::GET, "/api/admin/users/user_adm", ""),
        (
            reqwest::Method::GET,
            "/api/admin/events?user_id=user_adm",
            "",
        ),
        (reqwest::Method::GET, "/api/admin/events/msg_adm", ""),
        (
            reqwest::Method::PUT,
            "/api/admin/users/user_adm/credits",
            r#"{"add": 5, "reason": "least privilege"}"#,
        ),
        (
            reqwest::Method::POST,
            "/api/admin/events/msg_adm/replay",
            "",
        ),
        (reqwest::Method::GET, "/api/admin/dlq", ""),
        (
            reqwest::Method::POST,
            "/api/admin/dlq/replay",
            r#"{"ids": ["msg_dead"]}"#,
        ),
        (reqwest::Method::GET, "/api/admin/audit", ""),
    ] {
        let response = call(method.clone(), path, body).await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        statuses.push((format!("{method} {path}"), status, text));
    }
    let delete = refusal(&roles, &roles.admin, "DELETE FROM webhook_events").await;
    let users = refusal(&roles, &roles.admin, "DELETE FROM users").await;
    admin.terminate();

    for (route, status, text) in &statuses {
        assert_eq!(*status, 200, "{route}: {text}");
    }
    assert_eq!(
        broker.worker_queue_depth().await,
        2,
        "both replays published"
    );
    assert!(delete.is_some(), "the admin role deletes no event");
    assert!(users.is_some(), "the admin role deletes no user");
}
