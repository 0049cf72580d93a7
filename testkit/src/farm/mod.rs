//! A farm on this machine for tests: a master over real RabbitMQ and a real store
//! (SQLite in the farm's temporary directory, or a fresh PostgreSQL schema), and workers
//! built by name. Every farm has its own queue prefix and deletes its queues when it
//! ends ([`TestFarm::finish`], or on drop after a panic).
//!
//! ```ignore
//! let farm = TestFarm::builder().lease_s(3).start().await;
//! let worker = farm.worker("steady").slots(2).run_ms(200).start().await;
//! let mut jobs = farm.jobs().await;
//! ...
//! farm.finish().await; // stops the workers, then the master; deletes the queues
//! ```

pub mod client;
mod executor;
mod master;
mod queues;
pub mod trust;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pyti::proto::job_service_client::JobServiceClient;
use pyti::proto::token_service_client::TokenServiceClient;
use pyti::proto::worker_registry_client::WorkerRegistryClient;
use pyti_master::clock::Clock;
use pyti_master::store::Store;
use pyti_master::Settings;

pub use executor::{Behaviour, RunRecord, Runs};
pub use master::MasterProcess;
pub use queues::{delete_queues, Queues};
pub use trust::{Credentials, FarmCa};
pub use worker::{child_worker_process, TestWorker, WorkerBuilder};

use master::InProcess;
use worker::Started;

/// RabbitMQ of the tests.
pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The platform test workers offer unless told otherwise.
pub const PLATFORM: &str = "linux-debian";

/// A unique queue prefix.
pub fn prefix() -> String {
    crate::unique("pyti-test")
}

/// The settings of a test master with queue prefix `prefix`: a 10 s lease, 3 attempts,
/// the reaper every 200 ms, worker queues whose messages expire after 5 s.
pub fn settings(prefix: &str) -> Settings {
    Settings {
        amqp_url: AMQP.to_owned(),
        queue_prefix: prefix.to_owned(),
        lease: Duration::from_secs(10),
        max_attempts: 3,
        index_url: "https://pypi.org/simple".to_owned(),
        reap_interval: Duration::from_millis(200),
        worker_queue_ttl: Duration::from_secs(5),
        tls: None,
        amqp_tls: None,
        worker_expiry: Duration::from_secs(60),
    }
}

enum StoreKind {
    Sqlite,
    Postgres,
}

/// How to start a test farm; defaults as in [`settings`], SQLite, the system clock,
/// the master in this process.
pub struct FarmBuilder {
    settings: Settings,
    store: StoreKind,
    clock: Option<Clock>,
    binary: Option<PathBuf>,
    mtls: bool,
}

impl FarmBuilder {
    /// The farm runs on mutual TLS: a farm CA issues the master's and each worker's
    /// certificate; [`TestFarm::jobs`] and [`TestFarm::registry`] call as an admin
    /// client.
    pub fn mtls(mut self) -> Self {
        self.mtls = true;
        self
    }

    /// The master reaches RabbitMQ at `url` (e.g. a private `amqps://` node) with
    /// `tls`, instead of the shared node at [`AMQP`] (the caller owns that node and
    /// its queues).
    pub fn amqp(mut self, url: &str, tls: Option<pyti::amqp::AmqpTls>) -> Self {
        self.settings.amqp_url = url.to_owned();
        self.settings.amqp_tls = tls;
        self
    }

    /// Mutual TLS when `on` (tests that run in both modes).
    pub fn mtls_if(mut self, on: bool) -> Self {
        self.mtls = on;
        self
    }

    /// How long a lease lasts without renewal, in seconds.
    pub fn lease_s(mut self, lease_s: u64) -> Self {
        self.settings.lease = Duration::from_secs(lease_s);
        self
    }

