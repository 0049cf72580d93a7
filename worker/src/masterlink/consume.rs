//! Registration and the consumer of this worker's queue.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use prost::Message;
use pyti::proto::{self, worker_registry_client::WorkerRegistryClient, QueuedJob};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use super::{JobExecutor, MasterLinkHandle, MasterLinkSettings};
use crate::capacity::Refusal;
use crate::stateofvm::{PoolSnapshot, SlotLease};

/// Where the master told this worker to take jobs from, and how often to renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Assignment {
    pub queue: String,
    pub renew_every: Duration,
}

/// The running master link's state.
pub(super) struct MasterLink {
    pub settings: MasterLinkSettings,
    pub registry: WorkerRegistryClient<Channel>,
    pub handle: MasterLinkHandle,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// Nacks `delivery`: `requeue` puts it back in this worker's queue, otherwise it is
/// dead-lettered to the returned queue and the master places it elsewhere.
async fn nack(delivery: &Delivery, job_id: &str, requeue: bool) {
    let options = BasicNackOptions {
        requeue,
        ..Default::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        // The channel is gone: RabbitMQ redelivers the unacked message by itself.
        tracing::warn!(%job_id, %error, requeue, "Could not hand the job back; RabbitMQ redelivers it");
    }
}

impl MasterLink {
    pub(super) fn worker_id(&self) -> &str {
        self.handle.capacity().worker_id()
    }

