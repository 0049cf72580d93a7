//! The master's state and what users ask of it: submit, look at, watch and cancel jobs.
//!
//! `Farm` ties the store, RabbitMQ and the capacity table together. The rule that keeps
//! it crash-safe: the store is changed first, by a conditional transition, and a
//! message is published after; a crash in between is repaired at start-up by
//! publishing every job the store has as waiting (`recover`). Duplicate messages that
//! this can make are harmless, because every consumer of a message checks the job's
//! state and attempt in the store and drops what no longer matches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyti::model::JobSpec;
use pyti::proto::{self, JobState, Outcome, QueuedJob};
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, QueueKind, Topology};
use crate::config::MasterConfig;
use crate::convert::{self, now_ms};
use crate::error::{Error, Result};
use crate::scheduler::{CapacityTable, Requirement};
use crate::store::{JobFilter, JobRow, Millis, Store, Transition};

/// How the farm behaves; from the master's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Queue name prefix.
    pub queue_prefix: String,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// Attempts before a job is dead.
    pub max_attempts: u32,
    /// Package index, to resolve omitted versions.
    pub index_url: String,
    /// How often lapsed leases are looked for.
    pub reap_interval: Duration,
    /// How long a job may wait unconsumed in a worker's queue before it goes back to
    /// the returned queue (a worker that died never takes it). A queue argument, so it
    /// must not change while the farm's queues exist: it is a constant, not derived
    /// from the lease.
    pub worker_queue_ttl: Duration,
}

/// Default of [`Settings::worker_queue_ttl`].
pub const WORKER_QUEUE_TTL: Duration = Duration::from_secs(300);

impl Settings {
    /// The settings a master configuration gives.
    pub fn from_config(config: &MasterConfig) -> Self {
        let lease = Duration::from_secs(u64::from(config.lease_s));
        Self {
            amqp_url: config.amqp_url.clone(),
            queue_prefix: config.queue_prefix.clone(),
            lease,
            max_attempts: config.max_attempts,
            index_url: config.index_url.clone(),
            reap_interval: (lease / 4).max(Duration::from_millis(250)),
            worker_queue_ttl: WORKER_QUEUE_TTL,
        }
    }
}

/// A live worker as the master sees it.
#[derive(Debug, Clone)]
pub struct WorkerRuntime {
    /// Its WorkerControl address.
    pub control_address: String,
    /// First registration.
    pub registered_at_ms: Millis,
    /// Last registration or capacity report.
    pub last_seen_ms: Millis,
    /// Its last capacity report.
    pub capacity: proto::Capacity,
    /// Stops the task watching its capacity.
    pub watcher: Option<CancellationToken>,
}

/// One event for `WatchJob` subscribers.
#[derive(Debug, Clone)]
pub struct Event {
    /// The job it concerns.
    pub job_id: String,
    /// What happened.
    pub event: proto::job_event::Event,
}

/// The master: store, broker, capacity table and the tasks that move jobs.
pub struct Farm {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) broker: Broker,
    pub(crate) table: Mutex<CapacityTable>,
    pub(crate) workers: Mutex<BTreeMap<String, WorkerRuntime>>,
    pub(crate) settings: Settings,
    pub(crate) wake_dispatcher: Notify,
    pub(crate) platforms: Mutex<BTreeSet<String>>,
    pub(crate) new_platform: Notify,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    events: broadcast::Sender<Event>,
    http: reqwest::Client,
}

impl Farm {
    /// Connects to RabbitMQ (in the background), recovers what the store holds and
    /// starts the dispatcher, the lease reaper and the capacity watchers. Everything
    /// stops when `shutdown` is cancelled; wait for it with [`Farm::stopped`].
    pub async fn start(
        settings: Settings,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>> {
        let topology = Topology {
            prefix: settings.queue_prefix.clone(),
            worker_queue_ttl_ms: u32::try_from(settings.worker_queue_ttl.as_millis())
                .unwrap_or(u32::MAX),
        };
        let tasks = TaskTracker::new();
        let (broker, supervisor) = Broker::start(&settings.amqp_url, topology, shutdown.clone());
        tasks.spawn(async move {
            let _ = supervisor.await;
        });
        let (events, _) = broadcast::channel(4096);
        let farm = Arc::new(Self {
            store,
            broker,
            table: Mutex::new(CapacityTable::default()),
            workers: Mutex::new(BTreeMap::new()),
            settings,
            wake_dispatcher: Notify::new(),
            platforms: Mutex::new(BTreeSet::new()),
            new_platform: Notify::new(),
            shutdown,
            tasks,
            events,
            http: reqwest::Client::builder()
                .user_agent(concat!("pyti-master/", env!("CARGO_PKG_VERSION")))
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| Error::BadRequest(format!("HTTP client: {e}")))?,
        });
        let waiting = farm.recover().await?;
        farm.tasks.spawn(Arc::clone(&farm).requeue_waiting(waiting));
        let (deliveries, incoming) = mpsc::channel(1024);
        farm.tasks
            .spawn(Arc::clone(&farm).consume_queues(deliveries));
        farm.tasks.spawn(Arc::clone(&farm).dispatch(incoming));
        farm.tasks.spawn(Arc::clone(&farm).reap_leases());
        Ok(farm)
    }

