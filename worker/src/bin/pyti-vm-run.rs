//! `pyti-vm-run`: tests distributions in VMs on this machine, with no master and no
//! RabbitMQ, through the same pipeline the worker daemon uses.
//!
//! Exit codes: 0 every job passed; 1 a distribution failed (its own fault: install,
//! import, tests, behaviour, quality, or it cannot be resolved); 2 the command line or
//! a job file is wrong; 3 the infrastructure failed (VM, image, disk, index
//! unreachable); 130 interrupted (everything was cleaned up).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use pyti::model::JobSpec;
use pyti_guest::recipe::RecipeBook;
use pyti_worker::config::WorkerConfig;
use pyti_worker::manager::{FailureKind, JobRequest, Manager, RunError, RunReport};
use pyti_worker::progress::{Progress, Stage};
use pyti_worker::stateofvm::SlotPool;
use pyti_worker::summary;
use tokio_util::sync::CancellationToken;

const EXIT_PACKAGE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INFRASTRUCTURE: u8 = 3;
const EXIT_INTERRUPTED: u8 = 130;

/// Test Python distributions from PyPI in throw-away VMs on this machine.
#[derive(Debug, Parser)]
#[command(
    name = "pyti-vm-run",
    version,
    after_help = "Exit codes: 0 all passed, 1 a distribution failed, 2 bad input, 3 infrastructure error, 130 interrupted."
)]
struct Cli {
    /// What to test: NAME, NAME==VERSION, a job JSON file, or a local sdist or wheel
    /// (its dependencies come from the index).
    targets: Vec<String>,
    /// A job JSON file in the seed's format (repeatable).
    #[arg(long = "target", value_name = "FILE")]
    target_files: Vec<PathBuf>,
    /// Worker configuration (the seed's pyti_config); defaults apply without it.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Recipe for NAME[==VERSION] targets (default: recipe, the full one).
    #[arg(long)]
    recipe: Option<String>,
    /// Platform for NAME[==VERSION] targets (default: linux-debian).
    #[arg(long)]
    platform: Option<String>,
    /// Platform variant for NAME[==VERSION] targets (repeatable).
    #[arg(long = "variant")]
    variants: Vec<String>,
    /// Print the results dict (JSON) instead of the summary; an array for several targets.
    #[arg(long)]
    json: bool,
    /// Keep the results and logs here (a directory per target when there are several).
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// The static pyti-guest binary for the guest image (default: next to this program).
    #[arg(long, value_name = "FILE")]
    agent: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var(
            "RUST_LOG",
            "warn,pyti_worker::image=info,pyti_worker::manager=info",
        );
    }
    pyti::telemetry::init(false);
    let jobs = match jobs_from(&cli) {
        Ok(jobs) => jobs,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(cli, jobs).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_INFRASTRUCTURE)
        }
    }
}

/// The jobs the command line asks for, checked before anything starts.
/// A job and, for a local sdist or wheel, its file.
type Target = (JobSpec, Option<PathBuf>);

fn jobs_from(cli: &Cli) -> anyhow::Result<Vec<Target>> {
    let (recipe, platform) = (cli.recipe.as_deref(), cli.platform.as_deref());
    let mut jobs = Vec::new();
    for target in &cli.targets {
        if let Some(path) =
            pyti_worker::pypidownload::Request::from_argument(target).local_distribution
        {
            let local = pyti_worker::pypidownload::local_distribution_metadata(&path)?;
            let requirement = format!("{}=={}", local.name, local.version);
            jobs.push((
                JobSpec::from_requirement(&requirement, recipe, platform, &cli.variants)?,
                Some(path),
            ));
        } else if target.ends_with(".json") || Path::new(target).is_file() {
            jobs.push((read_job(Path::new(target))?, None));
        } else {
            jobs.push((
                JobSpec::from_requirement(target, recipe, platform, &cli.variants)?,
                None,
            ));
        }
    }
    for file in &cli.target_files {
        jobs.push((read_job(file)?, None));
    }
    anyhow::ensure!(
        !jobs.is_empty(),
        "nothing to test: give NAME[==VERSION] or --target FILE (e.g. pyti-vm-run rarfile==4.2)"
    );
    Ok(jobs)
}

fn read_job(path: &Path) -> anyhow::Result<JobSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read job file {}", path.display()))?;
    Ok(JobSpec::from_json(&text, &path.display().to_string())?)
}

