//! One job running in one VM slot, as named steps over one struct (in the manner of
//! NativeLink's `RunningAction`): download, write the IO disk, boot and wait, collect,
//! roll back. Each step reads what earlier ones left in the struct, so none needs a
//! long parameter list, and every path of the run is computed once, in [`RunPaths`].

use std::path::{Path, PathBuf};

use pyti_guest::job::{GuestJob, JOB_SCHEMA_VERSION};
use pyti_guest::layout;
use pyti_guest::results::Results;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::results::{outcome_name, read_results_file, with_host_metadata};
use super::stage_clock::StageClock;
use super::{blocking, cancellable, overlay_dir, JobRequest, Manager, Plan, RunError, RunReport};
use crate::diskhandler::{self, ReadLimits};
use crate::image::spec::{PYTHON_PATH, VENV_PATH};
use crate::progress::Stage;
use crate::pypidownload::{self, ResolvedSet, TargetEnv};
use crate::stateofvm::{SlotLease, SlotState};
use crate::vms::{Connection, VirtualMachine};

/// Where one run keeps its files.
pub(super) struct RunPaths {
    /// `<root>/runs/<job id>`: removed by the caller once the results were used.
    pub run_dir: PathBuf,
    /// The IO disk's content before it is written (`io/`).
    pub staging: PathBuf,
    /// The IO disk image (`io.img`).
    pub io_disk: PathBuf,
    /// What the guest wrote, copied off the IO disk (`results/`).
    pub results_dir: PathBuf,
    /// The guest's serial console (`console.log`).
    pub console_log: PathBuf,
    /// The slot's qcow2 overlay on the base image (`<root>/overlays/<slot>.qcow2`).
    pub overlay: PathBuf,
}

impl RunPaths {
    pub(super) fn new(root: &Path, job_id: &str, slot: &str) -> Self {
        let run_dir = root.join("runs").join(job_id);
        Self {
            staging: run_dir.join("io"),
            io_disk: run_dir.join("io.img"),
            results_dir: run_dir.join(layout::RESULTS_DIR),
            console_log: run_dir.join(layout::CONSOLE_LOG),
            overlay: overlay_dir(root).join(format!("{slot}.qcow2")),
            run_dir,
        }
    }
}

/// One job in one slot: everything its steps share.
pub(super) struct JobRun<'a> {
    pub(super) job: &'a JobRequest,
    pub(super) plan: Plan<'a>,
    pub(super) lease: SlotLease,
    pub(super) paths: RunPaths,
    pub(super) clock: StageClock,
    pub(super) cancel: CancellationToken,
}

impl<'a> JobRun<'a> {
    /// A run of `job` as `plan` says, in the slot `lease` holds.
    pub(super) fn new(
        manager: &'a Manager,
        job: &'a JobRequest,
        plan: Plan<'a>,
        lease: SlotLease,
        clock: StageClock,
        cancel: CancellationToken,
    ) -> Self {
        let paths = RunPaths::new(&manager.config.root, &job.job_id, lease.name());
        Self {
            job,
            plan,
            lease,
            paths,
            clock,
            cancel,
        }
    }

    /// Runs every step with the downloaded set, then rolls back whatever happened:
    /// the results, or why none.
    pub(super) async fn execute(mut self, resolved: ResolvedSet) -> Result<RunReport, RunError> {
        let outcome = self.steps(resolved).await;
        let job_id = self.job.job_id.clone();
        let (timings, paths) = self.roll_back().await;
        let (resolved, results) = outcome?;
        Ok(RunReport {
            job_id,
            results,
            resolved,
            timings,
            results_dir: paths.results_dir,
            console_log: paths.console_log,
        })
    }

    async fn steps(&mut self, resolved: ResolvedSet) -> Result<(ResolvedSet, Results), RunError> {
        self.write_io_disk(&resolved).await?;
        self.boot_and_wait().await?;
        let results = self.collect(&resolved).await?;
        Ok((resolved, results))
    }

