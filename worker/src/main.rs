//! `pyti-worker`: one per host (the seed's `pyti-slave`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pyti_guest::recipe::RecipeBook;
use pyti_worker::capacity::WorkerCapacity;
use pyti_worker::config::WorkerConfig;
use pyti_worker::control::ControlService;
use pyti_worker::image::cli::ImageCommand;
use pyti_worker::manager::Manager;
use pyti_worker::masterlink::{MasterLinkHandle, MasterLinkSettings};
use pyti_worker::stateofvm::SlotPool;
use tokio_util::sync::CancellationToken;

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
    /// Serve the control plane and run the jobs the master assigns (the default).
    Serve {
        /// The static pyti-guest binary for the guest image (default: next to this program).
        #[arg(long, value_name = "FILE")]
        agent: Option<PathBuf>,
    },
    /// Build, list and check guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Resolve and download a distribution's closure into the cache (and --dest), then
    /// print the resolved set: to pre-warm a worker or debug a failed install.
    Download(pyti_worker::pypidownload::cli::DownloadArgs),
    /// The download cache: `stats`, `prune`.
    #[command(subcommand)]
    Cache(pyti_worker::pypidownload::cli::CacheCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = WorkerConfig::load(cli.config.as_deref())?;
    pyti::telemetry::init(cli.log_json || config.log_json);
    match cli.command.unwrap_or(Command::Serve { agent: None }) {
        Command::Serve { agent } => serve(config, cli.config.as_deref(), agent.as_deref()).await,
        Command::Image(command) => Ok(pyti_worker::image::cli::run(&config.root, command).await?),
        Command::Download(args) => {
            pyti_worker::pypidownload::cli::run(
                args,
                &config.root.join("cache/pypi"),
                config.budgets,
            )
            .await
        }
        Command::Cache(command) => pyti_worker::pypidownload::cli::run_cache(
            command,
            &config.root.join("cache/pypi"),
            config.cache_max_bytes,
        ),
    }
}

async fn serve(
    config: WorkerConfig,
    config_file: Option<&Path>,
    agent: Option<&Path>,
) -> anyhow::Result<()> {
    pyti::trust::check_listen(
        config.listen,
        config.tls.is_some(),
        config.insecure,
        "pyti-worker",
    )
    .map_err(anyhow::Error::msg)?;
    let security =
        pyti_worker::control::security(config.tls.as_ref()).map_err(anyhow::Error::msg)?;
    let config = Arc::new(config);
    let pool = SlotPool::new(config.slot_names())?;
    let recipes = match config_file
        .and_then(Path::parent)
        .map(|d| d.join("recipes"))
        .filter(|d| d.is_dir())
    {
        Some(dir) => RecipeBook::with_overrides(&dir)?,
        None => RecipeBook::embedded(),
    };
    let (listener, addr) = pyti::grpc::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([config] listen)", config.listen))?;
    let capacity = WorkerCapacity::new(&config, pool.clone());
    let manager = Arc::new(Manager::start(Arc::clone(&config), pool, recipes, agent).await?);
    let settings = MasterLinkSettings::from_config(&config);
    // Bad RabbitMQ TLS files stop the worker here, not in a retry loop.
    pyti::amqp::Amqp::new(&settings.amqp_url, settings.amqp_tls.as_ref())
        .map_err(anyhow::Error::msg)?;
    let link = MasterLinkHandle::new(capacity.clone());
    let control = ControlService::new(capacity).with_master_link(link.clone());
    let stop = CancellationToken::new();
    #[expect(
        clippy::disallowed_methods,
        reason = "serve keeps the handle and waits for the master link once the control plane stopped"
    )]
    let master_link = tokio::spawn(pyti_worker::masterlink::run(
        settings,
        manager,
        link,
        stop.clone(),
    ));
    tracing::info!(
        worker_id = %config.worker_id,
        %addr,
        master = %config.master,
        root = %config.root.display(),
        platforms = config.platforms.len(),
        "pyti-worker listening"
    );
    pyti_worker::control::serve(control, listener, &security, pyti::grpc::shutdown_signal())
        .await?;
    // Finish what runs: the master link stops taking jobs and waits for running ones.
    stop.cancel();
    master_link.await.context("the master link failed")??;
    tracing::info!("pyti-worker stopped");
    Ok(())
}
