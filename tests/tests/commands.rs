//! The worker's operator commands (`SPEC.md` section 2) against a real
//! PostgreSQL and RabbitMQ: `dlq list`, `dlq replay`, `replay --from-store`
//! and `prune`, in-process and as the built binary.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    broker::TestBroker,
    commands::{dead_letter, dlq_depth, event_state, mark_dead, run_worker},
    db::TestDb,
    deliveries::{new_id, user_deleted, user_event},
    wait_for,
    worker::{deliver, finished_events, store, TestWorker},
};
use serde_json::{json, Value};
use worker::{
    dlq::{self, DlqError, ReplayRequest, Selection},
    prune::{prune, PruneRequest},
};

const DEADLINE: Duration = Duration::from_secs(30);

async fn wait_dlq_depth(broker: &TestBroker, expected: u32) {
    wait_for(
        &format!("{expected} message(s) in the dead-letter queue"),
        DEADLINE,
        || async { (dlq_depth(broker).await == expected).then_some(()) },
    )
    .await;
}

async fn wait_status(db: &TestDb, webhook_id: &str, status: &str) {
    wait_for(
        &format!("{webhook_id} to be {status}"),
        DEADLINE,
        || async { (event_state(db, webhook_id).await.0 == status).then_some(()) },
    )
    .await;
}

async fn users_named(db: &TestDb, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The value of a worker metric line containing every one of `labels`.
async fn metric(ops_addr: std::net::SocketAddr, name: &str, labels: &[&str]) -> u64 {
    let text = reqwest::get(format!("http://{ops_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A `user.created` whose data has no id: the worker dead-letters it at once.
fn unparseable_user_created() -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "user.created", "object": "event", "data": {"no_id": true}}))
        .unwrap()
}

/// The dead-letter queue holds exactly the message `webhook_id` (taken to
/// check), and nothing was published for the worker.
async fn assert_only_dead_letter_is(broker: &TestBroker, webhook_id: &str) {
    let kept = broker.take(&broker.names.dead_letter_queue).await;
    assert_eq!(
        kept.and_then(|m| m.message_id).as_deref(),
        Some(webhook_id),
        "the dead letter is still there"
    );
    assert!(broker.take(&broker.names.dead_letter_queue).await.is_none());
    assert!(
        broker.take(&broker.names.worker_queue).await.is_none(),
        "nothing re-published"
    );
}

