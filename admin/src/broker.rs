//! The broker, for the routes that read or re-publish messages (DLQ list and
//! replay, replay of a stored event). A connection is opened per operation
//! and closed after it: the admin service has no long-lived traffic, and a
//! broker restart then needs nothing from it. Operations on the dead-letter
//! queue take turns: reading it hands every message back, so two readers at
//! once would see each other's messages as missing.

use std::{sync::Arc, time::Duration};

use lapin::Connection;
use shared::{amqp::Names, config::AmqpConfig};
use tokio::sync::{Mutex, MutexGuard};

use crate::error::AdminError;

/// Where the broker is, and the turn of the dead-letter queue.
#[derive(Clone)]
pub struct Broker {
    config: AmqpConfig,
    names: Names,
    dlq_turn: Arc<Mutex<()>>,
}

/// A connection for one operation; closed when dropped through [`Self::close`].
pub struct Session {
    /// The connection.
    pub connection: Connection,
    /// The names under the configured prefix.
    pub names: Names,
}

/// How long closing a session may wait for the broker's answer. The
/// operation is over by then: a broker that does not answer must not hold
/// the request, and dropping the connection closes its socket anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Session {
    /// Closes the connection, waiting at most [`CLOSE_TIMEOUT`] for the
    /// broker to confirm.
    pub async fn close(self) {
        if tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close(200, "done".into()))
            .await
            .is_err()
        {
            tracing::warn!(
                "RabbitMQ did not confirm closing the connection in time; it is dropped"
            );
        }
    }
}

impl Broker {
    /// The broker of `AMQP_URL` and `AMQP_PREFIX`.
    pub fn new(config: AmqpConfig) -> Self {
        let names = Names::new(&config.amqp_prefix);
        Self {
            config,
            names,
            dlq_turn: Arc::new(Mutex::new(())),
        }
    }

    /// Connects; 503 `broker_unavailable` when no node answers.
    pub async fn connect(&self) -> Result<Session, AdminError> {
        let connection = shared::amqp::connect(&self.config.amqp_url, "clerk-admin")
            .await
            .map_err(|error| {
                tracing::warn!(error.message = %shared::error::Chain(&error), "the broker is unreachable");
                AdminError::Unavailable {
                    code: "broker_unavailable",
                    detail: "RabbitMQ is unreachable; try again later".to_owned(),
                }
            })?;
        Ok(Session {
            connection,
            names: self.names.clone(),
        })
    }

    /// Waits for the dead-letter queue's turn.
    pub async fn dlq_turn(&self) -> MutexGuard<'_, ()> {
        self.dlq_turn.lock().await
    }
}