async fn run(cli: Cli, jobs: Vec<Target>) -> anyhow::Result<u8> {
    let mut config = WorkerConfig::load(cli.config.as_deref())?;
    // Each pyti-vm-run gets its own slot names, so two runs (or a worker daemon) on one
    // host never touch each other's VMs.
    config.worker_id = format!("vmrun{}", std::process::id());
    let config = Arc::new(config);
    let connection_uris: Vec<String> = config
        .platforms
        .iter()
        .map(|p| p.hypervisor.clone())
        .collect();
    for uri in &connection_uris {
        remove_dead_runs(uri, &config.root).await?;
    }
    let recipes = match config_dir(cli.config.as_deref()) {
        Some(dir) => RecipeBook::with_overrides(&dir)?,
        None => RecipeBook::embedded(),
    };
    for (job, _) in &jobs {
        if let Err(error) = recipes.get(&job.recipe_identifier) {
            eprintln!("error: {}: {error}", job.requirement());
            return Ok(EXIT_USAGE);
        }
    }
    let pool = SlotPool::new(config.slot_names())?;
    let cancel = CancellationToken::new();
    // Owned here: returning early drops the set, which stops listening for Ctrl-C.
    let mut interrupt = tokio::task::JoinSet::new();
    {
        let cancel = cancel.clone();
        interrupt.spawn(async move {
            pyti::grpc::shutdown_signal().await;
            eprintln!("interrupted: stopping the VMs and cleaning up");
            cancel.cancel();
        });
    }
    let manager = tokio::select! {
        manager = Manager::start(Arc::clone(&config), pool, recipes, cli.agent.as_deref()) => Arc::new(manager?),
        () = cancel.cancelled() => return Ok(EXIT_INTERRUPTED),
    };

    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let mut names = std::collections::HashMap::new();
    let mut runs = tokio::task::JoinSet::new();
    for (spec, local_distribution) in jobs {
        let job = JobRequest {
            job_id: uuid::Uuid::new_v4().to_string(),
            attempt: 1,
            spec,
            local_distribution,
        };
        names.insert(job.job_id.clone(), job.spec.requirement());
        let (manager, sender, cancel) = (Arc::clone(&manager), sender.clone(), cancel.clone());
        runs.spawn(async move {
            let progress = Some(sender);
            // The download holds no slot: several targets download at once and
            // take the slots as they are ready.
            let result = async {
                let mut prepared = manager.prepare(&job, progress, &cancel).await?;
                let lease = manager.slot_for(&job, &mut prepared, &cancel).await?;
                manager.run_prepared(&job, prepared, lease, cancel).await
            }
            .await;
            (job, result)
        });
    }
    drop(sender);
    let mut printer = tokio::task::JoinSet::new();
    printer.spawn(async move {
        while let Some(event) = receiver.recv().await {
            print_progress(&names, &event);
        }
    });

    let mut finished = Vec::new();
    while let Some(joined) = runs.join_next().await {
        finished.push(joined.context("a job task failed")?);
    }
    if let Some(Err(error)) = printer.join_next().await {
        eprintln!("warning: the progress printer failed: {error}");
    }
    interrupt.abort_all();
    report(&cli, &config.root, finished, cancel.is_cancelled())
}

