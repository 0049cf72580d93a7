//! The agent: run a job's recipe and always leave a results file.
//!
//! Inside the VM nobody is watching: if the agent stops without `results/results.json`
//! the host only learns "no results" after a deadline. So [`run`] turns every failure
//! (unreadable job, mismatching input, a task that panics or hangs) into a result, and
//! [`run_and_write`] writes it whatever happened. Tasks run in recipe order, each with
//! its own deadline and log; one task's failure never stops the next.

mod checks;
pub mod env;
pub mod parse;
pub mod process;
pub mod sandbox;
pub mod snapshot;
mod tasks;
mod traps;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::digest::sha256_file;
use crate::job::{GuestJob, JobIdentity};
use crate::layout;
use crate::recipe::TaskKind;
use crate::results::{
    decide_outcome, GuestPlatform, InputCheck, Outcome, Results, TaskResult, TaskStatus,
    RESULTS_SCHEMA_VERSION,
};

/// How the agent runs: where the IO disk is and what it may use.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The IO disk's root (`/io` in the VM, any directory on a host).
    pub io_dir: PathBuf,
    /// Scratch space for environments, extracted sources and traces (wiped first).
    pub work_dir: PathBuf,
    /// A ready virtualenv to copy per task (overrides `job.json`).
    pub venv_template: Option<PathBuf>,
    /// The interpreter for `python -m venv` and helpers (overrides `job.json`).
    pub python: Option<PathBuf>,
    /// `HOME` for everything the agent runs.
    pub home: PathBuf,
    /// Roots of the install task's file-system snapshot (empty: the VM defaults).
    pub snapshot_roots: Vec<PathBuf>,
    /// The strace binary.
    pub strace: PathBuf,
    /// Run package code in the sandbox (its own user and cgroup, a per-job identity):
    /// what a VM does; a host run (trusted fixtures only) runs it as the caller.
    pub sandbox: bool,
}

impl AgentOptions {
    /// Options for an IO directory with the VM defaults: work in `/var/tmp/pyti-work`,
    /// `HOME` from the environment (else `/root`), strace from `PATH`.
    pub fn for_io_dir(io_dir: &Path) -> AgentOptions {
        AgentOptions {
            io_dir: io_dir.to_path_buf(),
            work_dir: PathBuf::from("/var/tmp/pyti-work"),
            venv_template: None,
            python: None,
            home: std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from),
            snapshot_roots: Vec::new(),
            strace: PathBuf::from("strace"),
            sandbox: false,
        }
    }
}

/// Runs the job on the IO disk and returns its results (never panics).
pub fn run(options: &AgentOptions) -> Results {
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| run_job(options, started)));
    match outcome {
        Ok(results) => results,
        Err(panic) => failed_run(
            None,
            Outcome::AgentError,
            format!("the agent panicked: {}", panic_text(&panic)),
            started,
        ),
    }
}

/// Runs the job and writes `results/results.json`; the returned error is about writing
/// the file only (the caller has nothing better to do than report it and exit non-zero).
pub fn run_and_write(options: &AgentOptions) -> std::io::Result<Results> {
    let results = run(options);
    write_results(&options.io_dir, &results)?;
    Ok(results)
}

/// Writes `results/results.json` via a temporary file and a rename.
pub fn write_results(io_dir: &Path, results: &Results) -> std::io::Result<()> {
    let dir = layout::results_dir(io_dir);
    std::fs::create_dir_all(&dir)?;
    let text = serde_json::to_vec_pretty(results).map_err(std::io::Error::other)?;
    let temporary = dir.join(format!("{}.tmp", layout::RESULTS_FILE));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, dir.join(layout::RESULTS_FILE))
}

/// Most bytes of a task's log copied onto the IO disk; the rest is cut with a note.
pub const MAX_LOG_BYTES: u64 = 8 << 20;

/// Copies at most `cap` bytes of `from` to `to`, noting a cut. Logs are written in the
/// work directory and copied at the end of a task so a package that floods its output
/// cannot fill the IO disk before the results are written.
pub fn copy_capped(from: &Path, to: &Path, cap: u64) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let total = std::fs::metadata(from)?.len();
    let mut input = std::fs::File::open(from)?.take(cap);
    let mut output = std::fs::File::create(to)?;
    std::io::copy(&mut input, &mut output)?;
    if total > cap {
        writeln!(output, "\n# log cut at {cap} of {total} bytes")?;
    }
    Ok(())
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

