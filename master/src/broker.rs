//! RabbitMQ as the master uses it: the topology of DESIGN.md §4, confirmed publishing,
//! and a supervisor that rebuilds connection, channels and topology when the broker
//! restarts.
//!
//! A job must never be acknowledged to a user, moved or given back unless RabbitMQ has
//! it, so every publish is persistent, `mandatory` and confirmed, and a confirm that
//! comes with a returned message (no queue took it) counts as a failure. Users of the
//! broker see a `Session` per connection: when the connection dies every delivery of
//! that session is void (RabbitMQ requeues it), and consumers start again on the next.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use prost::Message;
use pyti::proto::QueuedJob;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Errors of the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection to RabbitMQ right now.
    #[error("RabbitMQ at {} is unreachable: {message}", pyti::redact::url(url))]
    Unavailable { url: String, message: String },
    /// RabbitMQ refused an operation.
    #[error("RabbitMQ: {action}: {source}")]
    Amqp {
        action: String,
        #[source]
        source: lapin::Error,
    },
    /// A publish was not confirmed or no queue took it.
    #[error("RabbitMQ did not accept the message for {queue}: {reason}")]
    NotAccepted { queue: String, reason: String },
}

/// Results of the broker.
pub type BrokerResult<T> = std::result::Result<T, BrokerError>;

fn amqp(action: impl Into<String>) -> impl FnOnce(lapin::Error) -> BrokerError {
    let action = action.into();
    move |source| BrokerError::Amqp { action, source }
}

/// Queue and exchange names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The prefix, `pyti` by default.
    pub prefix: String,
    /// How long a message may wait unconsumed in a worker's queue before it is
    /// dead-lettered to the returned queue (a worker that is gone never takes it).
    pub worker_queue_ttl_ms: u32,
}

/// What kind of queue a name is, which decides its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// `<prefix>.platform.<platform>`, `<prefix>.returned`, `<prefix>.dead`.
    Plain,
    /// `<prefix>.worker.<id>`: dead-letters to `<prefix>.returned`.
    Worker,
}

impl Topology {
    /// The direct exchange every queue is bound to (by its own name).
    pub fn exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    /// Submitted jobs waiting for capacity on `platform`.
    pub fn platform_queue(&self, platform: &str) -> String {
        format!("{}.platform.{platform}", self.prefix)
    }
    /// Jobs assigned to `worker_id`.
    pub fn worker_queue(&self, worker_id: &str) -> String {
        format!("{}.worker.{worker_id}", self.prefix)
    }
    /// Jobs workers gave back.
    pub fn returned_queue(&self) -> String {
        format!("{}.returned", self.prefix)
    }
    /// Jobs over their attempt limit.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    fn arguments(&self, kind: QueueKind) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        if kind == QueueKind::Worker {
            arguments.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(self.exchange().into()),
            );
            arguments.insert(
                ShortString::from("x-dead-letter-routing-key"),
                AMQPValue::LongString(self.returned_queue().into()),
            );
            arguments.insert(
                ShortString::from("x-message-ttl"),
                AMQPValue::LongLongInt(i64::from(self.worker_queue_ttl_ms)),
            );
        }
        arguments
    }
}

/// One live connection to RabbitMQ with its channels.
pub struct Session {
    /// Counts connections since the broker started; deliveries carry it.
    pub generation: u64,
    connection: Connection,
    publish: Channel,
    /// The channel consumers use (manual acks).
    pub consume: Channel,
    declared: Mutex<HashSet<String>>,
}

impl Session {
    /// Whether the connection and both channels are still up (RabbitMQ closes the
    /// consuming channel when a delivery is held past its consumer timeout).
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
            && self.publish.status().connected()
            && self.consume.status().connected()
    }
}

/// The master's handle on RabbitMQ (cheap to clone).
#[derive(Clone)]
pub struct Broker {
    amqp: pyti::amqp::Amqp,
    /// Names in use.
    pub topology: Topology,
    session: watch::Receiver<Option<Arc<Session>>>,
    known_queues: Arc<Mutex<BTreeMap<String, QueueKind>>>,
    rebuild: Arc<Notify>,
}

