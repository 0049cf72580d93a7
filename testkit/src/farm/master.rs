//! The master of a test farm: in this process (its `Arc<Master>` at hand, time
//! injectable) or as the `pyti-master` binary (so a test can kill it with SIGKILL and
//! start it again on the same store).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use pyti_master::clock::Clock;
use pyti_master::Settings;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A master running in this process, serving gRPC on a port of its own.
pub(crate) struct InProcess {
    pub(crate) master: Arc<pyti_master::Master>,
    pub(crate) address: String,
    stop: CancellationToken,
    server: JoinSet<()>,
}

impl InProcess {
    pub(crate) async fn start(settings: Settings, database: &str, clock: Option<Clock>) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            pyti::telemetry::init(false);
        }
        let store = pyti_master::store::open(database)
            .await
            .unwrap_or_else(|e| panic!("opening the store {database}: {e}"));
        let stop = CancellationToken::new();
        let clock = clock.unwrap_or_else(Clock::system);
        let tls = settings.tls.clone();
        let master = pyti_master::Master::start_with_clock(settings, store, clock, stop.clone())
            .await
            .expect("the master starts");
        let (listener, address) = pyti::grpc::bind(([127, 0, 0, 1], 0).into())
            .await
            .expect("binding a port for the master");
        let service = pyti_master::service::MasterService::new(Arc::clone(&master));
        let security =
            pyti_master::service::security(tls.as_ref(), &master).expect("the master's TLS files");
        let mut server = JoinSet::new();
        let token = stop.clone();
        server.spawn(async move {
            pyti_master::service::serve(service, listener, &security, token.cancelled_owned())
                .await
                .expect("the master serves");
        });
        Self {
            master,
            address: format!("http://{address}"),
            stop,
            server,
        }
    }

    /// The queues the master declared.
    pub(crate) fn known_queues(&self) -> Vec<String> {
        self.master.broker().known_queue_names()
    }

    /// Stops serving and every task of the master, and waits for them.
    pub(crate) async fn stop(&mut self) {
        self.stop.cancel();
        while let Some(served) = self.server.join_next().await {
            served.expect("the master's server task");
        }
        self.master.stopped().await;
    }

    /// Stops without waiting (a test that panicked).
    pub(crate) fn abort(&mut self) {
        self.stop.cancel();
        self.server.abort_all();
    }
}

/// The `pyti-master` binary, configured by an INI file written from the settings, its
/// JSON log lines in `master.log` beside it.
pub struct MasterProcess {
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl MasterProcess {
    /// Writes the configuration into `dir` (a fresh port; `settings`' prefix, lease
    /// and attempts; `database`) and starts `binary` on it.
    pub(crate) async fn start(
        binary: &Path,
        dir: &Path,
        settings: &Settings,
        database: &str,
    ) -> Self {
        let port = crate::net::free_port();
        let config = dir.join("master.ini");
        std::fs::write(
            &config,
            format!(
                "[config]\npyti_master_root = {root}\nlisten = 127.0.0.1:{port}\nqueue_prefix = {prefix}\nlease_s = {lease}\nmax_attempts = {attempts}\ndatabase = {database}\namqp_url = {amqp}\n",
                amqp = settings.amqp_url,
                root = dir.display(),
                prefix = settings.queue_prefix,
                lease = settings.lease.as_secs(),
                attempts = settings.max_attempts,
            ),
        )
        .expect("writing master.ini");
        let mut tls_section = String::new();
        if let Some(tls) = &settings.tls {
            tls_section += &format!(
                "cert = {}\nkey = {}\nca = {}\n",
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display()
            );
        }
        if let Some(amqp) = &settings.amqp_tls {
            tls_section += &format!("amqp_ca = {}\n", amqp.ca.display());
            if let Some((cert, key)) = &amqp.identity {
                tls_section += &format!(
                    "amqp_cert = {}\namqp_key = {}\n",
                    cert.display(),
                    key.display()
                );
            }
        }
        if !tls_section.is_empty() {
            let mut ini = std::fs::OpenOptions::new()
                .append(true)
                .open(&config)
                .expect("opening master.ini");
            std::io::Write::write_all(&mut ini, format!("\n[tls]\n{tls_section}").as_bytes())
                .expect("writing master.ini");
        }
        let mut process = Self {
            binary: binary.to_owned(),
            config,
            log: dir.join("master.log"),
            port,
            child: None,
        };
        process.spawn().await;
        process
    }

    /// Where clients reach it.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the binary (again) and waits until it listens.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the master binary is running already");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening master.log");
        let child = Command::new(&self.binary)
            .arg("--log-json")
            .arg("--config")
            .arg(&self.config)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        let port = self.port;
        tokio::task::spawn_blocking(move || {
            crate::net::wait_listening(port, "pyti-master", Duration::from_secs(30));
        })
        .await
        .expect("waiting for the master to listen");
    }

    /// Kills the master with SIGKILL, as a crash would.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL to pyti-master");
            child.wait().expect("pyti-master ends");
        }
    }

    /// Sends SIGINT and waits for the master to stop: its exit status and its log.
    pub fn interrupt(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("the master binary is running");
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT pyti-master");
        let status = child.wait().expect("pyti-master ends");
        let log = std::fs::read_to_string(&self.log).expect("reading master.log");
        (status, log)
    }
}

impl Drop for MasterProcess {
    /// A test that panicked leaves no master running.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(error) = child.kill().and_then(|()| child.wait().map(drop)) {
                eprintln!("stopping pyti-master {}: {error}", child.id());
            }
        }
    }
}