fn unknown_job() -> JobIdentity {
    JobIdentity {
        job_id: "unknown".into(),
        attempt: 0,
        project_name: "unknown".into(),
        project_version: String::new(),
        recipe_identifier: "unknown".into(),
        platform_identifier: "unknown".into(),
        platform_variants: Vec::new(),
    }
}

fn platform(job: Option<&GuestJob>, python: Option<&Path>) -> GuestPlatform {
    GuestPlatform {
        python_version: python.and_then(env::python_version),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string()),
        machine: std::env::consts::ARCH.to_string(),
        image_hash: job.and_then(|j| j.image_hash.clone()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        cpu: crate::cpu::current(),
    }
}

fn failed_run(
    job: Option<&GuestJob>,
    outcome: Outcome,
    detail: String,
    started: Instant,
) -> Results {
    Results {
        schema_version: RESULTS_SCHEMA_VERSION,
        job: job.map_or_else(unknown_job, GuestJob::identity),
        platform: platform(job, None),
        inputs: Vec::new(),
        tasks: Vec::new(),
        outcome,
        outcome_detail: detail,
        duration_s: started.elapsed().as_secs_f64(),
        nonce: job.and_then(|j| j.nonce.clone()),
    }
}

fn check_inputs(io_dir: &Path, job: &GuestJob) -> Vec<InputCheck> {
    job.inputs
        .iter()
        .map(|input| InputCheck {
            path: input.path.clone(),
            role: input.role,
            sha256: input.sha256.clone(),
            verified: sha256_file(&io_dir.join(&input.path)).is_ok_and(|h| h == input.sha256),
        })
        .collect()
}

