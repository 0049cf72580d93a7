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
    #[command(flatten)]
    connect: ConnectOptions,
    #[command(subcommand)]
    command: Command,
}

/// How to reach the master.
#[derive(Debug, clap::Args)]
struct ConnectOptions {
    /// The master's gRPC address.
    #[arg(
        long,
        global = true,
        env = "PYTI_MASTER",
        default_value = "http://127.0.0.1:50051"
    )]
    master: String,
    /// The farm CA certificate, to check the master's (turns TLS on).
    #[arg(long, global = true, env = "PYTI_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This client's certificate (`pyti ca issue DIR client NAME --role ROLE`).
    #[arg(
        long,
        global = true,
        env = "PYTI_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    cert: Option<PathBuf>,
    /// This client's private key.
    #[arg(
        long,
        global = true,
        env = "PYTI_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    key: Option<PathBuf>,
    /// A bearer token (`pyti token create`); prefer the environment to the command line.
    #[arg(long, global = true, env = "PYTI_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
        /// Then follow it like `pyti watch` until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Follow a job live: every state change and task result until it ends (exit 0 when
    /// it succeeded, 1 otherwise).
    Watch {
        /// The job id `pyti submit` printed.
        job_id: String,
    },
    /// Show a job's results: a table of tasks, or the whole results as JSON.
    Results {
        /// The job id.
        job_id: String,
        /// Print JSON (the job, its task results and the results dict) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    Jobs {
        /// Only jobs of this project.
        #[arg(long)]
        project: Option<String>,
        /// Only jobs in this state (repeatable): queued, running, succeeded, failed, ...
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only jobs assigned to or run by this worker.
        #[arg(long)]
        worker: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue a listing from the token a previous one printed.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Cancel a job: a waiting one at once, a running one by stopping its VM.
    Cancel {
        /// The job id.
        job_id: String,
        /// Why, recorded in the job's history.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Ask a worker to stop taking jobs; it finishes what runs.
    Drain {
        /// The worker's id (see `pyti workers`).
        worker_id: String,
    },
    /// List workers and their VM capacity.
    Workers,
    /// The farm CA: make it, issue certificates, look at one.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Client bearer tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Make a farm CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Init {
        dir: PathBuf,
        /// Days it stays valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate from the CA in DIR: `master`, `worker NAME`,
    /// `client NAME --role read|submit|admin` or `broker` (RabbitMQ's, for amqps://);
    /// writes DIR/<what>[-NAME].pem and .key.
    Issue {
        dir: PathBuf,
        /// master, worker, client or broker.
        kind: String,
        /// The worker's id or the client's name.
        name: Option<String>,
        /// The client's role: read, submit or admin.
        #[arg(long)]
        role: Option<String>,
        /// Host names clients dial (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// Addresses clients dial (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Days it stays valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Who a certificate makes its holder, and its DNS names.
    Info { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; prints it once (the master keeps only a hash).
    Create {
        #[arg(long)]
        name: String,
        /// read, submit or admin.
        #[arg(long)]
        role: String,
        /// Days until it expires; 0 never.
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
    /// Revoke the token named NAME.
    Revoke { name: String },
    /// List tokens (never their secrets).
    List,
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

/// A channel to the master with the credentials given (TLS when `--ca` is).
type Conn = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    pyti::trust::token::Bearer,
>;

async fn connect(cli: &ConnectOptions) -> anyhow::Result<Conn> {
    let tls = match &cli.ca {
        Some(ca) => {
            let identity = cli.cert.as_deref().zip(cli.key.as_deref());
            Some(
                pyti::trust::tls::client_config(ca, identity, pyti::trust::MASTER_NAME)
                    .map_err(anyhow::Error::msg)?,
            )
        }
        None if cli.cert.is_some() => {
            anyhow::bail!("--cert needs --ca (the farm CA certificate) to check the master")
        }
        None => None,
    };
    let channel = pyti::trust::tls::endpoint(&cli.master, tls)
        .map_err(anyhow::Error::msg)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the master at {}", cli.master))?;
    let bearer =
        pyti::trust::token::Bearer::new(cli.token.as_deref()).context("the token is not ASCII")?;
    Ok(Conn::new(channel, bearer))
}

async fn jobs_client(cli: &ConnectOptions) -> anyhow::Result<JobServiceClient<Conn>> {
    Ok(JobServiceClient::new(connect(cli).await?)
        .max_decoding_message_size(pyti::grpc::MAX_ENCODE_BYTES))
}

async fn registry_client(cli: &ConnectOptions) -> anyhow::Result<WorkerRegistryClient<Conn>> {
    Ok(WorkerRegistryClient::new(connect(cli).await?))
}

fn ca_command(command: CaCommand) -> anyhow::Result<ExitCode> {
    use pyti::trust::ca::{self, Issue, Subject};
    match command {
        CaCommand::Init { dir, days } => {
            let (cert, key) = ca::init(&dir, days).map_err(anyhow::Error::msg)?;
            println!("{}\n{}", cert.display(), key.display());
        }
        CaCommand::Issue {
            dir,
            kind,
            name,
            role,
            dns,
            ip,
            days,
        } => {
            let subject = match (kind.as_str(), name, role) {
                ("master", None, None) => Subject::Master,
                ("broker", None, None) => Subject::Broker,
                ("worker", Some(name), None) => Subject::Worker(name),
                ("client", Some(name), Some(role)) => Subject::Client(
                    name,
                    pyti::trust::Role::parse(&role).map_err(anyhow::Error::msg)?,
                ),
                _ => anyhow::bail!(
                    "say `master`, `worker NAME`, `client NAME --role read|submit|admin` or `broker`"
                ),
            };
            let (cert, key) = ca::issue(
                &dir,
                &Issue {
                    subject,
                    dns,
                    ips: ip,
                    days,
                },
            )
            .map_err(anyhow::Error::msg)?;
            println!("{}\n{}", cert.display(), key.display());
        }
        CaCommand::Info { file } => {
            let (principal, names) = ca::info(&file).map_err(anyhow::Error::msg)?;
            if names.iter().any(|n| n == "broker.pyti") {
                println!("RabbitMQ's certificate (no farm principal)");
            } else {
                println!("{principal}");
            }
            for name in names {
                println!("  DNS:{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn token_command(cli: &ConnectOptions, command: &TokenCommand) -> anyhow::Result<ExitCode> {
    let mut client = proto::token_service_client::TokenServiceClient::new(connect(cli).await?);
    match command {
        TokenCommand::Create { name, role, days } => {
            let answer = client
                .create_token(proto::CreateTokenRequest {
                    name: name.clone(),
                    role: role.clone(),
                    days: *days,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            eprintln!("token {name} ({role}); shown once, keep it secret:");
            println!("{}", answer.token);
        }
        TokenCommand::Revoke { name } => {
            let answer = client
                .revoke_token(proto::RevokeTokenRequest { name: name.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            if !answer.revoked {
                anyhow::bail!("no live token named {name}");
            }
            println!("{name}  revoked");
        }
        TokenCommand::List => {
            let answer = client
                .list_tokens(proto::ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{:<24}  {:<7}  {:<16}  STATUS", "NAME", "ROLE", "ID");
            for token in answer.tokens {
                let status = if token.revoked { "revoked" } else { "live" };
                println!(
                    "{:<24}  {:<7}  {:<16}  {status}",
                    token.name, token.role, token.token_id
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ca(command) => ca_command(command),
        Command::Token(command) => token_command(&cli.connect, &command).await,
        Command::Validate { file } => Ok(validate(&file)),
        Command::Submit {
            job,
            recipe,
            platform,
            variants,
            queue_anyway,
            watch,
        } => {
            let spec = if Path::new(&job).is_file() || job.ends_with(".json") || job == "-" {
                read_job(Path::new(&job))?
            } else {
                JobSpec::from_requirement(&job, recipe.as_deref(), platform.as_deref(), &variants)?
            };
            let mut client = jobs_client(&cli.connect).await?;
            let response = client
                .submit_job(proto::SubmitJobRequest {
                    spec: Some(spec.into()),
                    queue_without_capacity: queue_anyway,
                    idempotency_key: uuid::Uuid::new_v4().to_string(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let job = response.job.context("the master answered without a job")?;
            let version = if job.resolved_version.is_empty() {
                String::new()
            } else {
                format!("  (latest version: {})", job.resolved_version)
            };
            println!("{}  {}{version}", job.job_id, state_name(job.state));
            if watch {
                return watch_job(&mut client, &job.job_id).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { job_id } => {
            let mut client = jobs_client(&cli.connect).await?;
            watch_job(&mut client, &job_id).await
        }
        Command::Results { job_id, json } => {
            let mut client = jobs_client(&cli.connect).await?;
            let results = client
                .get_results(proto::GetResultsRequest { job_id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_results(&results, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { job_id, reason } => {
            let mut client = jobs_client(&cli.connect).await?;
            let job = client
                .cancel_job(proto::CancelJobRequest { job_id, reason })
                .await
                .map_err(status_error)?
                .into_inner()
                .job
                .context("the master answered without a job")?;
            let what = if JobState::try_from(job.state) == Ok(JobState::Running) {
                "cancel requested; its worker is stopping it"
            } else {
                state_name(job.state)
            };
            println!("{}  {what}", job.job_id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain { worker_id } => {
            let mut client = registry_client(&cli.connect).await?;
            client
                .drain_worker(proto::DrainWorkerRequest {
                    worker_id: worker_id.clone(),
                })
                .await
                .map_err(status_error)?;
            println!("{worker_id}  draining: takes no new jobs, finishes what runs");
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs {
            project,
            states,
            worker,
            limit,
            page_token,
        } => {
            let mut client = jobs_client(&cli.connect).await?;
            let states = states
                .iter()
                .map(|s| parse_state(s))
                .collect::<anyhow::Result<Vec<i32>>>()?;
            let response = client
                .list_jobs(proto::ListJobsRequest {
                    project_name: project.unwrap_or_default(),
                    states,
                    worker_id: worker.unwrap_or_default(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
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
            if !response.next_page_token.is_empty() {
                println!("more: --page-token {}", response.next_page_token);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Workers => {
            let mut client = registry_client(&cli.connect).await?;
            let response = client
                .list_workers(proto::ListWorkersRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "{:<20}  {:<12}  {:<16}  {:>5}  {:>5}  {:>7}  {:>6}  {:>8}  VARIANTS",
                "WORKER", "STATUS", "PLATFORM", "TOTAL", "READY", "RUNNING", "BROKEN", "ASSIGNED"
            );
            for worker in response.workers {
                let capacity = worker.capacity.unwrap_or_default();
                let status = match (worker.connected, capacity.draining) {
                    (false, _) => "disconnected",
                    (true, true) => "draining",
                    (true, false) => "connected",
                };
                for p in capacity.platforms {
                    println!(
                        "{:<20}  {:<12}  {:<16}  {:>5}  {:>5}  {:>7}  {:>6}  {:>8}  {}",
                        worker.worker_id,
                        status,
                        p.platform,
                        p.total,
                        p.ready,
                        p.running,
                        p.broken,
                        worker.assigned_not_started,
                        p.variants.join(",")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a job's events until it ends; exit 0 when it succeeded.
async fn watch_job(client: &mut JobServiceClient<Conn>, job_id: &str) -> anyhow::Result<ExitCode> {
    use tokio_stream::StreamExt;
    let mut events = client
        .watch_job(proto::WatchJobRequest {
            job_id: job_id.to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last_state = None;
    let mut seen_history = 0;
    while let Some(event) = events.next().await {
        match event.map_err(status_error)?.event {
            Some(proto::job_event::Event::Job(job)) => {
                for change in job.history.iter().skip(seen_history) {
                    println!(
                        "{:<10}  attempt {}  {}",
                        state_name(change.state),
                        change.attempt,
                        change.reason
                    );
                }
                seen_history = seen_history.max(job.history.len());
                if job.history.is_empty() && last_state != Some(job.state) {
                    println!(
                        "{:<10}  attempt {}  {}",
                        state_name(job.state),
                        job.attempt,
                        job.worker_id
                    );
                }
                last_state = Some(job.state);
            }
            Some(proto::job_event::Event::TaskResult(task)) => {
                println!(
                    "  task {:<10} {:<9} {:>7.1} s  {}",
                    task.task,
                    task_status_name(task.status),
                    task.duration_s,
                    task.summary
                );
            }
            None => {}
        }
    }
    Ok(if last_state == Some(JobState::Succeeded as i32) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_results(results: &proto::JobResults, json: bool) {
    let job = results.job.clone().unwrap_or_default();
    if json {
        let tasks: Vec<serde_json::Value> = results
            .tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "task": t.task,
                    "status": task_status_name(t.status),
                    "duration_s": t.duration_s,
                    "summary": t.summary,
                    "log_name": t.log_name,
                    "metrics": serde_json::from_str::<serde_json::Value>(&t.metrics_json)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .collect();
        let document = serde_json::json!({
            "job_id": job.job_id,
            "state": state_name(job.state),
            "attempt": job.attempt,
            "worker_id": job.worker_id,
            "resolved_version": job.resolved_version,
            "tasks": tasks,
            "logs": results.log_names,
            "results": serde_json::from_str::<serde_json::Value>(&results.results_json)
                .unwrap_or(serde_json::Value::Null),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&document).expect("JSON values serialise")
        );
        return;
    }
    println!(
        "{}  {}  attempt {}  on {}",
        job.job_id,
        state_name(job.state),
        job.attempt,
        if job.worker_id.is_empty() {
            "-"
        } else {
            &job.worker_id
        }
    );
    if results.tasks.is_empty() {
        println!("no results stored yet");
        return;
    }
    println!("{:<12}  {:<9}  {:>9}  SUMMARY", "TASK", "STATUS", "SECONDS");
    for task in &results.tasks {
        println!(
            "{:<12}  {:<9}  {:>9.1}  {}",
            task.task,
            task_status_name(task.status),
            task.duration_s,
            task.summary
        );
    }
}

fn task_status_name(status: i32) -> &'static str {
    match proto::TaskStatus::try_from(status).unwrap_or(proto::TaskStatus::Unspecified) {
        proto::TaskStatus::Unspecified => "unknown",
        proto::TaskStatus::Passed => "passed",
        proto::TaskStatus::Failed => "failed",
        proto::TaskStatus::Error => "error",
        proto::TaskStatus::Skipped => "skipped",
        proto::TaskStatus::TimedOut => "timed-out",
    }
}

fn parse_state(name: &str) -> anyhow::Result<i32> {
    let states = [
        JobState::Submitted,
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::TimedOut,
        JobState::Cancelled,
        JobState::Dead,
    ];
    states
        .iter()
        .find(|s| state_name(**s as i32) == name.to_ascii_lowercase())
        .map(|s| *s as i32)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--state {name:?}: the states are {}",
                states
                    .iter()
                    .map(|s| state_name(*s as i32))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
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