    /// Registers now and every `register_interval`, publishing the assignment.
    pub(super) async fn keep_registered(
        self: Arc<Self>,
        assignment: watch::Sender<Option<Assignment>>,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let answer = self
                .registry
                .clone()
                .register(proto::RegisterRequest {
                    worker_id: self.worker_id().to_owned(),
                    control_address: self.settings.control_address.clone(),
                    capacity: Some(self.handle.capacity().advertised()),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                })
                .await;
            let wait = match answer {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    backoff = Duration::from_millis(100);
                    assignment.send_if_modified(|current| {
                        let new = Some(Assignment {
                            queue: answer.queue_name.clone(),
                            renew_every: Duration::from_secs(u64::from(
                                answer.lease_renew_interval_s.max(1),
                            )),
                        });
                        let changed = *current != new;
                        *current = new;
                        changed
                    });
                    self.settings.register_interval
                }
                Err(status) => {
                    tracing::warn!(worker_id = %self.worker_id(), error = %status.message(), "Cannot register with the master; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sleeps `backoff` (false: shutdown came first) and doubles it up to 5 s.
    async fn back_off(&self, backoff: &mut Duration) -> bool {
        let slept = tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(*backoff) => true,
        };
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        slept
    }

    /// Consumes the assigned queue until shutdown or drain, reconnecting after losses.
    pub(super) async fn consume<E: JobExecutor>(
        self: Arc<Self>,
        mut assignment: watch::Receiver<Option<Assignment>>,
        executor: Arc<E>,
    ) {
        let mut pool_changes = self.handle.capacity().changes();
        let mut backoff = Duration::from_millis(100);
        loop {
            let current = tokio::select! {
                () = self.shutdown.cancelled() => return,
                found = assignment.wait_for(Option::is_some) => match found {
                    Ok(a) => a.clone().expect("checked Some"),
                    Err(_) => return,
                },
            };
            if self.handle.capacity().is_draining() {
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    _ = pool_changes.changed() => continue,
                }
            }
            // The TLS files are read at every connection: renewed certificates count.
            let amqp =
                pyti::amqp::Amqp::new(&self.settings.amqp_url, self.settings.amqp_tls.as_ref())
                    .map_err(|message| {
                        lapin::Error::IOError(Arc::new(std::io::Error::other(message)))
                    });
            let connection = match amqp {
                Ok(amqp) => amqp.connect(ConnectionProperties::default()).await,
                Err(error) => Err(error),
            };
            let connection = match connection {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "Cannot reach RabbitMQ; retrying");
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            let consumed = self
                .consume_on(
                    &connection,
                    &current,
                    &executor,
                    &mut assignment,
                    &mut pool_changes,
                )
                .await;
            if let Err(error) = connection.close(200, "stopping").await {
                tracing::debug!(%error, "The RabbitMQ connection was already closed");
            }
            match consumed {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(%error, queue = %current.queue, "Lost the job queue; reconnecting");
                    if !self.back_off(&mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    async fn consume_on<E: JobExecutor>(
        self: &Arc<Self>,
        connection: &Connection,
        current: &Assignment,
        executor: &Arc<E>,
        assignment: &mut watch::Receiver<Option<Assignment>>,
        pool_changes: &mut watch::Receiver<PoolSnapshot>,
    ) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        let slots = self.handle.capacity().pool().slots().len();
        channel
            .basic_qos(
                u16::try_from(slots.max(1)).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            )
            .await?;
        let tag = format!("pyti-worker-{}", self.worker_id());
        let mut consumer = channel
            .basic_consume(
                &current.queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %current.queue, "Taking jobs");
        loop {
            let next = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                _ = assignment.changed() => return Ok(()),
                _ = pool_changes.changed() => {
                    if self.handle.capacity().is_draining() {
                        tracing::info!("Draining: no more jobs taken");
                        return Ok(());
                    }
                    continue;
                }
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let link = Arc::clone(self);
                    let executor = Arc::clone(executor);
                    let renew_every = current.renew_every;
                    self.tasks
                        .spawn(async move { link.take(delivery, executor, renew_every).await });
                }
                Some(Err(error)) => return Err(error),
                None => {
                    return Err(lapin::Error::InvalidChannelState(
                        lapin::ChannelState::Closed,
                    ));
                }
            }
        }
    }

    /// One delivery: take a slot lease, have the master record RUNNING, ack, run the
    /// job in the leased slot, report.
    async fn take<E: JobExecutor>(
        self: Arc<Self>,
        delivery: Delivery,
        executor: Arc<E>,
        renew_every: Duration,
    ) {
        let Ok(job) = QueuedJob::decode(delivery.data.as_slice()) else {
            tracing::error!("Giving back a message that is not a QueuedJob");
            nack(&delivery, "", false).await;
            return;
        };
        let job_id = job.job_id.clone();
        let (lease, cancel) = match self.admit(&job, executor.as_ref()) {
            Ok(admitted) => admitted,
            Err(reason) => {
                tracing::info!(%job_id, %reason, "Giving the job back");
                nack(&delivery, &job_id, false).await;
                return;
            }
        };
        let Some(started) = self.start_job(&job).await else {
            self.unused(lease, &job_id);
            nack(&delivery, &job_id, true).await;
            return;
        };
        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(%job_id, %error, "Ack failed after StartJob; the lease protects the job");
        }
        if !started.proceed {
            tracing::info!(%job_id, reason = %started.reason, "The master says not to run it");
            self.unused(lease, &job_id);
            return;
        }
        let held = super::report::Held {
            job_id: job_id.clone(),
            attempt: job.attempt,
            lease_id: job.lease_id.clone(),
        };
        let renewing =
            self.tasks
                .spawn(Arc::clone(&self).renew(held.clone(), renew_every, cancel.clone()));
        let report = executor.run(job, lease, cancel).await;
        renewing.abort();
        let path = self.spool(&held, report).await;
        self.handle.finish(&job_id);
        if let Some(path) = path {
            self.send_spooled(path).await;
        }
    }

    /// The lease and cancel token for `job`, or why it must be given back.
    fn admit<E: JobExecutor>(
        &self,
        job: &QueuedJob,
        executor: &E,
    ) -> Result<(SlotLease, CancellationToken), Refusal> {
        let (lease, cancel) = self.handle.accept(job)?;
        if let Err(reason) = executor.can_run(job) {
            self.unused(lease, &job.job_id);
            return Err(Refusal::Executor(reason));
        }
        Ok((lease, cancel))
    }

    /// Has the master record `job` RUNNING here (retrying a few times); `None` when it
    /// could not be reached.
    async fn start_job(&self, job: &QueuedJob) -> Option<proto::StartJobResponse> {
        let request = proto::StartJobRequest {
            worker_id: self.worker_id().to_owned(),
            job_id: job.job_id.clone(),
            attempt: job.attempt,
            lease_id: job.lease_id.clone(),
        };
        for wait_ms in [0, 200, 500, 1000, 2000] {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            match self.registry.clone().start_job(request.clone()).await {
                Ok(answer) => return Some(answer.into_inner()),
                // The master refuses this attempt here for good: do not run it.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Some(proto::StartJobResponse {
                        proceed: false,
                        reason: status.message().to_owned(),
                        lease_deadline: None,
                    })
                }
                Err(status) => {
                    tracing::warn!(job_id = %job.job_id, error = %status.message(), "StartJob failed")
                }
            }
        }
        None
    }

    /// Gives back the slot of a job that never started, and forgets the job.
    fn unused(&self, lease: SlotLease, job_id: &str) {
        let slot = lease.name().to_owned();
        if let Err(error) = lease.release_unused() {
            tracing::warn!(%job_id, %slot, %error, "The unused slot could not be released; it is marked broken");
        }
        self.handle.finish(job_id);
    }
}
