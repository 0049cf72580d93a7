//! The manager runs one job from start to end on this host: take a VM slot, download
//! the distribution and its dependency closure, write the IO disk, boot a clean VM,
//! wait for it with a deadline, read the results off the IO disk, roll the VM back.
//!
//! `pyti-vm-run` and the worker daemon both run jobs through [`Manager::run`], so the
//! single-machine mode and the farm can never drift apart. Whatever happens (an error,
//! a deadline, a cancel), the VM is removed, its overlay and IO disk deleted and its
//! slot returned, so a run leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyti::model::JobSpec;
use pyti_guest::job::{GuestJob, JOB_SCHEMA_VERSION};
use pyti_guest::recipe::{RecipeBook, TaskKind};
use pyti_guest::results::{
    parse_results, Results, ResultsLimits, TaskMetrics, TaskResult, TaskStatus,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Accel, PlatformConfig, WorkerConfig};
use crate::diskhandler::{self, ReadLimits};
use crate::image::{self, GuestImage};
use crate::progress::{emit, follow_console, Progress, ProgressSender, Stage};
use crate::pypidownload::{self, Cache, ResolvedSet, TargetEnv};
use crate::stateofvm::{SlotError, SlotLease, SlotPool};
use crate::vms::{
    self, AcceleratorChoice, Connection, DiskSpec, Overlay, VirtualMachine, VmConfig, VmError,
};

mod error;
mod runner;
pub use error::{FailureKind, RunError};
pub use runner::{report_of_error, report_of_run};

/// Where the guest image keeps its ready virtualenv and interpreter.
const GUEST_VENV: &str = "/opt/pyti/venv";
const GUEST_PYTHON: &str = "/usr/bin/python3";
/// Space left free on the IO disk for results and logs.
const RESULTS_SPACE_BYTES: u64 = 256 << 20;
/// How long a VM gets for an ACPI shutdown before it is destroyed on cancel.
const STOP_GRACE: Duration = Duration::from_secs(2);

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
pub struct JobReport {
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
        let mut platforms = BTreeMap::new();
        for platform in &config.platforms {
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
                &slot_prefix(&config),
            )
            .await?;
            if !leftovers.domains.is_empty() || !leftovers.overlays.is_empty() {
                warn!(domains = ?leftovers.domains, overlays = leftovers.overlays.len(), "Removed leftovers of an earlier run");
            }
            platforms.insert(
                platform.name.clone(),
                PlatformRuntime {
                    config: platform.clone(),
                    connection,
                    image,
                },
            );
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