    /// Attempts before a job is dead.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.max_attempts = attempts;
        self
    }

    /// How often the reaper looks for lapsed leases, in milliseconds (in-process
    /// master only).
    pub fn reap_interval_ms(mut self, interval_ms: u64) -> Self {
        self.settings.reap_interval = Duration::from_millis(interval_ms);
        self
    }

    /// Registered workers silent this long, holding no job, are forgotten and their
    /// queues deleted (in-process master only).
    pub fn worker_expiry_ms(mut self, expiry_ms: u64) -> Self {
        self.settings.worker_expiry = Duration::from_millis(expiry_ms);
        self
    }

    /// How long a job may wait in a worker's queue before it goes back, in seconds.
    pub fn worker_queue_ttl_s(mut self, ttl_s: u64) -> Self {
        self.settings.worker_queue_ttl = Duration::from_secs(ttl_s);
        self
    }

    /// The store is a fresh schema in the PostgreSQL test database.
    pub fn postgres(mut self) -> Self {
        self.store = StoreKind::Postgres;
        self
    }

    /// The master tells the time by `clock` (in-process master only).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The master runs as `binary` (`env!("CARGO_BIN_EXE_pyti-master")`), configured by
    /// an INI file: lease (whole seconds, at least 5), attempts, prefix and store.
    pub fn binary(mut self, binary: &str) -> Self {
        self.binary = Some(PathBuf::from(binary));
        self
    }

    /// Starts the master.
    pub async fn start(mut self) -> TestFarm {
        let dir = tempfile::tempdir().expect("a temporary directory for the farm");
        let ca = self.mtls.then(|| FarmCa::init(&dir.path().join("ca")));
        self.settings.tls = ca.as_ref().map(FarmCa::master);
        let admin = match &ca {
            Some(ca) => Credentials::Certificate(ca.client("admin", pyti::trust::Role::Admin)),
            None => Credentials::Plain,
        };
        let database = match self.store {
            StoreKind::Sqlite => dir.path().join("master.sqlite").display().to_string(),
            StoreKind::Postgres => crate::postgres::fresh_schema_url().await,
        };
        let master = match &self.binary {
            Some(binary) => {
                assert!(
                    self.clock.is_none(),
                    "the master binary keeps the system's time"
                );
                Master::Process(
                    MasterProcess::start(binary, dir.path(), &self.settings, &database).await,
                )
            }
            None => Master::InProcess(
                InProcess::start(self.settings.clone(), &database, self.clock).await,
            ),
        };
        let address = match &master {
            Master::InProcess(master) => master.address.clone(),
            Master::Process(master) => master.address(),
        };
        TestFarm {
            prefix: self.settings.queue_prefix,
            address,
            database,
            master: Some(master),
            runs: Runs::default(),
            started: Started::default(),
            dir,
            ca,
            admin,
        }
    }
}

enum Master {
    InProcess(InProcess),
    Process(MasterProcess),
}

/// A master with its queue prefix, store and temporary directory, and the workers
/// started through it.
pub struct TestFarm {
    /// The prefix of every queue of this farm.
    pub prefix: String,
    /// The master's gRPC address (`http://127.0.0.1:port`).
    pub address: String,
    database: String,
    master: Option<Master>,
    runs: Runs,
    started: Started,
    dir: tempfile::TempDir,
    ca: Option<FarmCa>,
    admin: Credentials,
}

impl TestFarm {
    /// How to start one.
    pub fn builder() -> FarmBuilder {
        FarmBuilder {
            settings: settings(&prefix()),
            store: StoreKind::Sqlite,
            clock: None,
            binary: None,
            mtls: false,
        }
    }

    /// A farm with every default.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// The master in this process.
    pub fn master(&self) -> &Arc<pyti_master::Master> {
        match &self.master {
            Some(Master::InProcess(master)) => &master.master,
            _ => panic!("the master of this farm is not in this process"),
        }
    }

    /// The master binary.
    pub fn master_process(&mut self) -> &mut MasterProcess {
        match &mut self.master {
            Some(Master::Process(master)) => master,
            _ => panic!("the master of this farm is not the binary"),
        }
    }

    /// The farm's temporary directory (the SQLite store, worker roots).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The store's URL or path.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The store: the master's own, or opened again for the master binary.
    pub async fn store(&self) -> Arc<dyn Store> {
        match &self.master {
            Some(Master::InProcess(master)) => Arc::clone(master.master.store()),
            _ => pyti_master::store::open(&self.database)
                .await
                .expect("opening the farm's store"),
        }
    }

    /// Asserts that the results of each of `job_ids` are stored exactly once.
    pub async fn assert_stored_once(&self, job_ids: &[String]) {
        let store = self.store().await;
        for id in job_ids {
            assert_eq!(
                store.count_results(id).await.expect("counting results"),
                1,
                "results of {id}"
            );
        }
    }

    /// The farm CA, when the farm runs on mutual TLS.
    pub fn ca(&self) -> Option<&FarmCa> {
        self.ca.as_ref()
    }

