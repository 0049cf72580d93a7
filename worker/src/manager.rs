//! The manager runs one job from start to end on this host, in a VM slot it was handed:
//! download the distribution and its dependency closure, write the IO disk, boot a clean
//! VM, wait for it with a deadline, read the results off the IO disk, roll the VM back.
//!
//! `pyti-vm-run` and the worker daemon both run jobs through the same steps, so the
//! single-machine mode and the farm can never drift apart. The download comes first and
//! holds no VM slot (an index can be slow, and the closure has a time budget of its
//! own): [`Manager::prepare`] downloads, then the run takes a slot lease
//! ([`Manager::wait_for_slot`]) and gives it back at rollback. In a farm the master
//! link leases the slot when it accepts a delivery; [`Manager::run`] gives it back
//! while the job downloads and waits for one again afterwards. Whatever happens (an
//! error, a deadline, a cancel), the VM is removed, its overlay and IO disk deleted and
//! the slot released, or marked broken when something could not be removed, so a run
//! leaves nothing behind. The steps themselves are [`job_run::JobRun`]'s.

// The job pipeline: steps short enough to read whole, and no error dropped.
#![warn(clippy::too_many_lines, clippy::let_underscore_must_use)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pyti::model::JobSpec;
use pyti_guest::recipe::{Recipe, RecipeBook};
use pyti_guest::results::Results;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{PlatformConfig, WorkerConfig};
use crate::image::{self, GuestImage};
use crate::progress::{ProgressSender, Stage};
use crate::pypidownload::{Cache, CachePin, ResolvedSet};
use crate::stateofvm::{SlotError, SlotLease, SlotPool};
use crate::vms::{self, Connection};

mod attempt;
mod boot;
mod error;
mod job_run;
mod results;
mod stage_clock;

pub use attempt::{report_of_error, report_of_run};
pub use error::{FailureKind, RunError};
pub use results::{outcome_name, with_host_metadata};

use job_run::JobRun;
use stage_clock::StageClock;

/// One job to run.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// Job id (a UUID for pyti-vm-run, the master's id in a farm).
    pub job_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// What to test.
    pub spec: JobSpec,
    /// A local sdist or wheel to test instead of the index's copy (its dependencies
    /// still come from the index).
    pub local_distribution: Option<PathBuf>,
}

/// A finished run: the results dict and how long each stage took.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The job.
    pub job_id: String,
    /// The results dict read off the IO disk, with the host's metadata task filled in.
    pub results: Results,
    /// The resolved and downloaded set.
    pub resolved: ResolvedSet,
    /// Wall time per stage, in order.
    pub timings: Vec<(Stage, Duration)>,
    /// Where the results and logs were copied (the run directory's `results/`).
    pub results_dir: PathBuf,
    /// The guest's serial console.
    pub console_log: PathBuf,
}

struct PlatformRuntime {
    config: PlatformConfig,
    connection: Connection,
    /// `None` on libvirt's test driver, whose domains boot nothing: such a platform
    /// serves the control plane (and its tests) but refuses jobs.
    image: Option<GuestImage>,
}

/// What a job needs from this worker, checked before a slot is used: its platform with
/// a guest image and the variants asked for, and its recipe.
struct Plan<'a> {
    runtime: &'a PlatformRuntime,
    image: &'a GuestImage,
    recipe: Recipe,
}

/// A job whose closure is downloaded into its run directory, ready for a slot. Its
/// files stay pinned in the cache until it is dropped.
pub struct Prepared {
    resolved: ResolvedSet,
    clock: StageClock,
    _pin: CachePin,
}

/// Runs jobs on this host's VM slots. Cheap to share (`Arc`).
pub struct Manager {
    config: Arc<WorkerConfig>,
    pool: SlotPool,
    cache: Cache,
    recipes: RecipeBook,
    platforms: BTreeMap<String, PlatformRuntime>,
}