    /// Waits until every task of the farm has stopped (after `shutdown`).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The RabbitMQ handle (tests delete their queues through it).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Applies a transition and tells watchers; `None` when its condition failed.
    pub(crate) async fn transition(&self, transition: &Transition) -> Result<Option<JobRow>> {
        let job = self.store.transition(transition).await?;
        if let Some(job) = &job {
            self.announce(job);
        }
        Ok(job)
    }

    pub(crate) fn announce(&self, job: &JobRow) {
        let _ = self.events.send(Event {
            job_id: job.job_id.clone(),
            event: proto::job_event::Event::Job(convert::job(job)),
        });
    }

    pub(crate) fn announce_task(&self, job_id: &str, task: proto::TaskResult) {
        let _ = self.events.send(Event {
            job_id: job_id.to_owned(),
            event: proto::job_event::Event::TaskResult(task),
        });
    }

    /// Makes sure the dispatcher consumes the queue of `platform`.
    pub(crate) fn want_platform(&self, platform: &str) {
        if self
            .platforms
            .lock()
            .expect("platforms lock")
            .insert(platform.to_owned())
        {
            self.new_platform.notify_one();
        }
    }

    /// The message that queues `job` for its platform.
    pub(crate) fn queued(job: &JobRow, reason: &str) -> QueuedJob {
        let mut spec: proto::JobSpec = job.spec.clone().into();
        if spec.project_version.is_empty() {
            spec.project_version.clone_from(&job.resolved_version);
        }
        QueuedJob {
            job_id: job.job_id.clone(),
            spec: Some(spec),
            attempt: job.attempt,
            submitted_at: Some(convert::timestamp(job.submitted_at_ms)),
            reason: reason.to_owned(),
        }
    }

    /// Publishes `job` to its platform queue.
    pub(crate) async fn publish_to_platform(&self, job: &JobRow, reason: &str) -> Result<()> {
        self.want_platform(&job.spec.platform_identifier);
        let queue = self
            .broker
            .topology
            .platform_queue(&job.spec.platform_identifier);
        self.broker
            .publish(&queue, QueueKind::Plain, &Self::queued(job, reason))
            .await?;
        Ok(())
    }

    /// Validates, stores and queues a job; answers once both are durable.
    pub async fn submit(&self, request: proto::SubmitJobRequest) -> Result<JobRow> {
        let spec = JobSpec::try_from(request.spec.unwrap_or_default())?;
        let requirement = Requirement::new(&spec.platform_identifier, &spec.platform_variants);
        if !request.queue_without_capacity {
            let table = self.table.lock().expect("table lock");
            if !table.offers(&requirement) {
                return Err(Error::NoCapacity {
                    requirement: format!(
                        "{}[{}]",
                        spec.platform_identifier,
                        spec.platform_variants.join(",")
                    ),
                    offers: table.offer_list(),
                });
            }
        }
        let resolved_version = if spec.project_version.is_empty() {
            crate::pypi::resolve_latest(&self.http, &self.settings.index_url, &spec.project_name)
                .await?
        } else {
            String::new()
        };
        let now = now_ms();
        let job = JobRow {
            job_id: uuid::Uuid::now_v7().to_string(),
            spec,
            resolved_version,
            state: JobState::Submitted,
            attempt: 1,
            worker_id: String::new(),
            outcome: Outcome::Unspecified,
            submitted_at_ms: now,
            updated_at_ms: now,
            lease_deadline_ms: None,
            cancel_requested: false,
            history: Vec::new(),
        };
        self.store.insert_job(&job, "submitted").await?;
        self.announce(&job);
        if let Err(error) = self.publish_to_platform(&job, "submitted").await {
            let mut failed = Transition::of(
                &job,
                JobState::Failed,
                format!("could not be queued: {error}"),
                now_ms(),
            );
            failed.outcome = Outcome::Unspecified;
            self.transition(&failed).await?;
            return Err(error);
        }
        let queued = Transition::of(&job, JobState::Queued, "queued", now_ms());
        match self.transition(&queued).await? {
            Some(job) => Ok(job),
            // The dispatcher was quicker and assigned it already.
            None => self.job(&job.job_id).await,
        }
    }

    /// A job with its history.
    pub async fn job(&self, job_id: &str) -> Result<JobRow> {
        self.store
            .get_job(job_id)
            .await?
            .ok_or_else(|| Error::JobNotFound(job_id.to_owned()))
    }