fn run_job(options: &AgentOptions, started: Instant) -> Results {
    let job = match GuestJob::read(&options.io_dir) {
        Ok(job) => job,
        Err(error) => return failed_run(None, Outcome::DiskError, error.to_string(), started),
    };
    let inputs = check_inputs(&options.io_dir, &job);
    let logs = layout::results_dir(&options.io_dir).join(layout::LOGS_DIR);
    let prepared = std::fs::create_dir_all(&logs).and_then(|()| env::fresh_dir(&options.work_dir));
    if let Err(error) = prepared {
        let detail = format!(
            "cannot prepare {} or {}: {error}",
            logs.display(),
            options.work_dir.display()
        );
        return failed_run(Some(&job), Outcome::DiskError, detail, started);
    }
    let python = options
        .python
        .clone()
        .or_else(|| job.python.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let mut results = Results {
        schema_version: RESULTS_SCHEMA_VERSION,
        job: job.identity(),
        platform: platform(Some(&job), Some(&python)),
        inputs,
        tasks: Vec::new(),
        outcome: Outcome::Passed,
        outcome_detail: String::new(),
        duration_s: 0.0,
        nonce: job.nonce.clone(),
    };
    if let Some(bad) = results.inputs.iter().find(|input| !input.verified) {
        results.outcome = Outcome::InputMismatch;
        results.outcome_detail = format!(
            "{} is missing or does not hash to the sha256 in job.json; no task was run",
            bad.path
        );
        results.duration_s = started.elapsed().as_secs_f64();
        return results;
    }
    let inputs_root = match enter_sandbox(options, &job) {
        Ok(root) => root,
        Err(error) => {
            let detail = format!("cannot prepare the sandbox for package code: {error}");
            return failed_run(Some(&job), Outcome::AgentError, detail, started);
        }
    };
    let mut signer = ProgressSigner::new(job.nonce.clone());
    let mut context = tasks::TaskContext::new(options, &job, python, inputs_root);
    for spec in &job.recipe.tasks {
        let task_started = Instant::now();
        let log_name = layout::task_log(spec.kind.as_str());
        let log_path = layout::results_dir(&options.io_dir).join(&log_name);
        let work_log = options.work_dir.join(format!("{}.log", spec.kind));
        signer.say(&format!("task {} started", spec.kind));
        let ran = catch_unwind(AssertUnwindSafe(|| context.run_task(spec, &work_log)));
        if work_log.exists() {
            if let Err(error) = copy_capped(&work_log, &log_path, MAX_LOG_BYTES) {
                results.tasks.push(TaskResult {
                    name: spec.kind,
                    status: TaskStatus::Error,
                    duration_s: task_started.elapsed().as_secs_f64(),
                    timeout_s: spec.timeout_s,
                    log: None,
                    message: format!("cannot write {}: {error}", log_path.display()),
                    metrics: None,
                    platform_fault: None,
                    package_fault: None,
                });
                continue;
            }
        }
        let output = match ran {
            Ok(output) => output,
            Err(panic) => tasks::TaskOutput::error(format!(
                "the agent panicked in this task: {}",
                panic_text(&panic)
            )),
        };
        results.tasks.push(TaskResult {
            name: spec.kind,
            status: output.status,
            duration_s: task_started.elapsed().as_secs_f64(),
            timeout_s: spec.timeout_s,
            log: log_path.exists().then_some(log_name),
            message: output.message,
            metrics: output.metrics,
            platform_fault: output.platform_fault,
            package_fault: output.package_fault,
        });
        signer.say(&format!(
            "task {} {} {:.1}s",
            spec.kind,
            output.status.as_str(),
            task_started.elapsed().as_secs_f64()
        ));
    }
    add_late_phases(&context, &mut results.tasks);
    let (outcome, detail) = decide_outcome(&results.tasks);
    results.outcome = outcome;
    results.outcome_detail = detail;
    results.duration_s = started.elapsed().as_secs_f64();
    results
}

/// Puts the phases traced after the behaviour task (the test suite) into its report,
/// so what a package does only in its tests gets a verdict too.
fn add_late_phases(context: &tasks::TaskContext<'_>, tasks: &mut [TaskResult]) {
    use crate::behaviour::Verdict;
    use crate::results::TaskMetrics;
    let Some(analysed) = context.analysed else {
        return;
    };
    if context.traces.len() == analysed {
        return;
    }
    let Some(task) = tasks.iter_mut().find(|t| t.name == TaskKind::Behaviour) else {
        return;
    };
    let Ok((report, summary)) = context.analyse() else {
        return;
    };
    if task.status == TaskStatus::Passed && report.verdict != Verdict::Clean {
        task.status = TaskStatus::Failed;
    }
    if matches!(task.status, TaskStatus::Passed | TaskStatus::Failed) {
        task.message = summary;
    }
    task.metrics = Some(TaskMetrics::Behaviour(report));
}

/// Prefix of the progress lines the agent writes to stderr (the VM's console), which the
/// host follows to show each task as it starts and ends.
pub const PROGRESS_PREFIX: &str = "pyti-guest: ";

/// Writes the agent's progress lines (`pyti-guest: task install started`,
/// `pyti-guest: task install passed 4.2s`), each followed by ` ~<seq>:<mac>` when the
/// job has a nonce: the host believes only lines whose MAC it can check, in order.
pub struct ProgressSigner {
    nonce: Option<String>,
    seq: u64,
}

impl ProgressSigner {
    /// A signer for a job with `nonce` (none: lines go unsigned).
    pub fn new(nonce: Option<String>) -> Self {
        ProgressSigner { nonce, seq: 0 }
    }

    /// The next line, signed.
    pub fn line(&mut self, text: &str) -> String {
        self.seq += 1;
        match &self.nonce {
            Some(nonce) => format!(
                "{PROGRESS_PREFIX}{text} ~{}:{}",
                self.seq,
                crate::digest::progress_mac(nonce, self.seq, text)
            ),
            None => format!("{PROGRESS_PREFIX}{text}"),
        }
    }

    fn say(&mut self, text: &str) {
        let line = self.line(text);
        eprintln!("{line}");
    }
}

/// In a VM: sets up the sandbox and copies the inputs where package code may read them
/// (the IO disk is the agent's alone). Returns where the inputs are.
fn enter_sandbox(options: &AgentOptions, job: &GuestJob) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if !options.sandbox {
        return Ok(options.io_dir.clone());
    }
    let identity = sandbox::Identity::from_seed(&sandbox::random_bytes(16)?);
    sandbox::Sandbox::install(identity)?;
    let public = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(&options.work_dir, public.clone())?;
    let root = options.work_dir.join("inputs");
    for input in &job.inputs {
        let to = root.join(&input.path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(options.io_dir.join(&input.path), &to)?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
    }
    for dir in layout::INPUT_DIRS {
        let dir = root.join(dir);
        if dir.is_dir() {
            std::fs::set_permissions(&dir, public.clone())?;
        }
    }
    if root.is_dir() {
        std::fs::set_permissions(&root, public)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_copied_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from.log");
        std::fs::write(&from, "0123456789").unwrap();
        copy_capped(&from, &dir.path().join("whole.log"), 10).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("whole.log")).unwrap(),
            "0123456789"
        );
        copy_capped(&from, &dir.path().join("cut.log"), 4).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cut.log")).unwrap(),
            "0123\n# log cut at 4 of 10 bytes\n"
        );
    }
}