impl Manager {
    /// Opens each platform's hypervisor, makes sure its guest image exists (building it
    /// on first use, with `agent` or the agent found next to this program) and removes
    /// what a killed predecessor left behind.
    pub async fn start(
        config: Arc<WorkerConfig>,
        pool: SlotPool,
        recipes: RecipeBook,
        agent: Option<&Path>,
    ) -> Result<Self, RunError> {
        let cache = Cache::open(config.root.join("cache/pypi"))?;
        // Pins name the files of running jobs; none runs before the worker starts.
        cache.clear_pins()?;
        let mut platforms = BTreeMap::new();
        for platform in &config.platforms {
            let runtime = PlatformRuntime::open(&config, platform, agent).await?;
            platforms.insert(platform.name.clone(), runtime);
        }
        Ok(Self {
            config,
            pool,
            cache,
            recipes,
            platforms,
        })
    }

    /// The slot pool this manager runs jobs on.
    pub fn pool(&self) -> &SlotPool {
        &self.pool
    }

    /// The recipes jobs may name.
    pub fn recipes(&self) -> &RecipeBook {
        &self.recipes
    }

    /// Runs `job` to the end: the slot `lease` holds (preparing, of the job's platform,
    /// as the master link leased it) goes back to the pool while the closure downloads,
    /// then the job waits for a slot and runs in it. A package that fails is still `Ok`
    /// (its results say how); `Err` means no results: the farm failed, the job was
    /// cancelled, or what was asked cannot be resolved.
    pub async fn run(
        &self,
        job: &JobRequest,
        lease: SlotLease,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> Result<RunReport, RunError> {
        let planned = self
            .plan(job)
            .and_then(|plan| plan.fits(&lease).map(|()| plan));
        release_unused(lease, &job.job_id);
        planned?;
        let mut prepared = self.prepare(job, progress, &cancel).await?;
        let lease = self
            .acquire_slot(job, &mut prepared.clock, &cancel, true)
            .await?;
        self.run_prepared(job, prepared, lease, cancel).await
    }

    /// Downloads `job`'s closure into its run directory (or takes it from the cache),
    /// holding no VM slot; the download budgets apply. A job this worker cannot run is
    /// refused before anything is fetched.
    pub async fn prepare(
        &self,
        job: &JobRequest,
        progress: ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<Prepared, RunError> {
        self.plan(job)?;
        let mut clock = StageClock::new(&job.job_id, progress);
        let paths = job_run::RunPaths::new(&self.config.root, &job.job_id, "");
        job_run::prepare_run_dir(&paths).await?;
        let resolved = job_run::download(self, job, &paths, &mut clock, cancel).await?;
        let pin = self.cache.pin(
            &format!("{}/{}", job.job_id, job.attempt),
            resolved.files().map(|file| file.sha256.as_str()),
        )?;
        let cache = self.cache.clone();
        let budget = self.config.cache_max_bytes;
        match blocking(move || cache.prune(budget)).await? {
            Ok(report) if !report.removed.is_empty() => {
                info!(
                    removed = report.removed.len(),
                    freed_bytes = report.freed_bytes,
                    "Pruned the download cache"
                );
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "Pruning the download cache failed"),
        }
        Ok(Prepared {
            resolved,
            clock,
            _pin: pin,
        })
    }

    /// Runs a prepared job in the slot `lease` holds (preparing, of the job's
    /// platform) and gives the slot back.
    pub async fn run_prepared(
        &self,
        job: &JobRequest,
        prepared: Prepared,
        lease: SlotLease,
        cancel: CancellationToken,
    ) -> Result<RunReport, RunError> {
        let plan = match self
            .plan(job)
            .and_then(|plan| plan.fits(&lease).map(|()| plan))
        {
            Ok(plan) => plan,
            Err(error) => {
                release_unused(lease, &job.job_id);
                return Err(error);
            }
        };
        let Prepared {
            resolved,
            clock,
            _pin,
        } = prepared;
        let report = JobRun::new(self, job, plan, lease, clock, cancel)
            .execute(resolved)
            .await;
        drop(_pin);
        report
    }

    /// Takes a ready slot of `job`'s platform, waiting for one to free up (what
    /// `pyti-vm-run` does after [`prepare`](Self::prepare)). A job this worker cannot
    /// run is refused before any wait.
    pub async fn wait_for_slot(
        &self,
        job: &JobRequest,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<SlotLease, RunError> {
        let mut clock = StageClock::new(&job.job_id, progress.clone());
        self.acquire_slot(job, &mut clock, cancel, false).await
    }

    /// Takes a ready slot for the prepared `job`, waiting for one; the wait is timed
    /// with the job's other stages.
    pub async fn slot_for(
        &self,
        job: &JobRequest,
        prepared: &mut Prepared,
        cancel: &CancellationToken,
    ) -> Result<SlotLease, RunError> {
        self.acquire_slot(job, &mut prepared.clock, cancel, false)
            .await
    }

    /// Waits for a ready slot; `accepted` when the job held one before (a farm job
    /// that gave its slot back while downloading), which a drain does not refuse.
    async fn acquire_slot(
        &self,
        job: &JobRequest,
        clock: &mut StageClock,
        cancel: &CancellationToken,
        accepted: bool,
    ) -> Result<SlotLease, RunError> {
        let plan = self.plan(job)?;
        let platform = plan.runtime.config.name.as_str();
        clock.start(Stage::WaitingForSlot, platform);
        let mut changes = self.pool.watch();
        loop {
            let taken = if accepted {
                self.pool.reacquire(platform, &job.job_id)
            } else {
                self.pool.acquire(platform, &job.job_id)
            };
            match taken {
                Ok(lease) => {
                    clock.finish(lease.name());
                    return Ok(lease);
                }
                Err(SlotError::NoReadySlot { .. }) => {}
                Err(other) => return Err(other.into()),
            }
            tokio::select! {
                changed = changes.changed() => changed.map_err(|_| RunError::Cancelled)?,
                () = cancel.cancelled() => return Err(RunError::Cancelled),
            }
        }
    }

    /// What `job` needs from this worker, or why it cannot run here.
    fn plan(&self, job: &JobRequest) -> Result<Plan<'_>, RunError> {
        let runtime = self
            .platforms
            .get(&job.spec.platform_identifier)
            .ok_or_else(|| RunError::UnknownPlatform {
                platform: job.spec.platform_identifier.clone(),
                offered: self.platforms.keys().cloned().collect(),
            })?;
        let recipe = self.recipes.get(&job.spec.recipe_identifier)?.clone();
        let Some(image) = runtime.image.as_ref() else {
            return Err(RunError::NoImage {
                platform: runtime.config.name.clone(),
                hypervisor: runtime.config.hypervisor.clone(),
            });
        };
        let offered = &runtime.config.variants;
        let missing: Vec<String> = job
            .spec
            .platform_variants
            .iter()
            .filter(|v| !offered.contains(v))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(RunError::UnknownVariants {
                platform: runtime.config.name.clone(),
                missing,
                offered: offered.clone(),
            });
        }
        Ok(Plan {
            runtime,
            image,
            recipe,
        })
    }
}

impl Plan<'_> {
    /// Whether `lease` holds a slot of this plan's platform.
    fn fits(&self, lease: &SlotLease) -> Result<(), RunError> {
        if lease.platform() == self.runtime.config.name {
            return Ok(());
        }
        Err(RunError::Internal(format!(
            "VM slot {} belongs to platform {}, the job runs on {}",
            lease.name(),
            lease.platform(),
            self.runtime.config.name
        )))
    }
}

