//! `pyti-master`: the farm's single entry point for jobs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use pyti_master::config::MasterConfig;

/// Takes job requests, queues them in RabbitMQ and schedules them onto workers.
#[derive(Debug, Parser)]
#[command(name = "pyti-master", version)]
struct Cli {
    /// The master's INI configuration; defaults apply without it.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = MasterConfig::load(cli.config.as_deref())?;
    pyti::telemetry::init(cli.log_json || config.log_json);
    pyti::trust::check_listen(
        config.listen,
        config.tls.is_some(),
        config.insecure,
        "pyti-master",
    )
    .map_err(anyhow::Error::msg)?;
    // Installed before anything listens: opening the store and recovering jobs takes a
    // moment, and a signal in that moment must still stop the master cleanly.
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let shutdown = async move {
        let which = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "Shutting down");
    };
    let (listener, addr) = pyti::grpc::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([config] listen)", config.listen))?;
    tracing::info!(%addr, database = %pyti::redact::url(&config.database), tls = config.tls.is_some(), "pyti-master listening");
    pyti_master::service::run(
        pyti_master::Settings::from_config(&config),
        &config.database,
        listener,
        shutdown,
    )
    .await?;
    tracing::info!("pyti-master stopped");
    Ok(())
}