    /// One page of jobs and the token of the next page (empty at the end).
    pub async fn list(&self, request: &proto::ListJobsRequest) -> Result<(Vec<JobRow>, String)> {
        let limit = match request.page_size {
            0 => 50,
            n => n.min(1000),
        };
        let mut states = Vec::new();
        for s in &request.states {
            match JobState::try_from(*s) {
                Ok(state) if state != JobState::Unspecified => states.push(state),
                _ => return Err(Error::BadRequest(format!("states: {s} is not a job state"))),
            }
        }
        let before_job_id = if request.page_token.is_empty() {
            None
        } else if uuid::Uuid::parse_str(&request.page_token).is_ok() {
            Some(request.page_token.clone())
        } else {
            return Err(Error::BadRequest(format!(
                "page_token {:?} is not one a ListJobs answer gave",
                request.page_token
            )));
        };
        let mut jobs = self
            .store
            .list_jobs(&JobFilter {
                states,
                project_name: pyti::model::names::normalize_project_name(&request.project_name),
                worker_id: request.worker_id.clone(),
                limit: limit + 1,
                before_job_id,
            })
            .await?;
        let next = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|j| j.job_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((jobs, next))
    }

    /// The job now, then each state change and task result until it ends.
    pub async fn watch(
        self: &Arc<Self>,
        job_id: &str,
    ) -> Result<mpsc::Receiver<proto::job_event::Event>> {
        let mut events = self.events.subscribe();
        let job = self.job(job_id).await?;
        let (sender, receiver) = mpsc::channel(64);
        let farm = Arc::clone(self);
        let job_id = job_id.to_owned();
        self.tasks.spawn(async move {
            let ended = job.is_terminal();
            if sender
                .send(proto::job_event::Event::Job(convert::job(&job)))
                .await
                .is_err()
                || ended
            {
                return;
            }
            loop {
                let event = tokio::select! {
                    () = sender.closed() => return,
                    () = farm.shutdown.cancelled() => return,
                    event = events.recv() => event,
                };
                let event = match event {
                    Ok(event) if event.job_id == job_id => event.event,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => match farm.job(&job_id).await {
                        Ok(job) => proto::job_event::Event::Job(convert::job(&job)),
                        Err(_) => return,
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let ended = matches!(&event, proto::job_event::Event::Job(j)
                    if crate::store::is_terminal(j.state()));
                if sender.send(event).await.is_err() || ended {
                    return;
                }
            }
        });
        Ok(receiver)
    }

    /// Cancels a job: a waiting one at once, a running one through its worker.
    pub async fn cancel(&self, job_id: &str, reason: &str) -> Result<JobRow> {
        let reason = if reason.is_empty() {
            "cancelled by a user"
        } else {
            reason
        };
        for _ in 0..5 {
            let job = self.job(job_id).await?;
            match job.state {
                JobState::Submitted | JobState::Queued | JobState::Assigned => {
                    let mut cancel = Transition::of(&job, JobState::Cancelled, reason, now_ms());
                    cancel.outcome = Outcome::Cancelled;
                    if let Some(job) = self.transition(&cancel).await? {
                        self.table.lock().expect("table lock").forget(job_id);
                        return Ok(job);
                    }
                }
                JobState::Running => {
                    let mut flag = Transition::of(
                        &job,
                        JobState::Running,
                        format!("cancel requested: {reason}"),
                        now_ms(),
                    );
                    flag.cancel_requested = true;
                    if let Some(job) = self.transition(&flag).await? {
                        if let Err(error) = self.cancel_on_worker(&job, reason).await {
                            tracing::warn!(job_id, %error, "Worker not told to cancel; the lease will lapse");
                        }
                        return Ok(job);
                    }
                }
                state => {
                    return Err(Error::JobEnded {
                        job_id: job_id.to_owned(),
                        state: convert::state_name(state).to_owned(),
                    })
                }
            }
        }
        Err(Error::BadRequest(format!(
            "job {job_id} kept changing state; try again"
        )))
    }

    async fn cancel_on_worker(&self, job: &JobRow, reason: &str) -> Result<()> {
        let address = self
            .workers
            .lock()
            .expect("workers lock")
            .get(&job.worker_id)
            .map(|w| w.control_address.clone())
            .ok_or_else(|| Error::WorkerNotFound(job.worker_id.clone()))?;
        let unreachable = |message: String| Error::WorkerUnreachable {
            worker_id: job.worker_id.clone(),
            address: address.clone(),
            message,
        };
        let mut client =
            proto::worker_control_client::WorkerControlClient::connect(address.clone())
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        client
            .cancel_job(proto::WorkerCancelJobRequest {
                job_id: job.job_id.clone(),
                reason: reason.to_owned(),
            })
            .await
            .map_err(|e| unreachable(e.message().to_owned()))?;
        Ok(())
    }

    /// A job with the results of its latest stored attempt.
    pub async fn results(&self, job_id: &str) -> Result<proto::JobResults> {
        let job = self.job(job_id).await?;
        let stored = self.store.get_results(job_id).await?;
        Ok(convert::results(&job, stored.as_ref()))
    }
}
