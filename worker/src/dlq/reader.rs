//! The dead-letter queue read with `basic.get`, every fetched message held
//! unacked until it is acked (replayed) or handed back in its order.

use std::collections::VecDeque;

use lapin::{
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::FieldTable,
    Acker, Channel, Connection, ErrorKind,
};
use shared::amqp::Names;

use super::{broker, DlqError};

/// Acks sent between two barriers (see [`Reader::barrier`]).
const ACKS_PER_BARRIER: usize = 16;

/// A channel on the dead-letter queue. Every message it fetched stays unacked
/// until it is acked (replayed) or, at [`Reader::release`], handed back.
pub(super) struct Reader {
    channel: Channel,
    /// The queue's name.
    pub(super) queue: String,
    /// Messages a barrier fetched, handed out by `next` before new ones.
    lookahead: VecDeque<BasicGetMessage>,
    /// Acks sent since the last `basic.get`.
    acks_since_get: usize,
    /// Whether this channel fetched anything.
    fetched: bool,
}

impl Reader {
    /// Opens a channel and checks that the queue exists.
    pub(super) async fn open(connection: &Connection, names: &Names) -> Result<Self, DlqError> {
        let queue = names.dead_letter_queue.clone();
        let channel = connection
            .create_channel()
            .await
            .map_err(broker("channel.open"))?;
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => Ok(Self {
                channel,
                queue,
                lookahead: VecDeque::new(),
                acks_since_get: 0,
                fetched: false,
            }),
            Err(error) if is_not_found(&error) => Err(DlqError::NoQueue { queue }),
            Err(error) => Err(broker("queue.declare")(error)),
        }
    }

    /// The next message, held unacked; `None` once the queue has no more.
    pub(super) async fn next(&mut self) -> Result<Option<BasicGetMessage>, DlqError> {
        match self.lookahead.pop_front() {
            Some(message) => Ok(Some(message)),
            None => self.get().await,
        }
    }

    async fn get(&mut self) -> Result<Option<BasicGetMessage>, DlqError> {
        let message = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await
            .map_err(broker("basic.get"))?;
        self.acks_since_get = 0;
        self.fetched |= message.is_some();
        Ok(message)
    }

    /// Acks a message: it leaves the queue.
    pub(super) async fn ack(&mut self, acker: &Acker) -> Result<(), DlqError> {
        acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(broker("basic.ack"))?;
        self.acks_since_get += 1;
        if self.acks_since_get >= ACKS_PER_BARRIER {
            self.barrier().await?;
        }
        Ok(())
    }

    /// A `basic.get`, which the queue answers only after applying everything
    /// this channel sent before it. The broker's channel holds acks back
    /// once a few dozen are unapplied and sends them later, and the ones
    /// still held back when the channel closes are lost: the queue would then
    /// hand acked messages back. A barrier every few acks prevents that. A
    /// message it fetches is handed out by `next`.
    async fn barrier(&mut self) -> Result<(), DlqError> {
        if let Some(message) = self.get().await? {
            self.lookahead.push_back(message);
        }
        Ok(())
    }

    /// Hands every message not acked back to the queue, with one `nack` in the
    /// order they were fetched (each goes behind the others), and closes the
    /// channel. If that fails, closing the channel hands them back anyway.
    pub(super) async fn release(mut self) {
        if self.acks_since_get > 0 {
            if let Err(error) = self.barrier().await {
                tracing::debug!(error.message = %shared::error::Chain(&error), "barrier before release failed");
            }
        }
        if self.fetched {
            let every_unacked = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            if let Err(error) = self.channel.basic_nack(0, every_unacked).await {
                tracing::debug!(error.message = %shared::error::Chain(&error), "nack failed");
            }
        }
        let _ = self.channel.close(200, "done".into()).await;
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}
