//! `pyti`: the command line for a PyTI farm (submit, jobs, workers) and for job files
//! (validate).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pyti::model::JobSpec;
use pyti::proto::job_service_client::JobServiceClient;
use pyti::proto::worker_registry_client::WorkerRegistryClient;
use pyti::proto::{self, JobState};

/// Test Python distributions from PyPI in isolated virtual machines.
#[derive(Debug, Parser)]
#[command(name = "pyti", version)]
struct Cli {
    /// The master's gRPC address.
    #[arg(
        long,
        global = true,
        env = "PYTI_MASTER",
        default_value = "http://127.0.0.1:50051"
    )]
    master: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a job file locally; print the normalised job, or every error found.
    Validate {
        /// Job JSON file (`-` for standard input).
        file: PathBuf,
    },
    /// Submit a job: a job JSON file, or NAME[==VERSION].
    Submit {
        /// Job JSON file, or a requirement like `rarfile==4.2`.
        job: String,
        /// Recipe, when the job is given as NAME[==VERSION].
        #[arg(long)]
        recipe: Option<String>,
        /// Platform, when the job is given as NAME[==VERSION].
        #[arg(long)]
        platform: Option<String>,
        /// Platform variant (repeatable), when the job is given as NAME[==VERSION].
        #[arg(long = "variant")]
        variants: Vec<String>,
        /// Queue the job even if no registered worker offers its platform and variants.
        #[arg(long)]
        queue_anyway: bool,
    },
    /// List jobs.
    Jobs {
        /// Only jobs of this project.
        #[arg(long)]
        project: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// List workers and their VM capacity.
    Workers,
}

#[tokio::main]
async fn main() -> ExitCode {
    pyti::telemetry::init(false);
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { file } => Ok(validate(&file)),
        Command::Submit {
            job,
            recipe,
            platform,
            variants,
            queue_anyway,
        } => {
            let spec = if Path::new(&job).is_file() || job.ends_with(".json") || job == "-" {
                read_job(Path::new(&job))?
            } else {
                JobSpec::from_requirement(&job, recipe.as_deref(), platform.as_deref(), &variants)?
            };
            let mut client = JobServiceClient::connect(cli.master.clone())
                .await
                .with_context(|| format!("cannot reach the master at {}", cli.master))?;
            let response = client
                .submit_job(proto::SubmitJobRequest {
                    spec: Some(spec.into()),
                    queue_without_capacity: queue_anyway,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let job = response.job.context("the master answered without a job")?;
            println!("{}  {}", job.job_id, state_name(job.state));
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { project, limit } => {
            let mut client = JobServiceClient::connect(cli.master.clone())
                .await
                .with_context(|| format!("cannot reach the master at {}", cli.master))?;
            let response = client
                .list_jobs(proto::ListJobsRequest {
                    project_name: project.unwrap_or_default(),
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{:<36}  {:<30}  {:<10}  {:<12}  WORKER",
                "JOB", "PROJECT", "RECIPE", "STATE"
            );
            for job in response.jobs {
                let spec = job.spec.unwrap_or_default();
                let requirement = if spec.project_version.is_empty() {
                    spec.project_name
                } else {
                    format!("{}=={}", spec.project_name, spec.project_version)
                };
                println!(
                    "{:<36}  {:<30}  {:<10}  {:<12}  {}",
                    job.job_id,
                    requirement,
                    spec.recipe_identifier,
                    state_name(job.state),
                    job.worker_id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workers => {
            let mut client = WorkerRegistryClient::connect(cli.master.clone())
                .await
                .with_context(|| format!("cannot reach the master at {}", cli.master))?;
            let response = client
                .list_workers(proto::ListWorkersRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{:<20}  {:<16}  {:>5}  {:>5}  {:>7}  {:>6}  VARIANTS",
                "WORKER", "PLATFORM", "TOTAL", "READY", "RUNNING", "BROKEN"
            );
            for worker in response.workers {
                for p in worker.capacity.unwrap_or_default().platforms {
                    println!(
                        "{:<20}  {:<16}  {:>5}  {:>5}  {:>7}  {:>6}  {}",
                        worker.worker_id,
                        p.platform,
                        p.total,
                        p.ready,
                        p.running,
                        p.broken,
                        p.variants.join(",")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the normalised job (exit 0) or every error found (exit 1).
fn validate(file: &Path) -> ExitCode {
    match read_job(file) {
        Ok(spec) => {
            println!("{}", spec.to_json_pretty());
            ExitCode::SUCCESS
        }
        Err(error) => {
            match error.downcast_ref::<pyti::Error>() {
                Some(pyti::Error::JobInvalid {
                    source_name,
                    errors,
                }) => {
                    eprintln!(
                        "{source_name}: {} error{}:",
                        errors.len(),
                        if errors.len() == 1 { "" } else { "s" }
                    );
                    for e in errors {
                        eprintln!("  {e}");
                    }
                }
                _ => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn read_job(file: &Path) -> anyhow::Result<JobSpec> {
    let (text, name) = if file == Path::new("-") {
        (
            std::io::read_to_string(std::io::stdin())
                .context("reading the job from standard input")?,
            "<stdin>".to_owned(),
        )
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read job file {}", file.display()))?;
        (text, file.display().to_string())
    };
    Ok(JobSpec::from_json(&text, &name)?)
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the master refused: {} ({:?})",
        status.message(),
        status.code()
    )
}

fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state).unwrap_or(JobState::Unspecified) {
        JobState::Unspecified => "unknown",
        JobState::Submitted => "submitted",
        JobState::Queued => "queued",
        JobState::Assigned => "assigned",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::TimedOut => "timed-out",
        JobState::Cancelled => "cancelled",
        JobState::Dead => "dead",
    }
}