    /// Writes `job.json` next to the downloaded files and makes the IO disk of them.
    async fn write_io_disk(&mut self, resolved: &ResolvedSet) -> Result<(), RunError> {
        self.clock.start(Stage::IoDisk, "");
        let guest_job = self.guest_job(resolved)?;
        let job_file = self.paths.staging.join(layout::JOB_FILE);
        tokio::fs::write(&job_file, guest_job.to_json_pretty())
            .await
            .map_err(|e| RunError::io(&job_file, e))?;
        let (staging, io_disk) = (self.paths.staging.clone(), self.paths.io_disk.clone());
        let geometry =
            blocking(move || diskhandler::build_io_disk(&staging, &io_disk, None)).await??;
        self.clock
            .finish(&format!("{} MiB", geometry.image_bytes() >> 20));
        Ok(())
    }

    /// The job as the guest reads it, with the hashes of the staged inputs.
    fn guest_job(&self, resolved: &ResolvedSet) -> Result<GuestJob, RunError> {
        let spec = &self.job.spec;
        let guest_job = GuestJob {
            schema_version: JOB_SCHEMA_VERSION,
            job_id: self.job.job_id.clone(),
            attempt: self.job.attempt,
            project_name: spec.project_name.clone(),
            project_version: resolved.distribution.version.clone(),
            recipe_identifier: spec.recipe_identifier.clone(),
            platform_identifier: spec.platform_identifier.clone(),
            platform_variants: spec.platform_variants.clone(),
            recipe: self.plan.recipe.clone(),
            inputs: pyti_guest::job::describe_inputs(&self.paths.staging)?,
            image_hash: Some(self.plan.image.manifest.hash.clone()),
            venv_template: Some(VENV_PATH.to_owned()),
            python: Some(PYTHON_PATH.to_owned()),
        };
        guest_job.validate()?;
        Ok(guest_job)
    }

    /// Reads the results off the IO disk of the powered-off VM, under the caps for
    /// hostile input, and fills in the host's metadata task.
    async fn collect(&mut self, resolved: &ResolvedSet) -> Result<Results, RunError> {
        self.lease.collecting()?;
        self.clock.start(Stage::Collect, "");
        let (io_disk, results_dir) = (self.paths.io_disk.clone(), self.paths.results_dir.clone());
        blocking(move || {
            diskhandler::read_results(
                &io_disk,
                layout::RESULTS_DIR,
                &results_dir,
                &ReadLimits::default(),
            )
        })
        .await??;
        let results = read_results_file(&self.paths.results_dir, &self.paths.console_log)?;
        let results = with_host_metadata(results, resolved);
        self.clock
            .finish(&format!("outcome {}", outcome_name(&results)));
        Ok(results)
    }

    /// Removes what the run made and gives the slot back: released when everything is
    /// gone, marked broken when something could not be removed.
    async fn roll_back(mut self) -> (Vec<(Stage, std::time::Duration)>, RunPaths) {
        self.clock.start(Stage::Rollback, self.lease.name());
        let files = [self.paths.io_disk.as_path(), self.paths.overlay.as_path()];
        let removed = remove_run_leftovers(
            &self.plan.runtime.connection,
            &self.lease,
            files,
            &self.paths.staging,
        )
        .await;
        self.clock.finish("");
        settle_lease(self.lease, removed);
        (self.clock.into_timings(), self.paths)
    }
}

/// Starts from an empty run directory (a retry on this worker reuses the job id).
pub(super) async fn prepare_run_dir(paths: &RunPaths) -> Result<(), RunError> {
    let run_dir = &paths.run_dir;
    match tokio::fs::remove_dir_all(run_dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(RunError::io(run_dir, e)),
    }
    tokio::fs::create_dir_all(&paths.staging)
        .await
        .map_err(|e| RunError::io(&paths.staging, e))
}

/// Resolves the dependency closure and downloads it (or takes it from the cache)
/// into the staging directory, within the worker's download budgets.
pub(super) async fn download(
    manager: &Manager,
    job: &JobRequest,
    paths: &RunPaths,
    clock: &mut StageClock,
    cancel: &CancellationToken,
) -> Result<ResolvedSet, RunError> {
    let spec = &job.spec;
    clock.start(Stage::Download, &spec.requirement());
    let request = match &job.local_distribution {
        Some(path) => pypidownload::Request::local(path.clone()),
        None => pypidownload::Request::from_job(&spec.project_name, &spec.project_version),
    }
    .with_index(manager.config.index_url.clone())
    .with_budgets(manager.config.budgets);
    let resolved = cancellable(
        cancel,
        pypidownload::resolve_and_download(
            &request,
            &TargetEnv::default(),
            &manager.cache,
            Some(&paths.staging),
        ),
    )
    .await??;
    let cached = resolved.files().filter(|f| f.from_cache).count();
    let total = resolved.files().count();
    clock.finish(&format!("{total} files, {cached} from the cache"));
    Ok(resolved)
}

