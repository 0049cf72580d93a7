//! The VM part of a run: define the slot's VM on a fresh overlay, boot it, follow its
//! console, and wait (with the platform's deadline) until the guest powers itself off.
//! The VM stays defined, and the overlay in place, until the run rolls back: removing
//! them is the rollback's one job, so it is done in one place.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::job_run::JobRun;
use super::RunError;
use crate::progress::{emit, follow_console, Progress, ProgressSender, Stage};
use crate::vms::{DiskSpec, Overlay, VirtualMachine, VmConfig, VmError};

/// How long a VM gets for an ACPI shutdown before it is destroyed on cancel.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl JobRun<'_> {
    /// Boots the slot's VM from a clean overlay and waits until the guest powered off
    /// (the agent ran the recipe) or the deadline or a cancel stopped it.
    pub(super) async fn boot_and_wait(&mut self) -> Result<(), RunError> {
        self.clock.start(Stage::Boot, self.lease.name());
        let vm = self.define_vm().await?;
        self.lease.running()?;
        let started = Instant::now();
        vm.start().await.map_err(RunError::Boot)?;
        let follower = ConsoleFollower::spawn(self, started);
        let waited = self.wait_for_poweroff(&vm).await;
        let agent_started = follower.stop(&self.job.job_id).await;
        self.record_boot(started, agent_started);
        let console_log = self.paths.console_log.clone();
        match waited {
            Some(Err(VmError::Timeout { .. })) => Err(RunError::Deadline {
                seconds: self.plan.runtime.config.run_timeout_s,
                console_log,
            }),
            Some(Err(other)) => Err(other.into()),
            None => Err(RunError::Cancelled),
            Some(Ok(())) if agent_started.is_none() => Err(RunError::NoAgent { console_log }),
            Some(Ok(())) => Ok(()),
        }
    }

    /// Defines the slot's VM: a fresh overlay on the image's base, the IO disk, direct
    /// kernel boot, the console logged to the run directory.
    async fn define_vm(&self) -> Result<VirtualMachine, RunError> {
        let overlays = self.paths.overlay.parent().unwrap_or(&self.paths.run_dir);
        tokio::fs::create_dir_all(overlays)
            .await
            .map_err(|e| RunError::io(overlays, e))?;
        let image = self.plan.image;
        let overlay = Overlay::create(&image.base(), &self.paths.overlay).await?;
        let platform = &self.plan.runtime.config;
        let mut config = VmConfig::new(self.lease.name());
        config.memory_mib = u64::from(platform.memory_mib);
        config.vcpus = platform.vcpus;
        config.hard_disk = Some(DiskSpec::overlay(&overlay.path, &overlay.base));
        config.extra_disks = vec![DiskSpec::new(&self.paths.io_disk)];
        config.kernel = Some(image.direct_boot(false));
        config.serial_log = Some(self.paths.console_log.clone());
        config.accelerator = platform.accel;
        Ok(VirtualMachine::define(&self.plan.runtime.connection, &config).await?)
    }

    /// The wait's end: `Some` when the guest powered off or the deadline passed (the
    /// VM is then destroyed), `None` when the job was cancelled (the VM is stopped).
    async fn wait_for_poweroff(&self, vm: &VirtualMachine) -> Option<Result<(), VmError>> {
        let timeout = Duration::from_secs(u64::from(self.plan.runtime.config.run_timeout_s));
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::select! {
            waited = vm.wait_for_poweroff(deadline) => Some(waited),
            () = self.cancel.cancelled() => {
                if let Err(error) = vm.stop(STOP_GRACE).await {
                    // The rollback destroys and undefines it anyway.
                    warn!(vm = %vm.name(), %error, "Stopping the cancelled job's VM failed");
                }
                None
            }
        }
    }

    /// Keeps the boot and task times: boot ends when the agent started (as the console
    /// said), the tasks when the VM powered off.
    fn record_boot(&mut self, started: Instant, agent_started: Option<Instant>) {
        let powered_off = Instant::now();
        match agent_started {
            Some(at) => {
                // The console follower reported the end of boot as it happened.
                self.clock.record(Stage::Boot, at - started);
                self.clock
                    .finish_with(Stage::Tasks, powered_off - at, "VM powered off");
            }
            None => self.clock.finish_with(
                Stage::Boot,
                powered_off - started,
                "the agent never started",
            ),
        }
    }
}

/// Follows the guest's console while the VM runs: task progress, and the moment the
/// init starts the agent (the end of boot).
struct ConsoleFollower {
    stop: CancellationToken,
    agent_started: Arc<OnceLock<Instant>>,
    /// The following task: a follower dropped without [`ConsoleFollower::stop`] (its
    /// run's future dropped) aborts it rather than leave it following forever.
    task: JoinSet<()>,
}

impl ConsoleFollower {
    /// Starts following `run`'s console log; boot began at `started`.
    fn spawn(run: &JobRun<'_>, started: Instant) -> Self {
        let stop = CancellationToken::new();
        let agent_started = Arc::new(OnceLock::new());
        let path = run.paths.console_log.clone();
        let job_id = run.job.job_id.clone();
        let sender = run.clock.progress().clone();
        let trail = Arc::clone(&run.trail);
        let mut task = JoinSet::new();
        task.spawn({
            let (stop, agent_started) = (stop.clone(), Arc::clone(&agent_started));
            async move {
                let events = sender.clone();
                let id = job_id.clone();
                follow_console(&path, &job_id, sender, stop, trail, move || {
                    if agent_started.set(Instant::now()).is_ok() {
                        agent_started_events(&events, &id, started.elapsed());
                    }
                })
                .await;
            }
        });
        Self {
            stop,
            agent_started,
            task,
        }
    }

    /// Stops following; when the agent started, if it did.
    async fn stop(mut self, job_id: &str) -> Option<Instant> {
        self.stop.cancel();
        if let Some(Err(error)) = self.task.join_next().await {
            warn!(%job_id, %error, "The console follower failed; task progress may be incomplete");
        }
        self.agent_started.get().copied()
    }
}

/// Boot finished after `elapsed`, the tasks start: what the console says when the init
/// starts the agent.
fn agent_started_events(events: &ProgressSender, job_id: &str, elapsed: Duration) {
    emit(
        events,
        Progress::StageFinished {
            job_id: job_id.to_owned(),
            stage: Stage::Boot,
            elapsed,
            detail: "agent started".into(),
        },
    );
    emit(
        events,
        Progress::StageStarted {
            job_id: job_id.to_owned(),
            stage: Stage::Tasks,
            detail: String::new(),
        },
    );
}