impl Broker {
    /// Starts the supervisor, which connects (and reconnects after every loss) until
    /// `shutdown`; returns at once. The handle of the supervisor task is returned so its
    /// owner can wait for it.
    pub fn start(
        amqp: pyti::amqp::Amqp,
        topology: Topology,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, session) = watch::channel(None);
        let broker = Self {
            amqp,
            topology,
            session,
            known_queues: Arc::new(Mutex::new(BTreeMap::new())),
            rebuild: Arc::new(Notify::new()),
        };
        #[expect(
            clippy::disallowed_methods,
            reason = "the handle goes to the caller, who owns the supervisor and waits for it"
        )]
        let supervisor = tokio::spawn(broker.clone().supervise(sender, shutdown));
        (broker, supervisor)
    }

    async fn supervise(
        self,
        sender: watch::Sender<Option<Arc<Session>>>,
        shutdown: CancellationToken,
    ) {
        let mut generation = 0;
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            generation += 1;
            match self.connect(generation).await {
                Ok((session, lost)) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(generation, url = %pyti::redact::url(self.amqp.url()), tls = self.amqp.is_tls(), "Connected to RabbitMQ");
                    let session = Arc::new(session);
                    sender.send_replace(Some(Arc::clone(&session)));
                    let mut poll = tokio::time::interval(Duration::from_millis(500));
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = lost.notified() => break,
                            () = self.rebuild.notified() => break,
                            _ = poll.tick() => if !session.is_connected() { break },
                        }
                    }
                    sender.send_replace(None);
                    let _ = session.connection.close(200, "reconnecting").await;
                    if !shutdown.is_cancelled() {
                        tracing::warn!(generation, "RabbitMQ connection lost; reconnecting");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Cannot set up RabbitMQ");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn connect(&self, generation: u64) -> BrokerResult<(Session, Arc<Notify>)> {
        let connection = self
            .amqp
            .connect(ConnectionProperties::default())
            .await
            .map_err(|e| BrokerError::Unavailable {
                url: self.amqp.url().to_owned(),
                message: e.to_string(),
            })?;
        let lost = Arc::new(Notify::new());
        let on_error = Arc::clone(&lost);
        connection.on_error(move |error| {
            tracing::warn!(%error, "RabbitMQ connection error");
            on_error.notify_one();
        });
        let publish = connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp("enabling publisher confirms"))?;
        let consume = connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        consume
            .basic_qos(256, BasicQosOptions::default())
            .await
            .map_err(amqp("setting the prefetch"))?;
        publish
            .exchange_declare(
                &self.topology.exchange(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("declaring {}", self.topology.exchange())))?;
        let session = Session {
            generation,
            connection,
            publish,
            consume,
            declared: Mutex::new(HashSet::new()),
        };
        let mut queues: Vec<(String, QueueKind)> = vec![
            (self.topology.returned_queue(), QueueKind::Plain),
            (self.topology.dead_queue(), QueueKind::Plain),
        ];
        queues.extend(
            self.known_queues
                .lock()
                .expect("queue list lock")
                .iter()
                .map(|(name, kind)| (name.clone(), *kind)),
        );
        for (name, kind) in queues {
            self.declare_on(&session, &name, kind).await?;
        }
        Ok((session, lost))
    }

    async fn declare_on(
        &self,
        session: &Session,
        queue: &str,
        kind: QueueKind,
    ) -> BrokerResult<()> {
        if session
            .declared
            .lock()
            .expect("declared lock")
            .contains(queue)
        {
            return Ok(());
        }
        session
            .publish
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                self.topology.arguments(kind),
            )
            .await
            .map_err(amqp(format!("declaring queue {queue}")))?;
        session
            .publish
            .queue_bind(
                queue,
                &self.topology.exchange(),
                queue,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("binding queue {queue}")))?;
        session
            .declared
            .lock()
            .expect("declared lock")
            .insert(queue.to_owned());
        self.known_queues
            .lock()
            .expect("queue list lock")
            .insert(queue.to_owned(), kind);
        Ok(())
    }

    /// The current session, waiting up to `wait` for one.
    pub async fn session(&self, wait: Duration) -> BrokerResult<Arc<Session>> {
        let mut receiver = self.session.clone();
        let found = tokio::time::timeout(wait, receiver.wait_for(|s| s.is_some())).await;
        match found {
            Ok(Ok(session)) => Ok(Arc::clone(session.as_ref().expect("checked Some"))),
            _ => Err(BrokerError::Unavailable {
                url: self.amqp.url().to_owned(),
                message: format!("no connection within {} s", wait.as_secs()),
            }),
        }
    }

    /// Deletes `queue` if no message is in it and nothing consumes it; whether it did.
    /// Quorum queues refuse `if-empty` and `if-unused` (with a connection error), so
    /// the counts are read first: only the master publishes to a worker's queue, and
    /// it publishes to none it is about to delete (see `Workers::expire_silent`).
    pub async fn delete_if_unused(&self, queue: &str) -> BrokerResult<bool> {
        let session = self.session(Duration::from_secs(5)).await?;
        let (channel, found) = Self::passive_declare(&session, queue).await?;
        let Some(found) = found else {
            return Ok(false);
        };
        let unused = found.message_count() == 0 && found.consumer_count() == 0;
        if unused {
            channel
                .queue_delete(queue, QueueDeleteOptions::default())
                .await
                .map_err(amqp(format!("deleting queue {queue}")))?;
            session
                .declared
                .lock()
                .expect("declared lock")
                .remove(queue);
            self.known_queues
                .lock()
                .expect("queue list lock")
                .remove(queue);
        }
        if let Err(error) = channel.close(200, "done").await {
            tracing::debug!(%error, "Closing the deleting channel");
        }
        Ok(unused)
    }

    /// Whether `queue` exists (asked on a channel of its own, which RabbitMQ closes
    /// when it does not).
    pub async fn queue_exists(&self, queue: &str) -> BrokerResult<bool> {
        let session = self.session(Duration::from_secs(5)).await?;
        let (channel, found) = Self::passive_declare(&session, queue).await?;
        let exists = found.is_some();
        if exists {
            if let Err(error) = channel.close(200, "asked").await {
                tracing::debug!(%error, "Closing the asking channel");
            }
        }
        Ok(exists)
    }

    /// Asks for `queue` without creating it, on a channel of its own: RabbitMQ closes
    /// that channel (only) when the queue does not exist, which reads as `None`.
    async fn passive_declare(
        session: &Session,
        queue: &str,
    ) -> BrokerResult<(Channel, Option<lapin::Queue>)> {
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = channel
            .queue_declare(queue, passive, FieldTable::default())
            .await
            .ok();
        Ok((channel, found))
    }

    /// A receiver that changes whenever the session does.
    pub fn sessions(&self) -> watch::Receiver<Option<Arc<Session>>> {
        self.session.clone()
    }

    /// Declares (once per session) `queue` of `kind`, and redeclares it after every
    /// reconnection.
    pub async fn declare(&self, queue: &str, kind: QueueKind) -> BrokerResult<()> {
        let session = self.session(Duration::from_secs(10)).await?;
        let result = self.declare_on(&session, queue, kind).await;
        if result.is_err() && !session.is_connected() {
            self.rebuild.notify_one();
        }
        result
    }

    /// Publishes `job` to `queue` (declared as `kind` first) and waits for RabbitMQ to
    /// confirm it; an unroutable (returned) message is an error.
    pub async fn publish(&self, queue: &str, kind: QueueKind, job: &QueuedJob) -> BrokerResult<()> {
        let session = self.session(Duration::from_secs(10)).await?;
        let result = self.publish_on(&session, queue, kind, job).await;
        if result.is_err() && !session.is_connected() {
            self.rebuild.notify_one();
        }
        result
    }

    async fn publish_on(
        &self,
        session: &Session,
        queue: &str,
        kind: QueueKind,
        job: &QueuedJob,
    ) -> BrokerResult<()> {
        self.declare_on(session, queue, kind).await?;
        let payload = job.encode_to_vec();
        let confirm = session
            .publish
            .basic_publish(
                &self.topology.exchange(),
                queue,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &payload,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/x-protobuf".into())
                    .with_message_id(format!("{}/{}", job.job_id, job.attempt).into()),
            )
            .await
            .map_err(amqp(format!("publishing to {queue}")))?
            .await
            .map_err(amqp(format!("waiting for the confirm from {queue}")))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(BrokerError::NotAccepted {
                queue: queue.to_owned(),
                reason: format!("returned: {}", returned.reply_text),
            }),
            Confirmation::Nack(_) => Err(BrokerError::NotAccepted {
                queue: queue.to_owned(),
                reason: "negatively acknowledged".to_owned(),
            }),
            Confirmation::NotRequested => Err(BrokerError::NotAccepted {
                queue: queue.to_owned(),
                reason: "publisher confirms are off".to_owned(),
            }),
        }
    }

    /// Every queue this broker handle declared.
    pub fn known_queue_names(&self) -> Vec<String> {
        self.known_queues
            .lock()
            .expect("queue list lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Deletes every queue and the exchange of this prefix (tests clean up with it).
    pub async fn delete_topology(&self, extra_queues: &[String]) -> BrokerResult<()> {
        let session = self.session(Duration::from_secs(10)).await?;
        let mut queues: Vec<String> = self
            .known_queues
            .lock()
            .expect("queue list lock")
            .keys()
            .cloned()
            .collect();
        queues.extend(extra_queues.iter().cloned());
        queues.push(self.topology.returned_queue());
        queues.push(self.topology.dead_queue());
        queues.sort();
        queues.dedup();
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(amqp("opening a channel"))?;
        for queue in queues {
            channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await
                .map_err(amqp(format!("deleting {queue}")))?;
        }
        channel
            .exchange_delete(&self.topology.exchange(), Default::default())
            .await
            .map_err(amqp("deleting the exchange"))?;
        Ok(())
    }
}