/// Removes what a run in `lease`'s slot made: the VM (destroyed if it still runs),
/// `files` (the IO disk and the overlay) and the `staging` copy; whatever step the run
/// stopped at, nothing else is left. The results stay.
async fn remove_run_leftovers(
    connection: &Connection,
    lease: &SlotLease,
    files: [&Path; 2],
    staging: &Path,
) -> Result<(), RunError> {
    if lease.state() != SlotState::RollingBack {
        lease.rolling_back()?;
    }
    let slot = lease.name();
    let failed = |detail: String| RunError::Rollback {
        slot: slot.to_owned(),
        detail,
    };
    VirtualMachine::attach(connection, slot)
        .undefine()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if connection.domain_names().await?.iter().any(|n| n == slot) {
        return Err(failed("the domain is still defined".into()));
    }
    for path in files {
        match tokio::fs::remove_file(path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RunError::io(path, e)),
        }
    }
    // The staging copy is only disk space, never a reason to break the slot.
    match tokio::fs::remove_dir_all(staging).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            warn!(path = %staging.display(), %error, "The IO disk's staging copy could not be removed")
        }
    }
    Ok(())
}

/// Gives the slot back after a rollback: released when everything was `removed`,
/// marked broken with the reason when something was not.
fn settle_lease(lease: SlotLease, removed: Result<(), RunError>) {
    let slot = lease.name().to_owned();
    match removed {
        Ok(()) => {
            if let Err(error) = lease.release() {
                warn!(%slot, %error, "Releasing the VM slot failed; it is marked broken");
            }
        }
        Err(error) => {
            warn!(%slot, %error, "Rolling back failed; the VM slot is marked broken");
            lease.mark_broken(&error.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stateofvm::SlotPool;
    use crate::vms::{DiskSpec, VmConfig};

    async fn running_vm(connection: &Connection, name: &str) -> VirtualMachine {
        let mut config = VmConfig::new(name);
        config.memory_mib = 256;
        config.hard_disk = Some(DiskSpec::new(format!("/nonexistent/{name}.qcow2")));
        let vm = VirtualMachine::define(connection, &config).await.unwrap();
        vm.start().await.unwrap();
        vm
    }

    #[tokio::test]
    async fn rollback_releases_the_slot_or_breaks_it_when_something_stays() {
        let connection = Connection::open("test:///default").await.unwrap();
        let pool = SlotPool::new([("pyti-unit-rollback-0", "p")]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (io_disk, overlay, staging) = (
            dir.path().join("io.img"),
            dir.path().join("overlay.qcow2"),
            dir.path().join("io"),
        );

        // A run that got as far as a running VM: everything goes, the slot is ready.
        let lease = pool.acquire("p", "job-1").unwrap();
        running_vm(&connection, lease.name()).await;
        lease.running().unwrap();
        for file in [&io_disk, &overlay] {
            std::fs::write(file, b"disk").unwrap();
        }
        std::fs::create_dir_all(staging.join("dist")).unwrap();
        let removed =
            remove_run_leftovers(&connection, &lease, [&io_disk, &overlay], &staging).await;
        settle_lease(lease, removed);
        let slot = &pool.slots()[0];
        assert_eq!(
            (slot.state, slot.job_id.as_deref()),
            (SlotState::Ready, None)
        );
        assert!(!connection
            .domain_names()
            .await
            .unwrap()
            .contains(&slot.name));
        assert!(!io_disk.exists() && !overlay.exists() && !staging.exists());

        // Something that cannot be removed (a directory where the IO disk was): the
        // slot is broken, with the reason, and not handed out again.
        let lease = pool.acquire("p", "job-2").unwrap();
        std::fs::create_dir_all(io_disk.join("stuck")).unwrap();
        let removed =
            remove_run_leftovers(&connection, &lease, [&io_disk, &overlay], &staging).await;
        settle_lease(lease, removed);
        let slot = &pool.slots()[0];
        assert_eq!(slot.state, SlotState::Broken);
        assert!(
            slot.error.as_deref().unwrap().contains("io.img"),
            "{:?}",
            slot.error
        );
        assert!(pool.acquire("p", "job-3").is_err());
    }
}
