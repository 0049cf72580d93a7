//! The scheduler's shell: consumes the platform queues and the returned queue, holds
//! platform deliveries until the capacity table has a VM for them, and moves each to
//! the chosen worker's queue.
//!
//! A platform delivery is acknowledged only after the job is confirmed in the worker's
//! queue and recorded as ASSIGNED, so a master that dies mid-way leaves the delivery
//! to RabbitMQ, which hands it to the next master. Deliveries belong to one broker
//! session; when the connection is lost they are forgotten (RabbitMQ requeues them).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use tokio::sync::futures::Notified;
use tokio::sync::{mpsc, Notify};

use crate::broker::{Broker, QueueKind, Session};
use crate::convert;
use crate::jobs::Jobs;
use crate::runtime::Runtime;
use crate::scheduler::Requirement;
use crate::workers::Workers;

/// What the rest of the master tells the dispatcher: that something changed (capacity,
/// a job ended), so it should try to place again; and which platforms' queues to
/// consume. Cheap to clone; the dispatcher owns what it holds.
#[derive(Debug, Clone, Default)]
pub struct DispatchSignals {
    inner: Arc<Signals>,
}

#[derive(Debug, Default)]
struct Signals {
    wake: Notify,
    platforms: Mutex<BTreeSet<String>>,
    new_platform: Notify,
}

impl DispatchSignals {
    /// Something changed: try to place the waiting jobs again.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Makes sure the dispatcher consumes the queue of `platform`.
    pub fn want_platform(&self, platform: &str) {
        let new = self
            .inner
            .platforms
            .lock()
            .expect("platforms lock")
            .insert(platform.to_owned());
        if new {
            self.inner.new_platform.notify_one();
        }
    }

    /// Completes at the next [`DispatchSignals::wake`] (or at once for one missed).
    fn woken(&self) -> Notified<'_> {
        self.inner.wake.notified()
    }

    /// Completes when a platform was added (or at once for one missed).
    fn platform_added(&self) -> Notified<'_> {
        self.inner.new_platform.notified()
    }

    fn platforms(&self) -> Vec<String> {
        let platforms = self.inner.platforms.lock().expect("platforms lock");
        platforms.iter().cloned().collect()
    }
}

/// What the dispatcher reads of a queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The job.
    pub job_id: String,
    /// The attempt the message is for.
    pub attempt: u32,
    /// What the job needs from a VM.
    pub requirement: Requirement,
}

/// A delivery from one of the master's queues.
struct Incoming {
    generation: u64,
    returned: bool,
    delivery: Delivery,
}

/// A platform delivery waiting for a VM.
struct Waiting {
    generation: u64,
    job: Queued,
    delivery: Delivery,
}

enum Placed {
    /// Moved to the worker's queue and recorded.
    Done,
    /// The job no longer waits (cancelled, duplicate message): delivery dropped.
    Dropped,
    /// Publishing failed: try again later.
    Retry,
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::debug!(%error, "Ack of a delivery failed (its connection is gone; RabbitMQ redelivers it)");
    }
}

async fn nack_requeue(delivery: &Delivery) {
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Err(error) = delivery.acker.nack(requeue).await {
        tracing::debug!(%error, "Nack of a delivery failed (RabbitMQ redelivers it)");
    }
}

/// The consumers of the master's queues and the placing of what they deliver.
pub struct Dispatch {
    broker: Broker,
    jobs: Arc<Jobs>,
    workers: Arc<Workers>,
    signals: DispatchSignals,
    runtime: Runtime,
}

impl Dispatch {
    /// A dispatcher placing `jobs` onto `workers`, told of changes through `signals`.
    pub(crate) fn new(
        broker: Broker,
        jobs: Arc<Jobs>,
        workers: Arc<Workers>,
        signals: DispatchSignals,
        runtime: Runtime,
    ) -> Self {
        Self {
            broker,
            jobs,
            workers,
            signals,
            runtime,
        }
    }

    /// Starts consuming and placing, until shutdown.
    pub(crate) fn start(self: Arc<Self>) {
        let (deliveries, incoming) = mpsc::channel(1024);
        self.runtime
            .spawn(Arc::clone(&self).consume_queues(deliveries));
        self.runtime.spawn(Arc::clone(&self).dispatch(incoming));
    }

