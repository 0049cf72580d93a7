//! The master as one value: it composes the owners of its facts and starts the tasks
//! that move jobs.
//!
//! - [`Workers`]: registered workers, their control addresses, their capacity reports
//!   and the capacity table the scheduler decides over.
//! - [`Jobs`]: job state in the store, leases, results and the watchers of jobs.
//! - [`Dispatch`]: the consumers of the master's queues and the deliveries waiting for
//!   a VM, placed by the scheduler's plan.
//!
//! Each is reached through its methods only; they share handles (store, broker,
//! clock, task set), never state.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Topology};
use crate::clock::Clock;
use crate::config::MasterConfig;
use crate::dispatch::{Dispatch, DispatchSignals};
use crate::error::Result;
use crate::jobs::Jobs;
use crate::runtime::Runtime;
use crate::store::{Millis, Store};
use crate::workers::Workers;

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
    /// The master's farm identity: it serves with it and presents it to workers.
    pub tls: Option<pyti::trust::TlsFiles>,
    /// For an `amqps://` URL: the CA of RabbitMQ's certificate and the client
    /// certificate to present.
    pub amqp_tls: Option<pyti::amqp::AmqpTls>,
    /// A registered worker that neither registers again nor reports capacity for this
    /// long, and holds no job, is forgotten and its (empty) queue deleted.
    pub worker_expiry: Duration,
}

/// Default of [`Settings::worker_expiry`].
pub const WORKER_EXPIRY: Duration = Duration::from_secs(600);

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
            tls: config.tls.clone(),
            amqp_tls: config.amqp_tls.clone(),
            worker_expiry: WORKER_EXPIRY,
        }
    }
}

/// The master: workers, jobs and the dispatcher between them.
pub struct Master {
    workers: Arc<Workers>,
    jobs: Arc<Jobs>,
    store: Arc<dyn Store>,
    broker: Broker,
    runtime: Runtime,
}

impl Master {
    /// Connects to RabbitMQ (in the background), recovers what the store holds and
    /// starts the dispatcher, the lease reaper and the capacity watchers, by the
    /// system's clock. Everything stops when `shutdown` is cancelled; wait for it with
    /// [`Master::stopped`].
    pub async fn start(
        settings: Settings,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>> {
        Self::start_with_clock(settings, store, Clock::system(), shutdown).await
    }

    /// Like [`Master::start`], with the time taken from `clock`.
    pub async fn start_with_clock(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>> {
        let runtime = Runtime::new(clock, shutdown);
        let topology = Topology {
            prefix: settings.queue_prefix.clone(),
            worker_queue_ttl_ms: u32::try_from(settings.worker_queue_ttl.as_millis())
                .unwrap_or(u32::MAX),
        };
        let amqp = pyti::amqp::Amqp::new(&settings.amqp_url, settings.amqp_tls.as_ref())
            .map_err(crate::Error::Trust)?;
        let (broker, supervisor) = Broker::start(amqp, topology, runtime.shutdown_token());
        runtime.spawn(async move {
            let _ = supervisor.await;
        });
        let signals = DispatchSignals::default();
        let workers = Arc::new(Workers::new(
            Arc::clone(&store),
            broker.clone(),
            signals.clone(),
            runtime.clone(),
            (settings.lease, settings.tls.clone()),
        ));
        let jobs = Arc::new(Jobs::new(
            Arc::clone(&store),
            broker.clone(),
            Arc::clone(&workers),
            signals.clone(),
            runtime.clone(),
            &settings,
        )?);
        workers.restore().await?;
        let waiting = jobs.recover().await?;
        runtime.spawn(Arc::clone(&jobs).requeue(waiting));
        let dispatch = Dispatch::new(
            broker.clone(),
            Arc::clone(&jobs),
            Arc::clone(&workers),
            signals,
            runtime.clone(),
        );
        Arc::new(dispatch).start();
        runtime.spawn(Arc::clone(&jobs).reap_leases());
        runtime.spawn(
            Arc::clone(&workers).expire_silent(settings.worker_expiry, settings.reap_interval),
        );
        Ok(Arc::new(Self {
            workers,
            jobs,
            store,
            broker,
            runtime,
        }))
    }

    /// Waits until every task of the master has stopped (after `shutdown`).
    pub async fn stopped(&self) {
        self.runtime.stopped().await;
    }

    /// Jobs: submit, look at, watch, cancel; leases and results.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Workers: registration, capacity, drain.
    pub fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    /// The RabbitMQ handle (tests delete their queues through it).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock the master decides by.
    pub fn clock(&self) -> &Clock {
        self.runtime.clock()
    }

    /// Reaps the leases that lapsed before `now` (see [`Jobs::reap_lapsed_leases`]);
    /// the reaper does this by the master's clock every `reap_interval`.
    pub async fn reap_lapsed_leases(&self, now: Millis) -> Result<usize> {
        self.jobs.reap_lapsed_leases(now).await
    }
}
