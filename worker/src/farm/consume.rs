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

use super::{FarmHandle, FarmSettings, JobRunner};

/// Where the master told this worker to take jobs from, and how often to renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Assignment {
    pub queue: String,
    pub renew_every: Duration,
}

/// The running farm loop's state.
pub(super) struct Farm {
    pub settings: FarmSettings,
    pub registry: WorkerRegistryClient<Channel>,
    pub handle: FarmHandle,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

async fn give_back(delivery: &Delivery) {
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await;
}

async fn put_back(delivery: &Delivery) {
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}

impl Farm {
    /// Registers now and every `register_interval`, publishing the assignment.
    pub(super) async fn keep_registered(
        self: Arc<Self>,
        assignment: watch::Sender<Option<Assignment>>,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let capacity = proto::Capacity {
                worker_id: self.settings.worker_id.clone(),
                platforms: self
                    .handle
                    .capacity()
                    .into_iter()
                    .map(|c| proto::PlatformCapacity {
                        platform: c.platform,
                        variants: c.variants,
                        total: c.total,
                        ready: c.ready,
                        ..Default::default()
                    })
                    .collect(),
                draining: self.handle.is_draining(),
                at: Some(pyti::grpc::now_timestamp()),
            };
            let answer = self
                .registry
                .clone()
                .register(proto::RegisterRequest {
                    worker_id: self.settings.worker_id.clone(),
                    control_address: self.settings.control_address.clone(),
                    capacity: Some(capacity),
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
                    tracing::warn!(worker_id = %self.settings.worker_id, error = %status.message(), "Cannot register with the master; retrying");
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

    /// Consumes the assigned queue until shutdown or drain, reconnecting after losses.
    pub(super) async fn consume<R: JobRunner>(
        self: Arc<Self>,
        mut assignment: watch::Receiver<Option<Assignment>>,
        runner: Arc<R>,
    ) {
        let mut draining = self.handle.draining_changes();
        let mut backoff = Duration::from_millis(100);
        loop {
            let current = tokio::select! {
                () = self.shutdown.cancelled() => return,
                found = assignment.wait_for(Option::is_some) => match found {
                    Ok(a) => a.clone().expect("checked Some"),
                    Err(_) => return,
                },
            };
            if self.handle.is_draining() {
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    _ = draining.changed() => continue,
                }
            }
            let connection =
                match Connection::connect(&self.settings.amqp_url, ConnectionProperties::default())
                    .await
                {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::warn!(%error, "Cannot reach RabbitMQ; retrying");
                        tokio::select! {
                            () = self.shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
            let consumed = self
                .consume_on(
                    &connection,
                    &current,
                    &runner,
                    &mut assignment,
                    &mut draining,
                )
                .await;
            let _ = connection.close(200, "stopping").await;
            match consumed {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(%error, queue = %current.queue, "Lost the job queue; reconnecting");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume_on<R: JobRunner>(
        self: &Arc<Self>,
        connection: &Connection,
        current: &Assignment,
        runner: &Arc<R>,
        assignment: &mut watch::Receiver<Option<Assignment>>,
        draining: &mut watch::Receiver<bool>,
    ) -> Result<(), lapin::Error> {
        let channel = connection.create_channel().await?;
        let slots: u32 = self.settings.platforms.iter().map(|p| p.total).sum();
        channel
            .basic_qos(
                u16::try_from(slots.max(1)).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            )
            .await?;
        let tag = format!("pyti-worker-{}", self.settings.worker_id);
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
                _ = draining.changed() => {
                    if self.handle.is_draining() {
                        tracing::info!("Draining: no more jobs taken");
                        return Ok(());
                    }
                    continue;
                }
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let farm = Arc::clone(self);
                    let runner = Arc::clone(runner);
                    let renew_every = current.renew_every;
                    self.tasks
                        .spawn(async move { farm.take(delivery, runner, renew_every).await });
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

    /// One delivery: reserve a slot, have the master record RUNNING, ack, run, report.
    async fn take<R: JobRunner>(
        self: Arc<Self>,
        delivery: Delivery,
        runner: Arc<R>,
        renew_every: Duration,
    ) {
        let Ok(job) = QueuedJob::decode(delivery.data.as_slice()) else {
            tracing::error!("Giving back a message that is not a QueuedJob");
            give_back(&delivery).await;
            return;
        };
        let job_id = job.job_id.clone();
        let reserved = self
            .handle
            .reserve(&job)
            .and_then(|cancel| match runner.can_run(&job) {
                Ok(()) => Ok(cancel),
                Err(reason) => {
                    self.handle.release(&job_id);
                    Err(reason)
                }
            });
        let cancel = match reserved {
            Ok(cancel) => cancel,
            Err(reason) => {
                tracing::info!(%job_id, %reason, "Giving the job back");
                give_back(&delivery).await;
                return;
            }
        };
        let request = proto::StartJobRequest {
            worker_id: self.settings.worker_id.clone(),
            job_id: job_id.clone(),
            attempt: job.attempt,
        };
        let mut started = None;
        for wait_ms in [0, 200, 500, 1000, 2000] {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            match self.registry.clone().start_job(request.clone()).await {
                Ok(answer) => {
                    started = Some(answer.into_inner());
                    break;
                }
                Err(status) => {
                    tracing::warn!(%job_id, error = %status.message(), "StartJob failed")
                }
            }
        }
        let Some(started) = started else {
            self.handle.release(&job_id);
            put_back(&delivery).await;
            return;
        };
        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(%job_id, %error, "Ack failed after StartJob; the lease protects the job");
        }
        if !started.proceed {
            tracing::info!(%job_id, reason = %started.reason, "The master says not to run it");
            self.handle.release(&job_id);
            return;
        }
        let renewing = self.tasks.spawn(Arc::clone(&self).renew(
            job_id.clone(),
            job.attempt,
            renew_every,
            cancel.clone(),
        ));
        let attempt = job.attempt;
        let report = runner.run(job, cancel).await;
        renewing.abort();
        let path = self.spool(&job_id, attempt, report).await;
        self.handle.release(&job_id);
        if let Some(path) = path {
            self.send_spooled(path).await;
        }
    }
}
