//! The worker's side of the farm protocol (DESIGN.md §4): register with the master,
//! take jobs from this worker's RabbitMQ queue, run them through a [`JobRunner`], and
//! get their results to the master without losing them.
//!
//! The order of things is what makes the farm survive crashes: a delivery is acked
//! only after the master recorded the job RUNNING with a lease (so RabbitMQ never holds
//! a delivery for a whole VM run, and a worker that dies before starting leaves the
//! job in its queue); the lease is renewed while the job runs (a worker that dies
//! mid-job lets it lapse and the master queues the job again); results are spooled to
//! disk before they are sent and deleted only after the master stored them. A job this
//! worker cannot take is given back (nack without requeue, dead-lettered to the
//! returned queue) and the master places it elsewhere.

mod consume;
mod report;
mod runner;
pub mod spool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyti::proto::{self, QueuedJob};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WorkerConfig;
use crate::control::PlatformCapacity;

pub use runner::{JobReport, JobRunner};

/// Errors of the farm module.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
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

/// What the farm module needs to know about this worker.
#[derive(Debug, Clone, PartialEq)]
pub struct FarmSettings {
    /// This worker's id in the farm.
    pub worker_id: String,
    /// The master's gRPC address.
    pub master: String,
    /// RabbitMQ.
    pub amqp_url: String,
    /// Where the master reaches this worker's WorkerControl.
    pub control_address: String,
    /// Where results wait until the master stored them (`<root>/spool`).
    pub spool_dir: PathBuf,
    /// VM slots per platform: jobs beyond them are given back.
    pub platforms: Vec<PlatformCapacity>,
    /// How often to register again (so a restarted master knows this worker).
    pub register_interval: Duration,
}

impl FarmSettings {
    /// The settings a worker configuration gives.
    pub fn from_config(config: &WorkerConfig) -> Self {
        Self {
            worker_id: config.worker_id.clone(),
            master: config.master.clone(),
            amqp_url: config.amqp_url.clone(),
            control_address: config.advertise.clone(),
            spool_dir: config.root.join("spool"),
            platforms: config
                .platforms
                .iter()
                .map(|p| PlatformCapacity {
                    platform: p.name.clone(),
                    variants: p.variants.clone(),
                    total: p.vms,
                    ready: p.vms,
                })
                .collect(),
            register_interval: Duration::from_secs(10),
        }
    }
}

/// A job this worker runs.
#[derive(Debug, Clone)]
struct RunningJob {
    platform: String,
    attempt: u32,
    cancel: CancellationToken,
}

#[derive(Debug)]
struct Shared {
    running: Mutex<HashMap<String, RunningJob>>,
    draining: watch::Sender<bool>,
    platforms: Vec<PlatformCapacity>,
}

/// What the control plane and the caller use to reach the running farm loop (cheap
/// to clone).
#[derive(Debug, Clone)]
pub struct FarmHandle {
    shared: Arc<Shared>,
}

impl FarmHandle {
    /// A handle for a worker with these slots.
    pub fn new(platforms: Vec<PlatformCapacity>) -> Self {
        let (draining, _) = watch::channel(false);
        Self {
            shared: Arc::new(Shared {
                running: Mutex::new(HashMap::new()),
                draining,
                platforms,
            }),
        }
    }