    /// Keeps a consumer on the returned queue and on the queue of every platform the
    /// farm knows, on every broker session, forwarding deliveries to `deliveries`.
    async fn consume_queues(self: Arc<Self>, deliveries: mpsc::Sender<Incoming>) {
        let mut sessions = self.broker.sessions();
        loop {
            let session = tokio::select! {
                () = self.runtime.cancelled() => return,
                found = sessions.wait_for(Option::is_some) => match found {
                    Ok(session) => Arc::clone(session.as_ref().expect("checked Some")),
                    Err(_) => return,
                },
            };
            if session.generation > 1 {
                // A publish that failed while the broker was away (a lapsed lease, a
                // retry, a given-back job) left its job waiting with no message: queue
                // every waiting job again; the copies that were not lost are dropped as
                // duplicates when they are placed.
                self.jobs.requeue_all_waiting().await;
            }
            let mut consuming = BTreeSet::new();
            loop {
                self.consume_wanted(&session, &mut consuming, &deliveries)
                    .await;
                tokio::select! {
                    () = self.runtime.cancelled() => return,
                    () = self.signals.platform_added() => {}
                    _ = sessions.changed() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// Starts a consumer on every wanted queue not in `consuming` yet.
    async fn consume_wanted(
        &self,
        session: &Arc<Session>,
        consuming: &mut BTreeSet<String>,
        deliveries: &mpsc::Sender<Incoming>,
    ) {
        let topology = &self.broker.topology;
        let mut wanted = vec![(topology.returned_queue(), true)];
        wanted.extend(
            self.signals
                .platforms()
                .iter()
                .map(|p| (topology.platform_queue(p), false)),
        );
        for (queue, returned) in wanted {
            if consuming.contains(&queue) {
                continue;
            }
            match self
                .start_consumer(session, &queue, returned, deliveries.clone())
                .await
            {
                Ok(()) => {
                    consuming.insert(queue);
                }
                Err(error) => {
                    tracing::warn!(%queue, %error, "Cannot consume; retrying");
                }
            }
        }
    }

    async fn start_consumer(
        &self,
        session: &Arc<Session>,
        queue: &str,
        returned: bool,
        deliveries: mpsc::Sender<Incoming>,
    ) -> crate::Result<()> {
        if !returned {
            self.broker.declare(queue, QueueKind::Plain).await?;
        }
        let mut consumer = session
            .consume
            .basic_consume(
                queue,
                &format!("pyti-master-{}", uuid::Uuid::new_v4().simple()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| crate::broker::BrokerError::Amqp {
                action: format!("consuming {queue}"),
                source,
            })?;
        let generation = session.generation;
        let shutdown = self.runtime.shutdown_token();
        self.runtime.spawn(async move {
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = consumer.next() => next,
                };
                let Some(Ok(delivery)) = next else { return };
                let incoming = Incoming {
                    generation,
                    returned,
                    delivery,
                };
                if deliveries.send(incoming).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// The dispatcher: takes deliveries, and whenever something changed places what
    /// the capacity table allows.
    async fn dispatch(self: Arc<Self>, mut incoming: mpsc::Receiver<Incoming>) {
        let mut waiting: Vec<Waiting> = Vec::new();
        let sessions = self.broker.sessions();
        loop {
            tokio::select! {
                () = self.runtime.cancelled() => return,
                next = incoming.recv() => match next {
                    Some(first) => {
                        self.arrive(first, &mut waiting).await;
                        while let Ok(more) = incoming.try_recv() {
                            self.arrive(more, &mut waiting).await;
                        }
                    }
                    None => return,
                },
                () = self.signals.woken() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let generation = sessions.borrow().as_ref().map(|s| s.generation);
            waiting.retain(|w| Some(w.generation) == generation);
            self.place_waiting(&mut waiting).await;
        }
    }

    async fn arrive(&self, incoming: Incoming, waiting: &mut Vec<Waiting>) {
        let Some(job) = convert::queued_of(&incoming.delivery.data) else {
            tracing::error!(queue = %incoming.delivery.routing_key, "Dropping a message that is not a QueuedJob");
            ack(&incoming.delivery).await;
            return;
        };
        if incoming.returned {
            match self.jobs.handle_returned(&job.job_id, job.attempt).await {
                Ok(_) => ack(&incoming.delivery).await,
                Err(error) => {
                    tracing::warn!(job_id = %job.job_id, %error, "Returned job not requeued yet");
                    nack_requeue(&incoming.delivery).await;
                }
            }
            return;
        }
        if waiting
            .iter()
            .any(|w| w.job.job_id == job.job_id && w.job.attempt == job.attempt)
        {
            ack(&incoming.delivery).await;
            return;
        }
        waiting.push(Waiting {
            generation: incoming.generation,
            job,
            delivery: incoming.delivery,
        });
    }

    async fn place_waiting(&self, waiting: &mut Vec<Waiting>) {
        if waiting.is_empty() {
            return;
        }
        let requests: Vec<(String, Requirement)> = waiting
            .iter()
            .map(|w| (w.job.job_id.clone(), w.job.requirement.clone()))
            .collect();
        let placed = self.workers.plan(&requests);
        if placed.is_empty() {
            return;
        }
        let outcomes = futures_util::future::join_all(
            placed
                .iter()
                .map(|(index, worker)| self.place(&waiting[*index], worker)),
        )
        .await;
        let mut done = BTreeSet::new();
        for ((index, _), outcome) in placed.iter().zip(outcomes) {
            if !matches!(outcome, Placed::Retry) {
                done.insert(*index);
            }
        }
        let mut index = 0;
        waiting.retain(|_| {
            index += 1;
            !done.contains(&(index - 1))
        });
    }

    /// Records `waiting` as assigned to `worker_id` (the plan's choice) and moves its
    /// message to the worker's queue; undoes the plan's assignment when that fails.
    async fn place(&self, waiting: &Waiting, worker_id: &str) -> Placed {
        let job_id = &waiting.job.job_id;
        let assigned = self
            .jobs
            .assign(
                job_id,
                waiting.job.attempt,
                worker_id,
                waiting.delivery.redelivered,
            )
            .await;
        let assigned = match assigned {
            Ok(Some(assigned)) => assigned,
            Ok(None) => {
                self.workers.unassign(worker_id, job_id);
                ack(&waiting.delivery).await;
                return Placed::Dropped;
            }
            Err(error) => {
                tracing::warn!(%job_id, %error, "Cannot record the assignment");
                self.workers.unassign(worker_id, job_id);
                return Placed::Retry;
            }
        };
        let message = convert::queued(&assigned, &format!("assigned to {worker_id}"));
        let queue = self.broker.topology.worker_queue(worker_id);
        if let Err(error) = self
            .broker
            .publish(&queue, QueueKind::Worker, &message)
            .await
        {
            tracing::warn!(%job_id, %worker_id, %error, "Cannot move the job to the worker's queue");
            self.jobs
                .undo_assignment(&assigned, &error.to_string())
                .await;
            self.workers.unassign(worker_id, job_id);
            return Placed::Retry;
        }
        ack(&waiting.delivery).await;
        Placed::Done
    }
}
