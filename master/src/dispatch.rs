//! The scheduler's shell: consumes the platform queues and the returned queue, holds
//! platform deliveries until the capacity table has a VM for them, and moves each to
//! the chosen worker's queue.
//!
//! A platform delivery is acknowledged only after the job is confirmed in the worker's
//! queue and recorded as ASSIGNED, so a master that dies mid-way leaves the delivery
//! to RabbitMQ, which hands it to the next master. Deliveries belong to one broker
//! session; when the connection is lost they are forgotten (RabbitMQ requeues them).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::FieldTable;
use prost::Message;
use pyti::proto::{JobState, QueuedJob};
use tokio::sync::mpsc;

use crate::broker::{QueueKind, Session};
use crate::convert::now_ms;
use crate::farm::Farm;
use crate::scheduler::Requirement;
use crate::store::Transition;

/// A delivery from one of the master's queues.
pub(crate) struct Incoming {
    generation: u64,
    returned: bool,
    delivery: Delivery,
}

/// A platform delivery waiting for a VM.
struct Waiting {
    generation: u64,
    job: QueuedJob,
    requirement: Requirement,
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

impl Farm {
    /// Keeps a consumer on the returned queue and on the queue of every platform the
    /// farm knows, on every broker session, forwarding deliveries to `deliveries`.
    pub(crate) async fn consume_queues(self: Arc<Self>, deliveries: mpsc::Sender<Incoming>) {
        let mut sessions = self.broker.sessions();
        loop {
            let session = tokio::select! {
                () = self.shutdown.cancelled() => return,
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
                match self.waiting_jobs().await {
                    Ok(waiting) => {
                        self.tasks.spawn(Arc::clone(&self).requeue_waiting(waiting));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Cannot list waiting jobs to queue them again")
                    }
                }
            }
            let mut consuming = BTreeSet::new();
            loop {
                let mut wanted = vec![(self.broker.topology.returned_queue(), true)];
                wanted.extend(
                    self.platforms
                        .lock()
                        .expect("platforms lock")
                        .iter()
                        .map(|p| (self.broker.topology.platform_queue(p), false)),
                );
                for (queue, returned) in wanted {
                    if consuming.contains(&queue) {
                        continue;
                    }
                    match self
                        .start_consumer(&session, &queue, returned, deliveries.clone())
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
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = self.new_platform.notified() => {}
                    _ = sessions.changed() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    async fn start_consumer(
        self: &Arc<Self>,
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
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
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
    pub(crate) async fn dispatch(self: Arc<Self>, mut incoming: mpsc::Receiver<Incoming>) {
        let mut waiting: Vec<Waiting> = Vec::new();
        let sessions = self.broker.sessions();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                next = incoming.recv() => match next {
                    Some(first) => {
                        self.arrive(first, &mut waiting).await;
                        while let Ok(more) = incoming.try_recv() {
                            self.arrive(more, &mut waiting).await;
                        }
                    }
                    None => return,
                },
                () = self.wake_dispatcher.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let generation = sessions.borrow().as_ref().map(|s| s.generation);
            waiting.retain(|w| Some(w.generation) == generation);
            self.place_waiting(&mut waiting).await;
        }
    }

    async fn arrive(&self, incoming: Incoming, waiting: &mut Vec<Waiting>) {
        let Ok(job) = QueuedJob::decode(incoming.delivery.data.as_slice()) else {
            tracing::error!(queue = %incoming.delivery.routing_key, "Dropping a message that is not a QueuedJob");
            ack(&incoming.delivery).await;
            return;
        };
        if incoming.returned {
            match self.handle_returned(&job).await {
                Ok(_) => ack(&incoming.delivery).await,
                Err(error) => {
                    tracing::warn!(job_id = %job.job_id, %error, "Returned job not requeued yet");
                    let _ = incoming
                        .delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
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
        let spec = job.spec.clone().unwrap_or_default();
        waiting.push(Waiting {
            generation: incoming.generation,
            requirement: Requirement::new(&spec.platform_identifier, &spec.platform_variants),
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
            .map(|w| (w.job.job_id.clone(), w.requirement.clone()))
            .collect();
        let placed = {
            let mut table = self.table.lock().expect("table lock");
            table.now_ms = now_ms();
            let placed = table.plan(&requests);
            if placed.is_empty() {
                tracing::debug!(waiting = requests.len(), table = ?table, "Nothing placeable");
            }
            placed
        };
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

    async fn place(&self, waiting: &Waiting, worker_id: &str) -> Placed {
        let job_id = &waiting.job.job_id;
        let unassign = || {
            self.table
                .lock()
                .expect("table lock")
                .unassign(worker_id, job_id)
        };
        let job = match self.store.get_job(job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                unassign();
                ack(&waiting.delivery).await;
                return Placed::Dropped;
            }
            Err(error) => {
                tracing::warn!(%job_id, %error, "Cannot read the job to place it");
                unassign();
                return Placed::Retry;
            }
        };
        // An ASSIGNED job whose delivery comes again: the master that assigned it
        // died before acking, perhaps before publishing; assign it afresh.
        let placeable = match job.state {
            JobState::Submitted | JobState::Queued => true,
            JobState::Assigned => waiting.delivery.redelivered,
            _ => false,
        };
        if job.attempt != waiting.job.attempt || !placeable {
            unassign();
            ack(&waiting.delivery).await;
            return Placed::Dropped;
        }
        if job.state == JobState::Assigned && job.worker_id != worker_id {
            self.table
                .lock()
                .expect("table lock")
                .unassign(&job.worker_id, job_id);
        }
        let mut assign = Transition::of(
            &job,
            JobState::Assigned,
            format!("assigned to {worker_id}"),
            now_ms(),
        );
        assign.worker_id = worker_id.to_owned();
        // SubmitJob may be recording QUEUED right now: both are fine to assign from.
        assign.from = vec![JobState::Submitted, JobState::Queued, job.state];
        let assigned = match self.transition(&assign).await {
            Ok(Some(assigned)) => assigned,
            Ok(None) => {
                // Cancelled or started meanwhile.
                unassign();
                ack(&waiting.delivery).await;
                return Placed::Dropped;
            }
            Err(error) => {
                tracing::warn!(%job_id, %error, "Cannot record the assignment");
                unassign();
                return Placed::Retry;
            }
        };
        let mut message = waiting.job.clone();
        message.reason = format!("assigned to {worker_id}");
        let queue = self.broker.topology.worker_queue(worker_id);
        if let Err(error) = self
            .broker
            .publish(&queue, QueueKind::Worker, &message)
            .await
        {
            tracing::warn!(%job_id, %worker_id, %error, "Cannot move the job to the worker's queue");
            let mut back = Transition::of(
                &assigned,
                JobState::Queued,
                format!("not assigned: {error}"),
                now_ms(),
            );
            back.worker_id = String::new();
            if let Err(error) = self.transition(&back).await {
                tracing::warn!(%job_id, %error, "Assignment not undone; a redelivery will redo it");
            }
            unassign();
            return Placed::Retry;
        }
        ack(&waiting.delivery).await;
        Placed::Done
    }
}
