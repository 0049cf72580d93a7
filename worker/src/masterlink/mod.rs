//! The master link: the worker's side of the farm protocol (DESIGN.md §4). Register with
//! the master, take jobs from this worker's RabbitMQ queue, run them through a
//! [`JobExecutor`], and get their results to the master without losing them.
//!
//! The order of things is what makes the farm survive crashes: a delivery is acked
//! only after the master recorded the job RUNNING with a lease (so RabbitMQ never holds
//! a delivery for a whole VM run, and a worker that dies before starting leaves the
//! job in its queue); the lease is renewed while the job runs (a worker that dies
//! mid-job lets it lapse and the master queues the job again); results are spooled to
//! disk before they are sent and deleted only after the master stored them. A job this
//! worker cannot take is given back (nack without requeue, dead-lettered to the
//! returned queue) and the master places it elsewhere.
//!
//! Whether a job can be taken is decided by the slot pool alone: accepting a delivery
//! takes a slot lease ([`WorkerCapacity::accept`]) that moves into the run, and what
//! `Register` sends is [`WorkerCapacity::advertised`], the same as the control plane.

mod consume;
mod executor;
mod report;
pub mod spool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyti::proto::{self, QueuedJob};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity::{Refusal, WorkerCapacity};
use crate::config::WorkerConfig;
use crate::stateofvm::SlotLease;

pub use executor::{AttemptReport, JobExecutor};

/// Errors of the master link.
#[derive(Debug, thiserror::Error)]
pub enum MasterLinkError {
    /// The results spool could not be written or read.
    #[error("results spool {}: {source}", path.display())]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The master's address is not a URL.
    #[error("master address {address:?} (set [config] master): {message}")]
    MasterAddress { address: String, message: String },
}

/// How this worker reaches the master and RabbitMQ.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterLinkSettings {
    /// The master's gRPC address.
    pub master: String,
    /// RabbitMQ.
    pub amqp_url: String,
    /// Where the master reaches this worker's WorkerControl.
    pub control_address: String,
    /// Where results wait until the master stored them (`<root>/spool`).
    pub spool_dir: PathBuf,
    /// How often to register again (so a restarted master knows this worker).
    pub register_interval: Duration,
    /// This worker's farm identity, presented to the master (whose certificate must
    /// name `master.pyti`).
    pub tls: Option<pyti::trust::TlsFiles>,
    /// For an `amqps://` URL: RabbitMQ's CA and the client certificate to present.
    pub amqp_tls: Option<pyti::amqp::AmqpTls>,
}

impl MasterLinkSettings {
    /// The settings a worker configuration gives.
    pub fn from_config(config: &WorkerConfig) -> Self {
        Self {
            master: config.master.clone(),
            amqp_url: config.amqp_url.clone(),
            control_address: config.advertise.clone(),
            spool_dir: config.root.join("spool"),
            register_interval: Duration::from_secs(10),
            tls: config.tls.clone(),
            amqp_tls: config.amqp_tls.clone(),
        }
    }
}

/// A job this worker took: what cancelling it needs.
#[derive(Debug, Clone)]
struct TakenJob {
    attempt: u32,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    capacity: WorkerCapacity,
    /// From acceptance until the master stored the results.
    taken: Mutex<HashMap<String, TakenJob>>,
}

/// What the control plane and the caller use to reach the running master link (cheap
/// to clone).
#[derive(Debug, Clone)]
pub struct MasterLinkHandle {
    shared: Arc<Shared>,
}

