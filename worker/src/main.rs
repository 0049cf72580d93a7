//! `pyti-worker`: one per host (the seed's `pyti-slave`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pyti_worker::config::WorkerConfig;
use pyti_worker::control::ControlService;
use pyti_worker::image::cli::ImageCommand;
use pyti_worker::stateofvm::SlotPool;

/// Runs PyTI jobs in libvirt VMs on this host and serves the WorkerControl control plane.
#[derive(Debug, Parser)]
#[command(name = "pyti-worker", version)]
struct Cli {
    /// The worker's INI configuration (the seed's pyti_config); defaults apply without it.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the control plane and run jobs (the default).
    Serve,
    /// Build, list and check guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Resolve and download a distribution's closure into the cache (and --dest), then
    /// print the resolved set: to pre-warm a worker or debug a failed install.
    Download(pyti_worker::pypidownload::cli::DownloadArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = WorkerConfig::load(cli.config.as_deref())?;
    pyti::telemetry::init(cli.log_json || config.log_json);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Image(command) => Ok(pyti_worker::image::cli::run(&config.root, command).await?),
        Command::Download(args) => {
            pyti_worker::pypidownload::cli::run(args, &config.root.join("cache/pypi")).await
        }
    }
}

async fn serve(config: WorkerConfig) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let pool = SlotPool::new(config.slot_names())?;
    let control = ControlService::new(Arc::clone(&config), pool);
    let (listener, addr) = pyti::grpc::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([config] listen)", config.listen))?;
    tracing::info!(
        worker_id = %config.worker_id,
        %addr,
        root = %config.root.display(),
        platforms = config.platforms.len(),
        "pyti-worker listening"
    );
    pyti_worker::control::serve(control, listener, pyti::grpc::shutdown_signal()).await?;
    tracing::info!("pyti-worker stopped");
    Ok(())
}
