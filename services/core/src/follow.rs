//! Following a JetStream subject through NATS restarts, partitions and lost
//! consumers.
//!
//! The services hear announcements through ephemeral pull consumers. The
//! client reconnects by itself, and a server restarted on its file storage
//! keeps the consumers; but a consumer can still go away: deleted by an
//! operator, expired after its `inactive_threshold` while a partition kept the
//! service away, or lost with the server's state. async-nats then ends the
//! message stream (`ConsumerDeleted`) or only reports missed heartbeats or
//! "no responders", and a loop over it would stop hearing anything.
//! [`Follower`] makes a new consumer whenever its consumer is gone, with
//! back-off, starting right after the last message it delivered: the caller
//! keeps hearing announcements, and none twice because of the new consumer.

use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::nats::NatsError;

const HEARTBEAT: Duration = Duration::from_secs(2);

/// An ephemeral pull consumer's messages that outlive the consumer.
pub struct Follower {
    stream: Stream,
    config: pull::Config,
    what: String,
    consumer: Option<PullConsumer>,
    messages: Option<pull::Stream>,
    /// Stream sequence after the last message delivered to the caller.
    resume_at: Option<u64>,
    retry: Backoff,
    subscriptions: u64,
}

impl Follower {
    /// Follows `stream` with consumers made from `config` (the first with
    /// its `deliver_policy`, later ones from where the last one stopped).
    /// `what` names it in logs. Nothing is created before the first [`Follower::next`].
    pub fn new(stream: Stream, config: pull::Config, what: impl Into<String>) -> Self {
        Self {
            stream,
            config,
            what: what.into(),
            consumer: None,
            messages: None,
            resume_at: None,
            retry: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            subscriptions: 0,
        }
    }

    /// Creates the consumer now instead of at the first [`Follower::next`],
    /// so that a `DeliverPolicy::New` follower sees every message published
    /// after this returns. Nothing happens if it exists already.
    pub async fn start(&mut self) -> Result<(), NatsError> {
        if self.messages.is_none() {
            self.subscribe().await?;
        }
        Ok(())
    }

    /// Consumers created so far (more than one: the first was lost).
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions
    }

    async fn subscribe(&mut self) -> Result<(), NatsError> {
        let err = |e: String| NatsError::Consumer { consumer: self.what.clone(), message: e };
        let mut config = self.config.clone();
        if let Some(start_sequence) = self.resume_at {
            // A stream that now ends before where we were was made anew
            // (the server lost its state): all of it is new to us.
            let last = self.stream.get_info().await.map_err(|e| err(e.to_string()))?.state.last_sequence;
            config.deliver_policy = if last + 1 < start_sequence {
                tracing::warn!(
                    "{}: the stream was made anew (last sequence {last}); reading it from the start",
                    self.what
                );
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence { start_sequence }
            };
        }
        if config.deliver_policy == DeliverPolicy::All {
            // Sequence numbers start again: what was delivered says nothing now.
            self.resume_at = None;
        }
        let err = |e: String| NatsError::Consumer { consumer: self.what.clone(), message: e };
        let consumer: PullConsumer = self.stream.create_consumer(config).await.map_err(|e| err(e.to_string()))?;
        // Short heartbeats: a consumer that vanished unnoticed (no
        // "Consumer Deleted" reached us) shows within seconds.
        let messages = consumer
            .stream()
            .expires(Duration::from_secs(10))
            .heartbeat(HEARTBEAT)
            .messages()
            .await
            .map_err(|e| err(e.to_string()))?;
        self.consumer = Some(consumer);
        self.messages = Some(messages);
        self.subscriptions += 1;
        Ok(())
    }

    /// Whether the server says the consumer no longer exists (not merely
    /// that it cannot be asked now).
    async fn consumer_gone(&self) -> bool {
        let Some(consumer) = &self.consumer else { return true };
        match consumer.get_info().await {
            Ok(_) => false,
            Err(e) => {
                let e = e.to_string().to_lowercase();
                e.contains("not found") || e.contains("10014")
            }
        }
    }

    /// The next message. A lost consumer is created again (retrying with
    /// back-off while NATS is away), so this never returns `None`; errors
    /// that leave the consumer in place are returned for the caller to log.
    /// Cancel-safe: dropping the future loses no delivered message.
    pub async fn next(&mut self) -> Option<Result<jetstream::Message, NatsError>> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.subscribe().await {
                    Ok(()) => {
                        if self.subscriptions > 1 {
                            tracing::info!(
                                "{}: following again with a new consumer (from stream sequence {:?})",
                                self.what,
                                self.resume_at
                            );
                        }
                        self.retry.reset();
                    }
                    Err(e) => {
                        tracing::warn!("{e}; trying again in {:.1}s", self.retry.delay().as_secs_f64());
                        self.retry.sleep().await;
                    }
                }
                continue;
            };
            let lost = match messages.next().await {
                Some(Ok(m)) => {
                    if let Ok(info) = m.info() {
                        if self.resume_at.is_some_and(|next| info.stream_sequence < next) {
                            // Delivered before: a consumer restored by a restarted
                            // server can lag behind what it sent (kill -9).
                            continue;
                        }
                        self.resume_at = Some(info.stream_sequence + 1);
                    }
                    return Some(Ok(m));
                }
                None => "the message stream ended".to_string(),
                Some(Err(e)) => {
                    // Missed heartbeats, "no responders", a failed pull: ask the server.
                    let gone = e.kind() == MessagesErrorKind::ConsumerDeleted
                        || e.to_string().contains("consumer not found")
                        || self.consumer_gone().await;
                    if !gone {
                        return Some(Err(NatsError::Consumer { consumer: self.what.clone(), message: e.to_string() }));
                    }
                    e.to_string()
                }
            };
            tracing::warn!("{}: consumer lost ({lost}); making a new one", self.what);
            self.messages = None;
            self.consumer = None;
        }
    }
}