impl PlatformRuntime {
    /// Opens `platform`'s hypervisor, finds (or builds) its image and removes what a
    /// killed predecessor left behind.
    async fn open(
        config: &WorkerConfig,
        platform: &PlatformConfig,
        agent: Option<&Path>,
    ) -> Result<Self, RunError> {
        let connection = Connection::open(&platform.hypervisor).await?;
        let image = match &platform.image {
            _ if connection.hypervisor() == vms::Hypervisor::Test => None,
            Some(dir) => Some(GuestImage::load(dir)?),
            None => {
                let agent = image::agent::locate_agent(agent)?;
                if image::latest_image(&config.root, &platform.name).is_err() {
                    info!(platform = %platform.name, "No guest image yet: building one (a few minutes, once)");
                }
                Some(image::ensure_image(&config.root, &platform.name, &agent, false).await?)
            }
        };
        let leftovers = vms::cleanup_leftovers(
            &connection,
            &overlay_dir(&config.root),
            &slot_prefix(config),
        )
        .await?;
        if !leftovers.domains.is_empty() || !leftovers.overlays.is_empty() {
            warn!(domains = ?leftovers.domains, overlays = leftovers.overlays.len(), "Removed leftovers of an earlier run");
        }
        Ok(Self {
            config: platform.clone(),
            connection,
            image,
        })
    }
}