/// Prints the summaries (or JSON), keeps `--output`, removes run directories, and
/// decides the exit code.
fn report(
    cli: &Cli,
    root: &Path,
    finished: Vec<(JobRequest, Result<RunReport, RunError>)>,
    interrupted: bool,
) -> anyhow::Result<u8> {
    let several = finished.len() > 1;
    let mut code = 0u8;
    let mut json = Vec::new();
    for (job, result) in finished {
        let title = format!(
            "{} ({}, {})",
            job.spec.requirement(),
            job.spec.recipe_identifier,
            job.spec.platform_identifier
        );
        match &result {
            Ok(report) => {
                let tested = format!(
                    "{}=={}",
                    report.resolved.distribution.name, report.resolved.distribution.version
                );
                let title = format!(
                    "{tested} ({}, {})",
                    job.spec.recipe_identifier, job.spec.platform_identifier
                );
                if cli.json {
                    json.push(serde_json::to_value(&report.results)?);
                } else {
                    print!(
                        "{}",
                        summary::render(&title, &report.results, &report.timings)
                    );
                }
                if !summary::all_passed(&report.results) {
                    let farm = report.results.outcome.is_farm_fault();
                    code = code.max(if farm {
                        EXIT_INFRASTRUCTURE
                    } else {
                        EXIT_PACKAGE
                    });
                }
                if let Some(output) = &cli.output {
                    let dest = if several {
                        output.join(tested.replace("==", "-"))
                    } else {
                        output.clone()
                    };
                    copy_tree(&report.results_dir, &dest)?;
                    let console = dest.join(pyti_guest::layout::CONSOLE_LOG);
                    if let Err(error) = std::fs::copy(&report.console_log, &console) {
                        eprintln!("warning: cannot write {}: {error}", console.display());
                    }
                }
            }
            Err(error) => {
                let kind = error.kind();
                eprintln!("{title}: {error}");
                code = code.max(match kind {
                    FailureKind::Package => EXIT_PACKAGE,
                    FailureKind::Request => EXIT_USAGE,
                    FailureKind::Farm => EXIT_INFRASTRUCTURE,
                    FailureKind::Cancelled => EXIT_INTERRUPTED,
                });
            }
        }
        let run_dir = root.join("runs").join(&job.job_id);
        match std::fs::remove_dir_all(&run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: cannot remove {}: {e}", run_dir.display()),
        }
    }
    if cli.json {
        let value = if several {
            serde_json::Value::Array(json)
        } else {
            json.pop().unwrap_or_default()
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(if interrupted { EXIT_INTERRUPTED } else { code })
}

fn print_progress(names: &std::collections::HashMap<String, String>, event: &Progress) {
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_owned());
    match event {
        Progress::StageStarted {
            job_id,
            stage,
            detail,
        } => match stage {
            Stage::Download => eprintln!("[{}] resolving and downloading {detail}", name(job_id)),
            Stage::IoDisk => eprintln!("[{}] building the IO disk", name(job_id)),
            Stage::Boot => eprintln!("[{}] booting VM {detail}", name(job_id)),
            Stage::Collect => eprintln!("[{}] reading the results", name(job_id)),
            Stage::Rollback => eprintln!("[{}] rolling the VM back", name(job_id)),
            Stage::WaitingForSlot | Stage::Tasks => {}
        },
        Progress::StageFinished {
            job_id,
            stage,
            elapsed,
            detail,
        } => {
            if *stage != Stage::WaitingForSlot || elapsed.as_secs_f64() > 1.0 {
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                eprintln!(
                    "[{}] {} done in {:.1}s{detail}",
                    name(job_id),
                    stage.as_str(),
                    elapsed.as_secs_f64()
                );
            }
        }
        Progress::TaskStarted { job_id, task } => {
            eprintln!("[{}]   task {task} started", name(job_id))
        }
        Progress::TaskFinished {
            job_id,
            task,
            status,
            seconds,
        } => {
            eprintln!("[{}]   task {task} {status} in {seconds:.1}s", name(job_id));
        }
    }
}

/// Removes domains and overlays left by pyti-vm-run processes that no longer exist
/// (killed with SIGKILL: nothing else can leave them).
async fn remove_dead_runs(uri: &str, root: &Path) -> anyhow::Result<()> {
    let connection = pyti_worker::vms::Connection::open(uri).await?;
    let mut dead = std::collections::BTreeSet::new();
    for name in connection.domain_names().await? {
        if let Some(pid) = name
            .strip_prefix("pyti-vmrun")
            .and_then(|rest| rest.split('-').next())
        {
            if !Path::new("/proc").join(pid).exists() {
                dead.insert(format!("pyti-vmrun{pid}-"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.join("overlays")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("pyti-vmrun")
                .and_then(|rest| rest.split('-').next())
            {
                if !Path::new("/proc").join(pid).exists() {
                    dead.insert(format!("pyti-vmrun{pid}-"));
                }
            }
        }
    }
    for prefix in dead {
        let leftovers =
            pyti_worker::vms::cleanup_leftovers(&connection, &root.join("overlays"), &prefix)
                .await?;
        tracing::warn!(prefix, domains = ?leftovers.domains, overlays = leftovers.overlays.len(), "Removed what a killed run left");
    }
    Ok(())
}

fn config_dir(config: Option<&Path>) -> Option<PathBuf> {
    let dir = config?.parent()?.join("recipes");
    dir.is_dir().then_some(dir)
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
    }
    Ok(())
}