    /// The farm CA of a farm on mutual TLS.
    pub fn mtls_ca(&self) -> &FarmCa {
        self.ca
            .as_ref()
            .expect("the farm runs on mutual TLS (FarmBuilder::mtls)")
    }

    /// A channel to the master as `credentials` say.
    pub async fn channel_as(&self, credentials: &Credentials) -> trust::Authed {
        trust::connect(&self.address, credentials, pyti::trust::MASTER_NAME).await
    }

    /// A JobService client as an admin (or plain on an open farm).
    pub async fn jobs(&self) -> client::Jobs {
        self.jobs_as(&self.admin).await
    }

    /// A JobService client as `credentials` say.
    pub async fn jobs_as(&self, credentials: &Credentials) -> client::Jobs {
        JobServiceClient::new(self.channel_as(credentials).await)
            .max_decoding_message_size(pyti::grpc::MAX_ENCODE_BYTES)
    }

    /// A WorkerRegistry client as an admin (or plain on an open farm).
    pub async fn registry(&self) -> client::Registry {
        self.registry_as(&self.admin).await
    }

    /// A WorkerRegistry client as `credentials` say.
    pub async fn registry_as(&self, credentials: &Credentials) -> client::Registry {
        WorkerRegistryClient::new(self.channel_as(credentials).await)
            .max_decoding_message_size(pyti::grpc::MAX_ENCODE_BYTES)
            .max_encoding_message_size(pyti::grpc::MAX_ENCODE_BYTES)
    }

    /// A TokenService client as `credentials` say.
    pub async fn tokens_as(&self, credentials: &Credentials) -> client::Tokens {
        TokenServiceClient::new(self.channel_as(credentials).await)
    }

    /// The credentials of a new client certificate `name` with `role`.
    pub fn client_certificate(&self, name: &str, role: pyti::trust::Role) -> Credentials {
        Credentials::Certificate(self.mtls_ca().client(name, role))
    }

    /// The credentials of a worker certificate for `name`.
    pub fn worker_certificate(&self, name: &str) -> Credentials {
        Credentials::Certificate(self.mtls_ca().worker(name))
    }

    /// A worker for this farm named `name` plus a unique suffix, its runs recorded in
    /// [`TestFarm::runs`].
    pub fn worker(&self, name: &str) -> WorkerBuilder {
        let id = crate::unique(name);
        let builder = WorkerBuilder::new(&id, &self.address, &self.prefix, self.dir.path())
            .recording_into(self.runs.clone(), self.started.clone());
        match &self.ca {
            Some(ca) => builder.farm_ca(ca.clone()),
            None => builder,
        }
    }

    /// What the test executors of this farm's workers ran.
    pub fn runs(&self) -> Vec<RunRecord> {
        self.runs.list()
    }

    /// Stops the workers the test did not stop (each reports what it ran), then the
    /// master, then deletes the farm's queues.
    pub async fn finish(mut self) {
        for worker in self.started.tasks() {
            worker.stop().await;
        }
        let known = match self.master.take() {
            Some(Master::InProcess(mut master)) => {
                let known = master.known_queues();
                master.stop().await;
                known
            }
            Some(Master::Process(mut master)) => {
                master.kill_9();
                Vec::new()
            }
            None => Vec::new(),
        };
        delete_queues(&self.prefix, &self.queues(known)).await;
    }

    /// The farm's queues: `known` (what the master declared) and those of its
    /// workers and their platforms.
    fn queues(&self, known: Vec<String>) -> Queues {
        let (worker_ids, platforms) = self.started.queues();
        let platforms: Vec<&str> = platforms.iter().map(String::as_str).collect();
        let mut queues = Queues::of(&self.prefix, &platforms, &[]);
        queues.names.extend(known);
        queues.worker_ids = worker_ids;
        queues
    }
}

impl Drop for TestFarm {
    /// A test that panicked still stops its workers and master and deletes its queues.
    fn drop(&mut self) {
        for worker in self.started.tasks() {
            worker.cancel();
        }
        let known = match self.master.take() {
            Some(Master::InProcess(mut master)) => {
                let known = master.known_queues();
                master.abort();
                known
            }
            Some(Master::Process(master)) => {
                drop(master);
                Vec::new()
            }
            None => return,
        };
        queues::delete_queues_blocking(&self.prefix, &self.queues(known));
    }
}