/// Gives back the slot of a job that never started (it could not be planned).
fn release_unused(lease: SlotLease, job_id: &str) {
    let slot = lease.name().to_owned();
    if let Err(error) = lease.release_unused() {
        warn!(%job_id, %slot, %error, "The unused slot could not be released; it is marked broken");
    }
}

async fn cancellable<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Result<T, RunError> {
    tokio::select! {
        value = work => Ok(value),
        () = cancel.cancelled() => Err(RunError::Cancelled),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RunError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RunError::Internal(e.to_string()))
}

/// `pyti-<worker>-`: the prefix of this worker's domains and overlays.
pub fn slot_prefix(config: &WorkerConfig) -> String {
    format!("pyti-{}-", config.worker_id)
}

fn overlay_dir(root: &Path) -> PathBuf {
    root.join("overlays")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masterlink::JobExecutor;
    use crate::stateofvm::SlotState;

    /// A manager whose one platform runs on libvirt's test driver: it boots nothing,
    /// so every job ends before a VM, and what matters is where its slot goes.
    async fn test_driver_manager(root: &Path) -> (Manager, SlotPool) {
        let text = format!(
            "[config]\nworker_id = unit\ntotal_vms = 1\npyti_slave_root = {}\n[platform linux-test]\nvms = 1\nhypervisor = test:///default\n",
            root.display()
        );
        let file = pyti::config::IniFile::parse(&text, Path::new("c")).unwrap();
        let config = Arc::new(WorkerConfig::from_ini(&file, &|_| None).unwrap());
        let pool = SlotPool::new(config.slot_names()).unwrap();
        let manager = Manager::start(config, pool.clone(), RecipeBook::embedded(), None)
            .await
            .unwrap();
        (manager, pool)
    }

    fn job() -> JobRequest {
        JobRequest {
            job_id: "job-1".into(),
            attempt: 1,
            spec: JobSpec::from_requirement("rarfile==4.2", None, Some("linux-test"), &[]).unwrap(),
            local_distribution: None,
        }
    }

    #[tokio::test]
    async fn the_lease_handed_to_a_run_comes_back_when_the_run_ends() {
        let root = tempfile::tempdir().unwrap();
        let (manager, pool) = test_driver_manager(root.path()).await;
        let lease = pool.acquire("linux-test", "job-1").unwrap();
        let error = manager
            .run(&job(), lease, None, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(error, RunError::NoImage { .. }), "{error}");
        assert_eq!(pool.snapshot().ready("linux-test"), 1);

        // Through the master link's seam: the report says why, the slot is ready again.
        let lease = pool.acquire("linux-test", "job-2").unwrap();
        let queued = pyti::proto::QueuedJob {
            job_id: "job-2".into(),
            attempt: 1,
            spec: Some(job().spec.into()),
            ..Default::default()
        };
        let report = JobExecutor::run(&manager, queued, lease, CancellationToken::new()).await;
        assert!(report.error.contains("boots no guest"), "{}", report.error);
        let slot = &pool.slots()[0];
        assert_eq!(
            (slot.state, slot.job_id.as_deref()),
            (SlotState::Ready, None)
        );
    }

    #[tokio::test]
    async fn waiting_for_a_slot_refuses_a_job_that_cannot_run_here_at_once() {
        let root = tempfile::tempdir().unwrap();
        let (manager, pool) = test_driver_manager(root.path()).await;
        let _held = pool.acquire("linux-test", "other").unwrap();
        let mut elsewhere = job();
        elsewhere.spec.platform_identifier = "linux-other".into();
        for (job, refused_for) in [(job(), "boots no guest"), (elsewhere, "no platform")] {
            let waited = manager
                .wait_for_slot(&job, &None, &CancellationToken::new())
                .await;
            let error = waited.map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(refused_for), "{error}");
        }
    }
}