impl MasterLinkHandle {
    /// A handle for a worker whose slots and platforms are `capacity`.
    pub fn new(capacity: WorkerCapacity) -> Self {
        Self {
            shared: Arc::new(Shared {
                capacity,
                taken: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The capacity this link takes jobs by and registers with.
    pub fn capacity(&self) -> &WorkerCapacity {
        &self.shared.capacity
    }

    fn taken(&self) -> MutexGuard<'_, HashMap<String, TakenJob>> {
        // Every change is one insert or remove: a panic elsewhere leaves the map whole.
        self.shared
            .taken
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops `job_id` if it runs here; `false` when it does not.
    pub fn cancel(&self, job_id: &str) -> bool {
        match self.taken().get(job_id) {
            Some(job) => {
                job.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Jobs taken here and not yet reported to the master.
    pub fn running(&self) -> u32 {
        u32::try_from(self.taken().len()).unwrap_or(u32::MAX)
    }

    /// Ids of the jobs taken here with their attempts.
    pub fn running_jobs(&self) -> Vec<(String, u32)> {
        let mut jobs: Vec<(String, u32)> = self
            .taken()
            .iter()
            .map(|(id, j)| (id.clone(), j.attempt))
            .collect();
        jobs.sort();
        jobs
    }

    /// Takes `job`: a slot lease for its run and the token that cancels it, or why the
    /// job must be given back.
    fn accept(&self, job: &QueuedJob) -> Result<(SlotLease, CancellationToken), Refusal> {
        let mut taken = self.taken();
        if taken.contains_key(&job.job_id) {
            return Err(Refusal::AlreadyRunning);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let lease = self.shared.capacity.accept(&job.job_id, &spec)?;
        let cancel = CancellationToken::new();
        taken.insert(
            job.job_id.clone(),
            TakenJob {
                attempt: job.attempt,
                cancel: cancel.clone(),
            },
        );
        Ok((lease, cancel))
    }

    /// Forgets `job_id` once its results are with the master (or it never started).
    fn finish(&self, job_id: &str) {
        self.taken().remove(job_id);
    }
}

/// Runs the worker's side of the farm until `shutdown`: re-sends spooled results,
/// registers (again and again, so a restarted master learns about this worker),
/// consumes this worker's queue (reconnecting after RabbitMQ restarts) and runs each
/// job with `executor`. After `shutdown` it stops taking jobs and waits for the running
/// ones to be reported.
pub async fn run<E: JobExecutor>(
    settings: MasterLinkSettings,
    executor: Arc<E>,
    handle: MasterLinkHandle,
    shutdown: CancellationToken,
) -> Result<(), MasterLinkError> {
    let address_error = |message: String| MasterLinkError::MasterAddress {
        address: settings.master.clone(),
        message,
    };
    let tls = settings
        .tls
        .as_ref()
        .map(|files| files.client_config(pyti::trust::MASTER_NAME))
        .transpose()
        .map_err(address_error)?;
    let master = pyti::trust::tls::endpoint(&settings.master, tls)
        .map_err(address_error)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(pyti::grpc::REQUEST_TIMEOUT)
        .connect_lazy();
    let registry = proto::worker_registry_client::WorkerRegistryClient::new(master)
        .max_decoding_message_size(pyti::grpc::MAX_DECODE_BYTES)
        .max_encoding_message_size(pyti::grpc::MAX_DECODE_BYTES);
    let link = Arc::new(consume::MasterLink {
        settings,
        registry,
        handle,
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });
    for path in spool::pending(&link.settings.spool_dir)? {
        let link = Arc::clone(&link);
        link.tasks
            .clone()
            .spawn(async move { link.send_spooled(path).await });
    }
    let (queue_sender, queue) = tokio::sync::watch::channel(None);
    let registering = link
        .tasks
        .spawn(Arc::clone(&link).keep_registered(queue_sender));
    Arc::clone(&link).consume(queue, executor).await;
    registering.abort();
    link.tasks.close();
    link.tasks.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stateofvm::SlotPool;

    fn job(id: &str, platform: &str, variants: &[&str]) -> QueuedJob {
        QueuedJob {
            job_id: id.to_owned(),
            spec: Some(proto::JobSpec {
                platform_identifier: platform.to_owned(),
                platform_variants: variants.iter().map(|v| (*v).to_owned()).collect(),
                ..Default::default()
            }),
            attempt: 1,
            ..Default::default()
        }
    }

    fn handle() -> MasterLinkHandle {
        let text = "[config]\nworker_id = w1\ntotal_vms = 2\n[platform linux]\nvms = 2\nvariants = py3.11\n";
        let file = pyti::config::IniFile::parse(text, std::path::Path::new("c")).unwrap();
        let config = WorkerConfig::from_ini(&file, &|_| None).unwrap();
        let pool = SlotPool::new(config.slot_names()).unwrap();
        MasterLinkHandle::new(WorkerCapacity::new(&config, pool))
    }

    fn reason(refused: Result<(SlotLease, CancellationToken), Refusal>) -> String {
        refused.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn slots_are_reserved_up_to_the_configured_vms() {
        let link = handle();
        let (a, _) = link.accept(&job("a", "linux", &[])).unwrap();
        let (_b, _) = link.accept(&job("b", "linux", &["py3.11"])).unwrap();
        assert_eq!(link.capacity().advertised().platforms[0].ready, 0);
        assert_eq!(
            reason(link.accept(&job("c", "linux", &[]))),
            "all 2 VMs of linux are busy"
        );
        assert_eq!(
            reason(link.accept(&job("a", "linux", &[]))),
            "already running here"
        );
        a.release_unused().unwrap();
        link.finish("a");
        let (_c, _) = link.accept(&job("c", "linux", &[])).unwrap();
        assert_eq!(
            link.running_jobs(),
            vec![("b".to_owned(), 1), ("c".to_owned(), 1)]
        );
    }

    #[test]
    fn jobs_this_worker_cannot_run_are_refused_with_the_reason() {
        let link = handle();
        assert_eq!(
            reason(link.accept(&job("a", "bsd", &[]))),
            "no platform bsd"
        );
        assert_eq!(
            reason(link.accept(&job("a", "linux", &["py3.12"]))),
            "platform linux lacks variant py3.12"
        );
        assert_eq!(link.capacity().drain(), 0);
        assert_eq!(reason(link.accept(&job("a", "linux", &[]))), "draining");
        assert_eq!(link.capacity().advertised().platforms[0].ready, 0);
        assert_eq!(link.running(), 0, "nothing refused is held");
    }

    #[test]
    fn cancel_reaches_a_running_job_only() {
        let link = handle();
        let (_lease, token) = link.accept(&job("a", "linux", &[])).unwrap();
        assert!(!link.cancel("b"));
        assert!(link.cancel("a"));
        assert!(token.is_cancelled());
    }
}