/// A stored event the worker gave up on after five attempts, in the DLQ.
async fn stored_dead_letter(db: &TestDb, broker: &TestBroker, user_id: &str) -> String {
    let id = new_id();
    let body = user_event("user.created", user_id, "dead@example.org", 1000);
    store(db, &id, &body).await;
    mark_dead(db, &id, 5, "injected failure").await;
    dead_letter(broker, &id, &body, 5, "injected failure", None).await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_event_is_listed_with_its_id_type_attempts_and_error_and_stays_in_the_dlq() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();
    deliver(&db, &broker, &[(id.clone(), unparseable_user_created())]).await;
    wait_status(&db, &id, "dead").await;
    wait_dlq_depth(&broker, 1).await;

    let listing = dlq::list(&db.pool, &broker.connection, &broker.names, 100)
        .await
        .unwrap();
    let json_run = run_worker(&db, &broker, &["dlq", "list", "--json"], &[]).await;
    let table_run = run_worker(&db, &broker, &["dlq", "list"], &[]).await;

    assert_eq!(listing.total, 1);
    let [entry] = listing.entries.as_slice() else {
        panic!("one entry: {listing:?}");
    };
    assert_eq!(entry.svix_id.as_deref(), Some(id.as_str()));
    assert_eq!(entry.event_type, "user.created");
    assert_eq!(entry.attempts, Some(1));
    assert!(
        entry
            .last_error
            .as_deref()
            .unwrap()
            .contains("missing field `id`"),
        "{entry:?}"
    );
    let at = entry.dead_lettered_at.as_deref().unwrap();
    assert!(
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok(),
        "{at}"
    );

    assert!(json_run.status.success(), "{json_run:?}");
    let listed: Value = serde_json::from_str(&json_run.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["svix_id"], json!(id));
    assert_eq!(listed[0]["type"], json!("user.created"));
    assert_eq!(listed[0]["attempts"], json!(1));
    assert!(listed[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("missing field `id`"));
    assert!(listed[0]["dead_lettered_at"].is_string());

    assert!(table_run.status.success(), "{table_run:?}");
    let lines: Vec<&str> = table_run.stdout.lines().collect();
    assert!(lines[0].starts_with("SVIX ID"), "{}", table_run.stdout);
    assert!(lines[1].starts_with(&id), "{}", table_run.stdout);
    assert!(lines[1].contains("user.created"), "{}", table_run.stdout);
    assert!(
        lines[1].contains("missing field `id`"),
        "{}",
        table_run.stdout
    );
    assert!(
        table_run.last_line().contains(&format!(
            "1 dead letter(s) in {}",
            broker.names.dead_letter_queue
        )),
        "{}",
        table_run.stdout
    );

    wait_dlq_depth(&broker, 1).await;
    let kept = broker.take(&broker.names.dead_letter_queue).await.unwrap();
    assert_eq!(kept.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(event_state(&db, &id).await.0, "dead");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_dlq_is_listed_as_empty_and_a_limit_shows_the_first_dead_letters() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;

    let empty_table = run_worker(&db, &broker, &["dlq", "list"], &[]).await;
    let empty_json = run_worker(&db, &broker, &["dlq", "list", "--json"], &[]).await;
    let first = stored_dead_letter(&db, &broker, "user_one").await;
    stored_dead_letter(&db, &broker, "user_two").await;
    stored_dead_letter(&db, &broker, "user_three").await;
    wait_dlq_depth(&broker, 3).await;
    let limited = run_worker(&db, &broker, &["dlq", "list", "--limit", "1"], &[]).await;
    let again = run_worker(&db, &broker, &["dlq", "list", "--limit", "1"], &[]).await;

    assert!(empty_table.status.success(), "{empty_table:?}");
    assert_eq!(
        empty_table.stdout,
        format!("no dead letters in {}\n", broker.names.dead_letter_queue)
    );
    assert!(empty_json.status.success(), "{empty_json:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&empty_json.stdout).unwrap(),
        json!([])
    );
    assert!(limited.status.success(), "{limited:?}");
    let lines: Vec<&str> = limited.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", limited.stdout);
    assert!(lines[1].starts_with(&first), "{}", limited.stdout);
    assert!(
        lines[2].starts_with("1 of 3 dead letters"),
        "{}",
        limited.stdout
    );
    assert_eq!(again.stdout, limited.stdout, "listing keeps the order");
    wait_dlq_depth(&broker, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_an_id_that_is_not_in_the_dlq_fails_and_changes_nothing() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let dead = stored_dead_letter(&db, &broker, "user_kept").await;
    wait_dlq_depth(&broker, 1).await;
    let unknown = new_id();

    let in_process = dlq::replay(
        &db.pool,
        &broker.connection,
        &broker.names,
        &ReplayRequest {
            selection: Selection::Ids(vec![dead.clone(), unknown.clone()]),
            dry_run: false,
            actor: "test".to_owned(),
        },
        &mut |_| {},
    )
    .await;
    let binary = run_worker(
        &db,
        &broker,
        &["dlq", "replay", "--id", &unknown, "--id", &dead],
        &[],
    )
    .await;

    match in_process {
        Err(DlqError::NotInQueue { missing, .. }) => assert_eq!(missing, vec![unknown.clone()]),
        other => panic!("expected NotInQueue, got {other:?}"),
    }
    assert!(!binary.status.success(), "{binary:?}");
    let error = binary.stderr.trim();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains("not in the dead-letter queue"), "{error}");
    assert!(error.contains(&unknown), "{error}");
    assert!(!error.contains(&dead), "names only the missing id: {error}");
    assert_eq!(binary.stdout, "");
    assert_only_dead_letter_is(&broker, &dead).await;
    assert_eq!(
        event_state(&db, &dead).await,
        ("dead".to_owned(), 5, Some("injected failure".to_owned()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_replay_shows_what_it_would_replay_and_changes_nothing() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let dead = stored_dead_letter(&db, &broker, "user_dry").await;
    wait_dlq_depth(&broker, 1).await;

    let run = run_worker(&db, &broker, &["dlq", "replay", "--all", "--dry-run"], &[]).await;

    assert!(run.status.success(), "{run:?}");
    assert_eq!(
        run.stdout,
        format!(
            "would replay {dead} user.created (attempts 5: injected failure)\nwould_replay=1\n"
        )
    );
    assert_only_dead_letter_is(&broker, &dead).await;
    assert_eq!(
        event_state(&db, &dead).await,
        ("dead".to_owned(), 5, Some("injected failure".to_owned()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_a_type_re_publishes_only_its_dead_letters_as_fresh_events() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let created_a = new_id();
    let created_b = new_id();
    let deleted = new_id();
    let body_a = user_event("user.created", "user_ta", "ta@example.org", 1000);
    dead_letter(&broker, &created_a, &body_a, 5, "boom", Some(traceparent)).await;
    dead_letter(&broker, &deleted, &user_deleted("user_td"), 2, "boom", None).await;
    dead_letter(
        &broker,
        &created_b,
        &user_event("user.created", "user_tb", "tb@example.org", 1000),
        5,
        "boom",
        None,
    )
    .await;
    wait_dlq_depth(&broker, 3).await;

    let run = run_worker(
        &db,
        &broker,
        &["dlq", "replay", "--type", "user.created"],
        &[],
    )
    .await;

    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.last_line(), "replayed=2");
    let mut replayed = broker.take_worker_messages(2, DEADLINE).await;
    replayed.sort_by_key(|m| m.message_id.clone());
    let mut expected = vec![created_a.clone(), created_b.clone()];
    expected.sort();
    assert_eq!(
        replayed
            .iter()
            .map(|m| m.message_id.clone().unwrap())
            .collect::<Vec<_>>(),
        expected
    );
    for message in &replayed {
        assert_eq!(message.routing_key, "user.created");
        assert_eq!(message.type_header.as_deref(), Some("user.created"));
        assert_eq!(message.delivery_mode, Some(2), "persistent");
        assert_eq!(message.header("x-attempts"), None);
        assert_eq!(message.header("x-last-error"), None);
    }
    let a = replayed
        .iter()
        .find(|m| m.message_id.as_deref() == Some(created_a.as_str()))
        .unwrap();
    assert_eq!(a.body, body_a, "the same body");
    assert_eq!(a.traceparent.as_deref(), Some(traceparent));
    let left = broker.take(&broker.names.dead_letter_queue).await.unwrap();
    assert_eq!(left.message_id.as_deref(), Some(deleted.as_str()));
    assert!(broker.take(&broker.names.dead_letter_queue).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_every_dead_letter_goes_in_confirmed_batches_and_empties_the_dlq() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let mut ids = Vec::new();
    for i in 0..250 {
        let id = new_id();
        let body = user_event(
            "user.updated",
            &format!("user_many_{i}"),
            "m@example.org",
            1000,
        );
        dead_letter(&broker, &id, &body, 5, "boom", None).await;
        ids.push(id);
    }
    wait_dlq_depth(&broker, 250).await;
    let mut totals = Vec::new();

    let report = dlq::replay(
        &db.pool,
        &broker.connection,
        &broker.names,
        &ReplayRequest {
            selection: Selection::All,
            dry_run: false,
            actor: "test".to_owned(),
        },
        &mut |replayed| totals.push(replayed),
    )
    .await
    .unwrap();

    assert_eq!(report.to_string(), "replayed=250");
    assert_eq!(totals, vec![100, 200, 250]);
    while let Some(m) = broker.take(&broker.names.dead_letter_queue).await {
        eprintln!(
            "LEFT {:?} pos={:?} {:?}",
            m.message_id,
            ids.iter().position(|i| Some(i) == m.message_id.as_ref()),
            m.headers
        );
    }
    assert!(broker.take(&broker.names.dead_letter_queue).await.is_none());
    let mut replayed: Vec<String> = broker
        .take_worker_messages(250, DEADLINE)
        .await
        .into_iter()
        .map(|m| m.message_id.unwrap())
        .collect();
    replayed.sort();
    ids.sort();
    assert_eq!(replayed, ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_handler_is_repaired_and_its_dead_letter_replayed_applies_exactly_once() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    // Inserting this one user fails until the trigger is dropped; a raised
    // exception counts as transient, so the worker retries it to the end.
    sqlx::query(
        "CREATE FUNCTION fail_user_insert() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF NEW.id = 'user_repair' THEN RAISE EXCEPTION 'injected failure'; END IF; \
             RETURN NEW; \
         END $$",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER fail_user_insert BEFORE INSERT ON users \
         FOR EACH ROW EXECUTE FUNCTION fail_user_insert()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let worker = TestWorker::spawn(&db, &broker).await;
    let broken = new_id();
    let other = new_id();

    deliver(
        &db,
        &broker,
        &[(
            broken.clone(),
            user_event("user.created", "user_repair", "repair@example.org", 1000),
        )],
    )
    .await;
    deliver(
        &db,
        &broker,
        &[(other.clone(), user_deleted("user_bystander"))],
    )
    .await;
    wait_status(&db, &broken, "dead").await;
    wait_dlq_depth(&broker, 1).await;
    wait_status(&db, &other, "processed").await;

    let (status, attempts, last_error) = event_state(&db, &broken).await;
    assert_eq!((status.as_str(), attempts), ("dead", 5));
    assert!(
        last_error.as_deref().unwrap().contains("injected failure"),
        "{last_error:?}"
    );
    let listing = dlq::list(&db.pool, &broker.connection, &broker.names, 100)
        .await
        .unwrap();
    assert_eq!(listing.entries.len(), 1);
    assert_eq!(listing.entries[0].svix_id.as_deref(), Some(broken.as_str()));
    assert_eq!(listing.entries[0].attempts, Some(5));
    assert!(listing.entries[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("injected failure"));
    assert_eq!(users_named(&db, "user_repair").await, 0);

    sqlx::query("DROP TRIGGER fail_user_insert ON users")
        .execute(&db.pool)
        .await
        .unwrap();
    let run = run_worker(&db, &broker, &["dlq", "replay", "--id", &broken], &[]).await;

    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.last_line(), "replayed=1");
    wait_status(&db, &broken, "processed").await;
    assert_eq!(
        event_state(&db, &broken).await,
        ("processed".to_owned(), 1, None)
    );
    assert_eq!(users_named(&db, "user_repair").await, 1);
    assert_eq!(finished_events(&db).await, 2);
    worker.stop().await;
    assert!(
        broker.take(&broker.names.dead_letter_queue).await.is_none(),
        "the dead-letter queue is empty"
    );
    assert!(broker.take(&broker.names.worker_queue).await.is_none());
    assert_eq!(users_named(&db, "user_repair").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_a_processed_event_from_the_store_is_skipped_by_the_worker_as_a_duplicate() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let worker = TestWorker::spawn(&db, &broker).await;
    let id = new_id();
    deliver(
        &db,
        &broker,
        &[(
            id.clone(),
            user_event("user.created", "user_dup", "dup@example.org", 1000),
        )],
    )
    .await;
    wait_status(&db, &id, "processed").await;
    let duplicates = [r#"outcome="duplicate""#];

    let run = run_worker(&db, &broker, &["replay", "--from-store", "--id", &id], &[]).await;

    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.last_line(), "republished=1");
    wait_for("the worker to skip the duplicate", DEADLINE, || async {
        (metric(worker.ops_addr, "clerk_worker_events_total", &duplicates).await == 1).then_some(())
    })
    .await;
    assert_eq!(
        event_state(&db, &id).await,
        ("processed".to_owned(), 1, None)
    );
    assert_eq!(users_named(&db, "user_dup").await, 1);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_from_the_store_refuses_unknown_ids_and_bad_instants_and_publishes_nothing() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let known = new_id();
    store(&db, &known, &user_deleted("user_known")).await;
    let unknown = new_id();

    let unknown_run = run_worker(
        &db,
        &broker,
        &["replay", "--from-store", "--id", &known, "--id", &unknown],
        &[],
    )
    .await;
    let bad_since = run_worker(
        &db,
        &broker,
        &["replay", "--from-store", "--since", "yesterday"],
        &[],
    )
    .await;

    assert!(!unknown_run.status.success(), "{unknown_run:?}");
    let error = unknown_run.stderr.trim();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains(&unknown), "{error}");
    assert!(!error.contains(&known), "{error}");
    assert!(!bad_since.status.success(), "{bad_since:?}");
    let error = bad_since.stderr.trim();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains("RFC 3339"), "{error}");
    assert!(
        broker.take(&broker.names.worker_queue).await.is_none(),
        "nothing published"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_from_the_store_since_an_instant_gives_dead_events_of_that_type_a_fresh_start() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let dead = new_id();
    let dead_body = user_event("user.created", "user_sa", "sa@example.org", 1000);
    store(&db, &dead, &dead_body).await;
    mark_dead(&db, &dead, 5, "injected failure").await;
    let other_type = new_id();
    store(&db, &other_type, &user_deleted("user_sb")).await;
    let too_old = new_id();
    store(
        &db,
        &too_old,
        &user_event("user.created", "user_sc", "sc@example.org", 1000),
    )
    .await;
    sqlx::query(
        "UPDATE webhook_events SET received_at = now() - interval '2 days' WHERE webhook_id = $1",
    )
    .bind(&too_old)
    .execute(&db.pool)
    .await
    .unwrap();
    let since = (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();

    let run = run_worker(
        &db,
        &broker,
        &[
            "replay",
            "--from-store",
            "--since",
            &since,
            "--type",
            "user.created",
        ],
        &[],
    )
    .await;

    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.last_line(), "republished=1");
    let messages = broker.take_worker_messages(1, DEADLINE).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].message_id.as_deref(), Some(dead.as_str()));
    assert_eq!(messages[0].body, dead_body);
    assert_eq!(messages[0].type_header.as_deref(), Some("user.created"));
    assert_eq!(
        event_state(&db, &dead).await,
        ("published".to_owned(), 0, None)
    );
}

/// Stores an event in `status`, received `age` ago.
async fn stored_with(db: &TestDb, status: &str, age: &str) -> String {
    let id = new_id();
    store(db, &id, &user_deleted(&format!("user_{status}"))).await;
    sqlx::query(
        "UPDATE webhook_events SET status = $2, \
             processed_at = CASE WHEN $2 IN ('processed', 'ignored') THEN now() END, \
             published_at = CASE WHEN $2 = 'received' THEN NULL ELSE published_at END, \
             received_at = now() - $3::interval \
         WHERE webhook_id = $1",
    )
    .bind(&id)
    .bind(status)
    .bind(age)
    .execute(&db.pool)
    .await
    .unwrap();
    id
}

async fn stored_ids(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT webhook_id FROM webhook_events ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_old_processed_and_ignored_events_and_keeps_everything_else() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    stored_with(&db, "processed", "2 hours").await;
    stored_with(&db, "ignored", "3 days").await;
    let mut kept = Vec::new();
    kept.push(stored_with(&db, "processed", "10 minutes").await);
    for status in ["dead", "failed", "published", "received"] {
        kept.push(stored_with(&db, status, "400 days").await);
    }
    let everything = stored_ids(&db).await;

    let dry_run = run_worker(
        &db,
        &broker,
        &["prune", "--older-than", "1h", "--dry-run"],
        &[],
    )
    .await;
    let after_dry_run = stored_ids(&db).await;
    let pruned = run_worker(&db, &broker, &["prune", "--older-than", "1h"], &[]).await;

    assert!(dry_run.status.success(), "{dry_run:?}");
    assert_eq!(dry_run.stdout, "would_delete=2\n");
    assert_eq!(after_dry_run, everything, "a dry run deletes nothing");
    assert!(pruned.status.success(), "{pruned:?}");
    assert_eq!(pruned.stdout, "deleted=2\n");
    assert_eq!(stored_ids(&db).await, kept);
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_works_through_many_batches_until_nothing_old_is_left() {
    let db = TestDb::new().await;
    for _ in 0..7 {
        stored_with(&db, "processed", "2 days").await;
    }
    let young = stored_with(&db, "processed", "1 minute").await;
    let mut totals = Vec::new();

    let report = prune(
        &db.pool,
        &PruneRequest {
            older_than: Duration::from_secs(24 * 3600),
            dry_run: false,
            batch_size: 2,
            actor: "test".to_owned(),
        },
        &mut |deleted| totals.push(deleted),
    )
    .await
    .unwrap();

    assert_eq!(report.rows, 7);
    assert_eq!(report.to_string(), "deleted=7");
    assert_eq!(totals, vec![2, 4, 6, 7]);
    assert_eq!(stored_ids(&db).await, vec![young]);
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_refuses_a_zero_negative_or_malformed_age_and_deletes_nothing() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    stored_with(&db, "processed", "2 days").await;

    for age in ["0d", "--older-than=-5h", "30", "3 days", "1.5h", "soon"] {
        let args: Vec<&str> = if age.starts_with("--") {
            vec!["prune", age]
        } else {
            vec!["prune", "--older-than", age]
        };
        let run = run_worker(&db, &broker, &args, &[]).await;

        assert!(!run.status.success(), "{age}: {run:?}");
        assert_eq!(run.status.code(), Some(2), "{age}: {run:?}");
        let error = run.stderr.trim();
        assert_eq!(error.lines().count(), 1, "{age}: {error}");
        assert!(error.contains("--older-than"), "{age}: {error}");
        assert_eq!(run.stdout, "");
    }
    assert_eq!(stored_ids(&db).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_against_an_unreachable_broker_fails_on_one_line_without_the_password() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;

    let run = run_worker(
        &db,
        &broker,
        &["dlq", "list"],
        // Port 9 (discard) refuses connections on a test machine.
        &[("AMQP_URL", "amqp://guest:hunter2@127.0.0.1:9/%2f")],
    )
    .await;

    assert!(!run.status.success(), "{run:?}");
    let error = run.stderr.trim();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains("unreachable"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

/// A broker password with a `/`: unescaped, it makes the URL unparseable.
const BROKER_PASSWORD: &str = "se/cr3t-pw";
/// A database password with `/`, `@` and `:`.
const DATABASE_PASSWORD: &str = "db/pa@ss:w0rd";

/// Asserts that no spelling of either password (raw or percent-encoded)
/// appears in `output`: each spelling keeps `cr3t` or `w0rd`.
fn assert_no_password(output: &str) {
    for fragment in ["cr3t", "w0rd", BROKER_PASSWORD, DATABASE_PASSWORD] {
        assert!(!output.contains(fragment), "{fragment} in:\n{output}");
    }
}

/// The test database's URL with `DATABASE_PASSWORD`, percent-encoded (trust
/// authentication ignores it), or pasted in raw.
fn database_url_with_password(db: &TestDb, encoded: bool) -> String {
    let mut url = reqwest::Url::parse(&db.url(None)).unwrap();
    if encoded {
        url.set_password(Some(DATABASE_PASSWORD)).unwrap();
        url.to_string()
    } else {
        url.to_string().replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{DATABASE_PASSWORD}@"),
            1,
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_command_prints_an_odd_broker_or_database_password_whatever_fails() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let encoded_db = database_url_with_password(&db, true);
    let raw_db = database_url_with_password(&db, false);
    let raw_amqp = format!("amqp://guest:{BROKER_PASSWORD}@127.0.0.1:1/%2f");
    let encoded_amqp = "amqp://guest:se%2Fcr3t-pw@127.0.0.1:1/%2f";

    let unparseable_broker = run_worker(
        &db,
        &broker,
        &["dlq", "list"],
        &[
            ("DATABASE_URL", encoded_db.as_str()),
            ("AMQP_URL", raw_amqp.as_str()),
        ],
    )
    .await;
    let unreachable_broker = run_worker(
        &db,
        &broker,
        &["dlq", "list"],
        &[
            ("DATABASE_URL", encoded_db.as_str()),
            ("AMQP_URL", encoded_amqp),
        ],
    )
    .await;
    let unparseable_database = run_worker(
        &db,
        &broker,
        &["dlq", "list"],
        &[
            ("DATABASE_URL", raw_db.as_str()),
            ("AMQP_URL", raw_amqp.as_str()),
        ],
    )
    .await;

    for run in [
        &unparseable_broker,
        &unreachable_broker,
        &unparseable_database,
    ] {
        assert!(!run.status.success(), "{run:?}");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
        assert_no_password(&run.stderr);
        assert_no_password(&run.stdout);
    }
    assert!(
        unparseable_broker
            .stderr
            .contains("AMQP_URL is not a valid"),
        "{unparseable_broker:?}"
    );
    assert!(
        unreachable_broker
            .stderr
            .contains("RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f is unreachable"),
        "{unreachable_broker:?}"
    );
    assert!(
        unparseable_database
            .stderr
            .contains("DATABASE_URL is not a valid"),
        "{unparseable_database:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_run_never_prints_an_odd_broker_or_database_password_in_its_logs_or_its_error() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let encoded_db = database_url_with_password(&db, true);
    let raw_amqp = format!("amqp://guest:{BROKER_PASSWORD}@127.0.0.1:1/%2f");
    let encoded_amqp = "amqp://guest:se%2Fcr3t-pw@127.0.0.1:1/%2f";

    let mut runs = Vec::new();
    for amqp_url in [raw_amqp.as_str(), encoded_amqp] {
        runs.push(
            run_worker(
                &db,
                &broker,
                &["run"],
                &[
                    ("DATABASE_URL", encoded_db.as_str()),
                    ("AMQP_URL", amqp_url),
                    ("WORKER_OPS_ADDR", "127.0.0.1:0"),
                    ("RUST_LOG", "debug"),
                ],
            )
            .await,
        );
    }

    for run in &runs {
        assert!(!run.status.success(), "{run:?}");
        assert_no_password(&run.stderr);
    }
    assert!(
        runs[0].stderr.contains("AMQP_URL is not a valid"),
        "{:?}",
        runs[0]
    );
    assert!(
        runs[1].stderr.contains("RabbitMQ not reachable yet")
            && runs[1].stderr.contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "the retries are logged, with the URL redacted: {:?}",
        runs[1]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_command_that_changes_state_writes_one_audit_row_naming_its_actor_and_a_dry_run_none()
{
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let dead = stored_dead_letter(&db, &broker, "user_audited").await;
    wait_dlq_depth(&broker, 1).await;
    let actor = [("USER", "ignored_os_user")];

    let dry = run_worker(
        &db,
        &broker,
        &["dlq", "replay", "--all", "--dry-run"],
        &actor,
    )
    .await;
    let replayed = run_worker(
        &db,
        &broker,
        &["dlq", "replay", "--id", &dead, "--actor", "ops_ana"],
        &actor,
    )
    .await;
    let from_store = run_worker(
        &db,
        &broker,
        &[
            "replay",
            "--from-store",
            "--id",
            &dead,
            "--actor",
            "ops_ana",
        ],
        &actor,
    )
    .await;
    let pruned = run_worker(&db, &broker, &["prune", "--older-than", "30d"], &actor).await;

    for run in [&dry, &replayed, &from_store, &pruned] {
        assert!(run.status.success(), "{run:?}");
    }
    let rows: Vec<(String, String, Value)> =
        sqlx::query_as("SELECT action_type, actor, details FROM admin_actions ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let kinds: Vec<(&str, &str)> = rows
        .iter()
        .map(|(kind, actor, _)| (kind.as_str(), actor.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("dlq_replay", "ops_ana"),
            ("replay_from_store", "ops_ana"),
            ("prune", "ignored_os_user"),
        ],
        "one row per real run, none for the dry run; --actor, else $USER"
    );
    assert_eq!(rows[0].2["selection"], json!({"ids": [dead]}));
    assert_eq!(rows[0].2["replayed"], json!(1));
    assert_eq!(rows[1].2["republished"], json!(1));
    assert_eq!(rows[2].2["deleted"], json!(0));
}
