//! `pyti-worker`: one per host (the seed's `pyti-slave`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use pyti_worker::config::WorkerConfig;
use pyti_worker::control::ControlService;

/// Runs PyTI jobs in libvirt VMs on this host and serves the WorkerControl control plane.
#[derive(Debug, Parser)]
#[command(name = "pyti-worker", version)]
struct Cli {
    /// The worker's INI configuration (the seed's pyti_config); defaults apply without it.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = WorkerConfig::load(cli.config.as_deref())?;
    pyti::telemetry::init(cli.log_json || config.log_json);
    let config = Arc::new(config);
    let control = ControlService::new(Arc::clone(&config));
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