    /// Stops `job_id` if it runs here; `false` when it does not.
    pub fn cancel(&self, job_id: &str) -> bool {
        let running = self.shared.running.lock().expect("running lock");
        match running.get(job_id) {
            Some(job) => {
                job.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops taking work (running jobs finish); returns how many still run.
    pub fn drain(&self) -> u32 {
        self.shared.draining.send_replace(true);
        self.running()
    }

    /// Whether the worker is draining.
    pub fn is_draining(&self) -> bool {
        *self.shared.draining.borrow()
    }

    /// Jobs running (or starting) here.
    pub fn running(&self) -> u32 {
        u32::try_from(self.shared.running.lock().expect("running lock").len()).unwrap_or(u32::MAX)
    }

    /// Ids of the jobs running here with their attempts.
    pub fn running_jobs(&self) -> Vec<(String, u32)> {
        let running = self.shared.running.lock().expect("running lock");
        let mut jobs: Vec<(String, u32)> = running
            .iter()
            .map(|(id, j)| (id.clone(), j.attempt))
            .collect();
        jobs.sort();
        jobs
    }

    /// Capacity as the master should see it: configured slots less running jobs.
    pub fn capacity(&self) -> Vec<PlatformCapacity> {
        let running = self.shared.running.lock().expect("running lock");
        let draining = self.is_draining();
        self.shared
            .platforms
            .iter()
            .map(|p| {
                let busy = u32::try_from(
                    running
                        .values()
                        .filter(|j| j.platform == p.platform)
                        .count(),
                )
                .unwrap_or(u32::MAX);
                PlatformCapacity {
                    ready: if draining {
                        0
                    } else {
                        p.total.saturating_sub(busy)
                    },
                    ..p.clone()
                }
            })
            .collect()
    }

    /// Reserves a slot for `job`, or says why the job must be given back.
    fn reserve(&self, job: &QueuedJob) -> Result<CancellationToken, String> {
        if self.is_draining() {
            return Err("draining".to_owned());
        }
        let spec = job.spec.clone().unwrap_or_default();
        let mut running = self.shared.running.lock().expect("running lock");
        if running.contains_key(&job.job_id) {
            return Err("already running here".to_owned());
        }
        let Some(platform) = self
            .shared
            .platforms
            .iter()
            .find(|p| p.platform == spec.platform_identifier)
        else {
            return Err(format!("no platform {}", spec.platform_identifier));
        };
        if let Some(missing) = spec
            .platform_variants
            .iter()
            .find(|v| !platform.variants.contains(v))
        {
            return Err(format!(
                "platform {} lacks variant {missing}",
                platform.platform
            ));
        }
        let busy = running
            .values()
            .filter(|j| j.platform == platform.platform)
            .count();
        if busy >= platform.total as usize {
            return Err(format!(
                "all {} VMs of {} are busy",
                platform.total, platform.platform
            ));
        }
        let cancel = CancellationToken::new();
        running.insert(
            job.job_id.clone(),
            RunningJob {
                platform: platform.platform.clone(),
                attempt: job.attempt,
                cancel: cancel.clone(),
            },
        );
        Ok(cancel)
    }

    fn release(&self, job_id: &str) {
        self.shared
            .running
            .lock()
            .expect("running lock")
            .remove(job_id);
    }

    fn draining_changes(&self) -> watch::Receiver<bool> {
        self.shared.draining.subscribe()
    }
}

/// Runs the worker's side of the farm until `shutdown`: re-sends spooled results,
/// registers (again and again, so a restarted master learns about this worker),
/// consumes this worker's queue (reconnecting after RabbitMQ restarts) and runs each
/// job with `runner`. After `shutdown` it stops taking jobs and waits for the running
/// ones to be reported.
pub async fn run<R: JobRunner>(
    settings: FarmSettings,
    runner: Arc<R>,
    handle: FarmHandle,
    shutdown: CancellationToken,
) -> Result<(), FarmError> {
    let master = tonic::transport::Endpoint::from_shared(settings.master.clone())
        .map_err(|e| FarmError::MasterAddress {
            address: settings.master.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let registry = proto::worker_registry_client::WorkerRegistryClient::new(master);
    let farm = Arc::new(consume::Farm {
        settings,
        registry,
        handle,
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });
    for path in spool::pending(&farm.settings.spool_dir)? {
        let farm = Arc::clone(&farm);
        farm.tasks
            .clone()
            .spawn(async move { farm.send_spooled(path).await });
    }
    let (queue_sender, queue) = watch::channel(None);
    let registering = farm
        .tasks
        .spawn(Arc::clone(&farm).keep_registered(queue_sender));
    Arc::clone(&farm).consume(queue, runner).await;
    registering.abort();
    farm.tasks.close();
    farm.tasks.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn handle() -> FarmHandle {
        FarmHandle::new(vec![PlatformCapacity {
            platform: "linux".into(),
            variants: vec!["py3.11".into()],
            total: 2,
            ready: 2,
        }])
    }

    #[test]
    fn slots_are_reserved_up_to_the_configured_vms() {
        let farm = handle();
        farm.reserve(&job("a", "linux", &[])).unwrap();
        farm.reserve(&job("b", "linux", &["py3.11"])).unwrap();
        assert_eq!(farm.capacity()[0].ready, 0);
        let error = farm.reserve(&job("c", "linux", &[])).unwrap_err();
        assert_eq!(error, "all 2 VMs of linux are busy");
        assert_eq!(
            farm.reserve(&job("a", "linux", &[])).unwrap_err(),
            "already running here"
        );
        farm.release("a");
        farm.reserve(&job("c", "linux", &[])).unwrap();
        assert_eq!(
            farm.running_jobs(),
            vec![("b".to_owned(), 1), ("c".to_owned(), 1)]
        );
    }

    #[test]
    fn jobs_this_worker_cannot_run_are_refused_with_the_reason() {
        let farm = handle();
        assert_eq!(
            farm.reserve(&job("a", "bsd", &[])).unwrap_err(),
            "no platform bsd"
        );
        assert_eq!(
            farm.reserve(&job("a", "linux", &["py3.12"])).unwrap_err(),
            "platform linux lacks variant py3.12"
        );
        assert_eq!(farm.drain(), 0);
        assert_eq!(
            farm.reserve(&job("a", "linux", &[])).unwrap_err(),
            "draining"
        );
        assert_eq!(farm.capacity()[0].ready, 0);
    }

    #[test]
    fn cancel_reaches_a_running_job_only() {
        let farm = handle();
        let token = farm.reserve(&job("a", "linux", &[])).unwrap();
        assert!(!farm.cancel("b"));
        assert!(farm.cancel("a"));
        assert!(token.is_cancelled());
    }
}
