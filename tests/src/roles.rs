//! Restricted PostgreSQL roles and RabbitMQ users for one test, made with the
//! files operators use (`deploy/postgres/roles.sql`, `deploy/rabbitmq/users.sh`)
//! and removed on drop, also when the test fails. Roles and users are shared
//! by the whole server, so their names are unique per test.
//!
//! Needs `psql` and `rabbitmqctl` (or the command in `TEST_RABBITMQCTL`, e.g.
//! `docker compose exec -T rabbitmq rabbitmqctl`) on this machine.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use crate::db::TestDb;

/// The repository's root, where `deploy/` is.
fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A fresh name prefix: lowercase, so it is also a plain SQL identifier.
fn unique() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The four roles of `deploy/postgres/roles.sql` on one test database.
pub struct PgRoles {
    /// Owns the schema and applies the migrations.
    pub owner: String,
    /// The ingress's role.
    pub ingress: String,
    /// The worker's role.
    pub worker: String,
    /// The admin service's role.
    pub admin: String,
    /// The database, as the test's superuser.
    superuser_url: String,
    /// The server's maintenance database, as the test's superuser.
    admin_url: String,
}

impl PgRoles {
    /// Creates the roles for `db` with the grants file. Before the migrations
    /// this lets the owner create tables; run [`PgRoles::apply`] again after
    /// them for the table grants.
    pub fn create(db: &TestDb) -> Self {
        let prefix = unique();
        let roles = Self {
            owner: format!("{prefix}_owner"),
            ingress: format!("{prefix}_ingress"),
            worker: format!("{prefix}_worker"),
            admin: format!("{prefix}_admin"),
            superuser_url: db.url(None),
            admin_url: crate::postgres_admin_url(),
        };
        roles.apply();
        roles
    }

    /// Runs `deploy/postgres/roles.sql` as the superuser; returns what psql printed.
    pub fn apply(&self) -> String {
        let file = repository().join("deploy/postgres/roles.sql");
        let output = run(
            Command::new("psql")
                .arg(&self.superuser_url)
                .args(["-X", "-v", "ON_ERROR_STOP=1"])
                .args(["-v", &format!("owner={}", self.owner)])
                .args(["-v", &format!("ingress={}", self.ingress)])
                .args(["-v", &format!("worker={}", self.worker)])
                .args(["-v", &format!("admin={}", self.admin)])
                .args(["-v", "owner_password=owner-test-password"])
                .args(["-v", "ingress_password=ingress-test-password"])
                .args(["-v", "worker_password=worker-test-password"])
                .args(["-v", "admin_password=admin-test-password"])
                .arg("-f")
                .arg(file),
            "psql -f deploy/postgres/roles.sql",
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The test database's URL as `role`.
    pub fn url(&self, role: &str) -> String {
        let mut url = reqwest::Url::parse(&self.superuser_url).expect("database url parses");
        url.set_username(role).expect("username");
        url.set_password(None).expect("no password");
        url.to_string()
    }
}

impl Drop for PgRoles {
    fn drop(&mut self) {
        let roles = format!(
            "\"{}\", \"{}\", \"{}\", \"{}\"",
            self.owner, self.ingress, self.worker, self.admin
        );
        // Their objects and grants in the test database (gone already if the
        // database was dropped first), then the roles themselves.
        let _ = Command::new("psql")
            .arg(&self.superuser_url)
            .args(["-X", "-q", "-c", &format!("DROP OWNED BY {roles}")])
            .output();
        let _ = Command::new("psql")
            .arg(&self.admin_url)
            .args(["-X", "-q", "-c", &format!("DROP ROLE IF EXISTS {roles}")])
            .output();
    }
}

/// The three users of `deploy/rabbitmq/users.sh` for one prefix.
pub struct BrokerUsers {
    /// The ingress's user.
    pub ingress: String,
    /// The worker's user.
    pub worker: String,
    /// The admin service's user.
    pub admin: String,
}

/// Every user's password in the tests; RabbitMQ users are per test anyway.
const BROKER_PASSWORD: &str = "broker-test-password";

fn rabbitmqctl() -> String {
    std::env::var("TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned())
}

impl BrokerUsers {
    /// Creates both users with the permissions for `prefix` on the test
    /// broker's virtual host.
    pub fn create(prefix: &str) -> Self {
        let base = unique();
        let users = Self {
            ingress: format!("{base}_ingress"),
            worker: format!("{base}_worker"),
            admin: format!("{base}_admin"),
        };
        run(
            Command::new("sh")
                .arg(repository().join("deploy/rabbitmq/users.sh"))
                .env("RABBITMQCTL", rabbitmqctl())
                .env("AMQP_PREFIX", prefix)
                .env("RABBITMQ_VHOST", vhost())
                .env("INGRESS_AMQP_USER", &users.ingress)
                .env("INGRESS_AMQP_PASSWORD", BROKER_PASSWORD)
                .env("WORKER_AMQP_USER", &users.worker)
                .env("WORKER_AMQP_PASSWORD", BROKER_PASSWORD)
                .env("ADMIN_AMQP_USER", &users.admin)
                .env("ADMIN_AMQP_PASSWORD", BROKER_PASSWORD),
            "deploy/rabbitmq/users.sh (needs rabbitmqctl, or TEST_RABBITMQCTL)",
        );
        users
    }

    /// The test broker's URL as `user`.
    pub fn url(&self, user: &str) -> String {
        let mut url = reqwest::Url::parse(&crate::amqp_url()).expect("AMQP url parses");
        url.set_username(user).expect("username");
        url.set_password(Some(BROKER_PASSWORD)).expect("password");
        url.to_string()
    }
}

impl Drop for BrokerUsers {
    fn drop(&mut self) {
        for user in [&self.ingress, &self.worker, &self.admin] {
            let _ = Command::new("sh")
                .args([
                    "-c",
                    &format!("{} --quiet delete_user \"$1\"", rabbitmqctl()),
                ])
                .args(["sh", user])
                .output();
        }
    }
}

/// The virtual host of the test broker's URL (`%2f` is `/`).
fn vhost() -> String {
    let url = reqwest::Url::parse(&crate::amqp_url()).expect("AMQP url parses");
    let path = url.path().trim_start_matches('/');
    if path.is_empty() {
        return "/".to_owned();
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