    /// Runs `job` to the end. A package that fails is still `Ok` (its results say how);
    /// `Err` means no results: the farm failed, the job was cancelled, or what was asked
    /// cannot be resolved.
    pub async fn run(
        &self,
        job: &JobRequest,
        progress: ProgressSender,
        cancel: CancellationToken,
    ) -> Result<JobReport, RunError> {
        let runtime = self
            .platforms
            .get(&job.spec.platform_identifier)
            .ok_or_else(|| RunError::UnknownPlatform {
                platform: job.spec.platform_identifier.clone(),
                offered: self.platforms.keys().cloned().collect(),
            })?;
        let recipe = self.recipes.get(&job.spec.recipe_identifier)?.clone();
        if runtime.image.is_none() {
            return Err(RunError::NoImage {
                platform: runtime.config.name.clone(),
                hypervisor: runtime.config.hypervisor.clone(),
            });
        }
        let missing: Vec<&String> = job
            .spec
            .platform_variants
            .iter()
            .filter(|v| !runtime.config.variants.contains(v))
            .collect();
        if !missing.is_empty() {
            return Err(RunError::UnknownVariants {
                platform: runtime.config.name.clone(),
                missing: missing.into_iter().cloned().collect(),
                offered: runtime.config.variants.clone(),
            });
        }
        let run_dir = self.config.root.join("runs").join(&job.job_id);
        let _ = tokio::fs::remove_dir_all(&run_dir).await;
        let staging = run_dir.join("io");
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(|e| RunError::io(&staging, e))?;
        let mut timings = Vec::new();
        let mut stage = StageClock::new(&job.job_id, &progress);

        stage.start(Stage::WaitingForSlot, &runtime.config.name);
        let lease = acquire_slot(&self.pool, &runtime.config.name, &job.job_id, &cancel).await?;
        timings.push(stage.finish(lease.name()));

        let outcome = self
            .run_in_slot(
                job,
                runtime,
                &recipe,
                &lease,
                &run_dir,
                &staging,
                &mut stage,
                &mut timings,
                &progress,
                &cancel,
            )
            .await;

        stage.start(Stage::Rollback, lease.name());
        let overlay = overlay_dir(&self.config.root).join(format!("{}.qcow2", lease.name()));
        let rolled_back = rollback(
            runtime,
            &lease,
            &[run_dir.join("io.img"), overlay],
            &staging,
        )
        .await;
        timings.push(stage.finish(""));
        match rolled_back {
            Ok(()) => {
                if let Err(error) = lease.release() {
                    warn!(%error, "Releasing the VM slot failed");
                }
            }
            Err(error) => lease.mark_broken(&error.to_string()),
        }
        let (resolved, results) = outcome?;
        Ok(JobReport {
            job_id: job.job_id.clone(),
            results,
            resolved,
            timings,
            results_dir: run_dir.join("results"),
            console_log: run_dir.join("console.log"),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_in_slot(
        &self,
        job: &JobRequest,
        runtime: &PlatformRuntime,
        recipe: &pyti_guest::recipe::Recipe,
        lease: &SlotLease,
        run_dir: &Path,
        staging: &Path,
        stage: &mut StageClock<'_>,
        timings: &mut Vec<(Stage, Duration)>,
        progress: &ProgressSender,
        cancel: &CancellationToken,
    ) -> Result<(ResolvedSet, Results), RunError> {
        let Some(image) = runtime.image.as_ref() else {
            return Err(RunError::NoImage {
                platform: runtime.config.name.clone(),
                hypervisor: runtime.config.hypervisor.clone(),
            });
        };
        stage.start(Stage::Download, &job.spec.requirement());
        let request = match &job.local_distribution {
            Some(path) => pypidownload::Request::local(path.clone()),
            None => {
                pypidownload::Request::from_job(&job.spec.project_name, &job.spec.project_version)
            }
        }
        .with_index(self.config.index_url.clone());
        let resolved = cancellable(
            cancel,
            pypidownload::resolve_and_download(
                &request,
                &TargetEnv::default(),
                &self.cache,
                Some(staging),
            ),
        )
        .await??;
        let cached = resolved.files().filter(|f| f.from_cache).count();
        timings.push(stage.finish(&format!(
            "{} files, {} from the cache",
            resolved.files().count(),
            cached
        )));

        stage.start(Stage::IoDisk, "");
        let guest_job = GuestJob {
            schema_version: JOB_SCHEMA_VERSION,
            job_id: job.job_id.clone(),
            attempt: job.attempt,
            project_name: job.spec.project_name.clone(),
            project_version: resolved.distribution.version.clone(),
            recipe_identifier: job.spec.recipe_identifier.clone(),
            platform_identifier: job.spec.platform_identifier.clone(),
            platform_variants: job.spec.platform_variants.clone(),
            recipe: recipe.clone(),
            inputs: pyti_guest::job::describe_inputs(staging)?,
            image_hash: Some(image.manifest.hash.clone()),
            venv_template: Some(GUEST_VENV.to_owned()),
            python: Some(GUEST_PYTHON.to_owned()),
        };
        guest_job.validate()?;
        let job_file = staging.join(diskhandler::JOB_FILE);
        tokio::fs::write(&job_file, guest_job.to_json_pretty())
            .await
            .map_err(|e| RunError::io(&job_file, e))?;
        let io_disk = run_dir.join("io.img");
        let geometry = blocking({
            let (staging, io_disk) = (staging.to_owned(), io_disk.clone());
            move || diskhandler::build_io_disk(&staging, &io_disk, Some(RESULTS_SPACE_BYTES))
        })
        .await??;
        timings.push(stage.finish(&format!("{} MiB", geometry.image_bytes() >> 20)));

        stage.start(Stage::Boot, lease.name());
        let overlays = overlay_dir(&self.config.root);
        tokio::fs::create_dir_all(&overlays)
            .await
            .map_err(|e| RunError::io(&overlays, e))?;
        let overlay = Overlay::create(
            &image.base(),
            &overlay_dir(&self.config.root).join(format!("{}.qcow2", lease.name())),
        )
        .await?;
        let console_log = run_dir.join("console.log");
        let mut vm_config = VmConfig::new(lease.name());
        vm_config.memory_mib = u64::from(runtime.config.memory_mib);
        vm_config.vcpus = runtime.config.vcpus;
        vm_config.hard_disk = Some(DiskSpec::overlay(&overlay.path, &overlay.base));
        vm_config.extra_disks = vec![DiskSpec::new(&io_disk)];
        vm_config.kernel = Some(image.direct_boot(false));
        vm_config.serial_log = Some(console_log.clone());
        vm_config.accelerator = match runtime.config.accel {
            Accel::Auto => AcceleratorChoice::Auto,
            Accel::Kvm => AcceleratorChoice::Kvm,
            Accel::Tcg => AcceleratorChoice::Tcg,
        };
        let vm = VirtualMachine::define(&runtime.connection, &vm_config).await?;
        lease.running()?;
        let started = Instant::now();
        vm.start().await.map_err(RunError::Boot)?;
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(u64::from(runtime.config.run_timeout_s));

        // Boot ends when the init says the agent starts; the console follower says when.
        let stop_following = CancellationToken::new();
        let agent_started = Arc::new(std::sync::OnceLock::new());
        let follower = {
            let (path, job_id, sender, stop) = (
                console_log.clone(),
                job.job_id.clone(),
                progress.clone(),
                stop_following.clone(),
            );
            let agent_started = Arc::clone(&agent_started);
            tokio::spawn(async move {
                let events = sender.clone();
                let id = job_id.clone();
                follow_console(&path, &job_id, sender, stop, move || {
                    let elapsed = started.elapsed();
                    let _ = agent_started.set(Instant::now());
                    emit(
                        &events,
                        Progress::StageFinished {
                            job_id: id.clone(),
                            stage: Stage::Boot,
                            elapsed,
                            detail: "agent started".into(),
                        },
                    );
                    emit(
                        &events,
                        Progress::StageStarted {
                            job_id: id.clone(),
                            stage: Stage::Tasks,
                            detail: String::new(),
                        },
                    );
                })
                .await;
            })
        };
        let waited = tokio::select! {
            waited = vm.wait_for_poweroff(deadline) => Some(waited),
            () = cancel.cancelled() => {
                let _ = vm.stop(STOP_GRACE).await;
                None
            }
        };
        stop_following.cancel();
        let _ = follower.await;
        let powered_off = Instant::now();
        let agent_started = agent_started.get().copied();
        match agent_started {
            Some(at) => {
                timings.push((Stage::Boot, at - started));
                timings.push((Stage::Tasks, powered_off - at));
                stage.finish_with(Stage::Tasks, powered_off - at, "VM powered off");
            }
            None => {
                timings.push((Stage::Boot, powered_off - started));
                stage.finish_with(
                    Stage::Boot,
                    powered_off - started,
                    "the agent never started",
                );
            }
        }
        let _ = vm.undefine().await;
        let _ = overlay.discard().await;
        match waited {
            Some(Err(VmError::Timeout { .. })) => {
                return Err(RunError::Deadline {
                    seconds: runtime.config.run_timeout_s,
                    console_log,
                })
            }
            Some(Err(other)) => return Err(other.into()),
            None => return Err(RunError::Cancelled),
            Some(Ok(())) => {}
        }
        if agent_started.is_none() {
            return Err(RunError::NoAgent { console_log });
        }

        lease.collecting()?;
        stage.start(Stage::Collect, "");
        let results_dir = run_dir.join("results");
        blocking({
            let (io_disk, results_dir) = (io_disk.clone(), results_dir.clone());
            move || {
                diskhandler::read_results(
                    &io_disk,
                    diskhandler::RESULTS_DIR,
                    &results_dir,
                    &ReadLimits::default(),
                )
            }
        })
        .await??;
        let results = read_results_file(&results_dir, &console_log)?;
        let results = with_host_metadata(results, &resolved);
        timings.push(stage.finish(&format!("outcome {}", outcome_name(&results))));
        lease.rolling_back()?;
        Ok((resolved, results))
    }
}

/// Reads `results.json` with the hostile-input caps, or explains why there is none
/// (the init's `agent-error.json`).
fn read_results_file(results_dir: &Path, console_log: &Path) -> Result<Results, RunError> {
    let path = results_dir.join("results.json");
    match std::fs::read(&path) {
        Ok(bytes) => Ok(parse_results(&bytes, &ResultsLimits::default())?),
        Err(_) => {
            let agent_error =
                std::fs::read_to_string(results_dir.join("agent-error.json")).unwrap_or_default();
            Err(RunError::AgentFailed {
                record: agent_error.trim().to_owned(),
                console_log: console_log.to_owned(),
            })
        }
    }
}

/// Puts the host's static metadata checks in the `metadata` task (the guest leaves it
/// skipped) and decides the outcome again.
pub fn with_host_metadata(mut results: Results, resolved: &ResolvedSet) -> Results {
    let checks = serde_json::to_value(&resolved.metadata).unwrap_or_default();
    let metrics: BTreeMap<String, serde_json::Value> = match checks {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    let status = match resolved.metadata.overall() {
        pypidownload::CheckStatus::Fail => TaskStatus::Failed,
        _ => TaskStatus::Passed,
    };
    let message = format!("metadata checks: {:?}", resolved.metadata.overall()).to_lowercase();
    let task = TaskResult {
        name: TaskKind::Metadata,
        status,
        duration_s: 0.0,
        timeout_s: 0,
        log: None,
        message,
        metrics: Some(TaskMetrics::Metadata(metrics)),
    };
    match results
        .tasks
        .iter_mut()
        .find(|t| t.name == TaskKind::Metadata)
    {
        Some(existing) => *existing = task,
        None => return results,
    }
    let (outcome, detail) = pyti_guest::results::decide_outcome(&results.tasks);
    results.outcome = outcome;
    results.outcome_detail = detail;
    results
}

/// The stable name of a results dict's outcome (`passed`, `install_failed`, ...).
pub fn outcome_name(results: &Results) -> String {
    serde_json::to_value(results.outcome)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Removes what a run made: VM, `files` (overlay, IO disk), staging copy. Whatever
/// step the run failed at, nothing else is left. The results stay.
async fn rollback(
    runtime: &PlatformRuntime,
    lease: &SlotLease,
    files: &[PathBuf],
    staging: &Path,
) -> Result<(), RunError> {
    if lease.state() != crate::stateofvm::SlotState::RollingBack {
        lease.rolling_back()?;
    }
    let vm = VirtualMachine::attach(&runtime.connection, lease.name());
    let _ = vm.destroy().await;
    let _ = vm.undefine().await;
    let remaining = runtime.connection.domain_names().await?;
    if remaining.iter().any(|n| n == lease.name()) {
        return Err(RunError::Rollback {
            slot: lease.name().to_owned(),
            detail: "the domain is still defined".into(),
        });
    }
    for path in files {
        if let Err(e) = tokio::fs::remove_file(path).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(RunError::io(path, e));
            }
        }
    }
    let _ = tokio::fs::remove_dir_all(staging).await;
    Ok(())
}

/// Takes a ready slot of `platform`, waiting for one to free up.
async fn acquire_slot(
    pool: &SlotPool,
    platform: &str,
    job_id: &str,
    cancel: &CancellationToken,
) -> Result<SlotLease, RunError> {
    let mut changes = pool.watch();
    loop {
        match pool.acquire(platform, job_id) {
            Ok(lease) => return Ok(lease),
            Err(SlotError::NoReadySlot { .. }) => {}
            Err(other) => return Err(other.into()),
        }
        tokio::select! {
            changed = changes.changed() => changed.map_err(|_| RunError::Cancelled)?,
            () = cancel.cancelled() => return Err(RunError::Cancelled),
        }
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

/// Times the stages of one job and reports them as progress.
struct StageClock<'a> {
    job_id: &'a str,
    progress: &'a ProgressSender,
    current: Option<(Stage, Instant)>,
}

impl<'a> StageClock<'a> {
    fn new(job_id: &'a str, progress: &'a ProgressSender) -> Self {
        Self {
            job_id,
            progress,
            current: None,
        }
    }

    fn start(&mut self, stage: Stage, detail: &str) {
        self.current = Some((stage, Instant::now()));
        emit(
            self.progress,
            Progress::StageStarted {
                job_id: self.job_id.to_owned(),
                stage,
                detail: detail.to_owned(),
            },
        );
    }

    fn finish(&mut self, detail: &str) -> (Stage, Duration) {
        let (stage, started) = self.current.take().expect("a stage was started");
        let elapsed = started.elapsed();
        self.finish_with(stage, elapsed, detail);
        (stage, elapsed)
    }

    fn finish_with(&self, stage: Stage, elapsed: Duration, detail: &str) {
        emit(
            self.progress,
            Progress::StageFinished {
                job_id: self.job_id.to_owned(),
                stage,
                elapsed,
                detail: detail.to_owned(),
            },
        );
    }
}
