//! Test workers: the worker's real control plane and master link (RabbitMQ, leases,
//! spool) in this process or in a child process, with a [`TestExecutor`] (or any
//! executor) behind them.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyti_worker::capacity::WorkerCapacity;
use pyti_worker::config::WorkerConfig;
use pyti_worker::control::ControlService;
use pyti_worker::masterlink::{JobExecutor, MasterLinkHandle, MasterLinkSettings};
use pyti_worker::stateofvm::SlotPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::executor::{Behaviour, Runs, TestExecutor};
use super::PLATFORM;

/// What a farm's workers started: their ids and platforms (whose queues the farm
/// deletes) and the tasks of those in this process (which the farm stops).
#[derive(Debug, Clone, Default)]
pub(crate) struct Started(Arc<Mutex<StartedWorkers>>);

#[derive(Debug, Default)]
struct StartedWorkers {
    worker_ids: BTreeSet<String>,
    platforms: BTreeSet<String>,
    tasks: Vec<WorkerTasks>,
}

impl Started {
    fn record(&self, worker_id: &str, platform: &str, tasks: Option<&WorkerTasks>) {
        let mut started = self.0.lock().expect("started workers lock");
        started.worker_ids.insert(worker_id.to_owned());
        started.platforms.insert(platform.to_owned());
        started.tasks.extend(tasks.cloned());
    }

    /// Worker ids and platforms so far.
    pub(crate) fn queues(&self) -> (Vec<String>, Vec<String>) {
        let started = self.0.lock().expect("started workers lock");
        (
            started.worker_ids.iter().cloned().collect(),
            started.platforms.iter().cloned().collect(),
        )
    }

    /// The tasks of the workers started in this process.
    pub(crate) fn tasks(&self) -> Vec<WorkerTasks> {
        self.0.lock().expect("started workers lock").tasks.clone()
    }
}

/// The tasks of one worker in this process (its control plane and master link), with
/// the token that stops them and what went wrong in them.
#[derive(Debug, Clone)]
pub(crate) struct WorkerTasks {
    worker_id: String,
    stop: CancellationToken,
    tracker: TaskTracker,
    failures: Arc<Mutex<Vec<String>>>,
}

impl WorkerTasks {
    fn new(worker_id: &str) -> Self {
        Self {
            worker_id: worker_id.to_owned(),
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            failures: Arc::default(),
        }
    }

    /// Runs `task` until the worker stops; an error is kept for [`WorkerTasks::stop`].
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let failures = Arc::clone(&self.failures);
        self.tracker.spawn(async move {
            if let Err(error) = task.await {
                failures.lock().expect("failures lock").push(error);
            }
        });
    }

    /// Stops taking work and waits until the running jobs are reported and every task
    /// ended; panics naming what failed. Stopping twice is stopping once.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let failures = self.failures.lock().expect("failures lock");
        assert!(
            failures.is_empty(),
            "worker {}: {failures:?}",
            self.worker_id
        );
    }

    /// Stops without waiting (a test that panicked).
    pub(crate) fn cancel(&self) {
        self.stop.cancel();
    }
}

/// How to start one test worker. Defaults: one slot of [`PLATFORM`] with no variants,
/// jobs that pass after 100 ms, a Register every second. The farm stops it in
/// [`super::TestFarm::finish`] unless the test did ([`TestWorker::stop`]).
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    id: String,
    root_parent: PathBuf,
    master: String,
    prefix: String,
    platform: String,
    slots: u32,
    variants: Vec<String>,
    behaviour: Behaviour,
    register_interval: Duration,
    runs: Runs,
    started: Started,
    ca: Option<super::FarmCa>,
    results_padding: usize,
    amqp: Option<(String, Option<pyti::amqp::AmqpTls>)>,
}

impl WorkerBuilder {
    /// A worker `id` of the farm at `master` (gRPC address) with queue prefix `prefix`,
    /// its state under `root_parent/<id>`.
    pub fn new(id: &str, master: &str, prefix: &str, root_parent: &Path) -> Self {
        Self {
            id: id.to_owned(),
            root_parent: root_parent.to_owned(),
            master: master.to_owned(),
            prefix: prefix.to_owned(),
            platform: PLATFORM.to_owned(),
            slots: 1,
            variants: Vec::new(),
            behaviour: Behaviour::RunFor(Duration::from_millis(100)),
            register_interval: Duration::from_secs(1),
            runs: Runs::default(),
            started: Started::default(),
            ca: None,
            results_padding: 0,
            amqp: None,
        }
    }

    /// Pads each results dict with `bytes` bytes (results larger than a message).
    pub fn results_bytes(mut self, bytes: usize) -> Self {
        self.results_padding = bytes;
        self
    }

    /// The worker runs on mutual TLS with a certificate from `ca` for its id.
    pub fn farm_ca(mut self, ca: super::FarmCa) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Its TLS files, on a farm on mutual TLS.
    pub fn tls_files(&self) -> Option<pyti::trust::TlsFiles> {
        self.ca.as_ref().map(|ca| ca.worker(&self.id))
    }

    /// Consumes from RabbitMQ at `url` with `tls` instead of the shared node.
    pub fn amqp(mut self, url: &str, tls: Option<pyti::amqp::AmqpTls>) -> Self {
        self.amqp = Some((url.to_owned(), tls));
        self
    }

    /// Names the worker `id` exactly (the farm gives it a unique one otherwise).
    pub fn id(mut self, id: &str) -> Self {
        id.clone_into(&mut self.id);
        self
    }

    /// Offers `platform` instead of [`PLATFORM`].
    pub fn platform(mut self, platform: &str) -> Self {
        platform.clone_into(&mut self.platform);
        self
    }

    /// Runs `slots` jobs at once.
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// Offers `variants` on its platform.
    pub fn variants(mut self, variants: &[&str]) -> Self {
        self.variants = variants.iter().map(|v| (*v).to_owned()).collect();
        self
    }

    /// Jobs take `run_ms` milliseconds (or until cancelled), then pass.
    pub fn run_ms(mut self, run_ms: u64) -> Self {
        self.behaviour = Behaviour::RunFor(Duration::from_millis(run_ms));
        self
    }

    /// Gives back every job it is handed, as a worker whose VMs all broke would.
    pub fn refusing(mut self) -> Self {
        self.behaviour = Behaviour::Refuse;
        self
    }

    /// Registers again every `interval_ms` milliseconds.
    pub fn register_interval_ms(mut self, interval_ms: u64) -> Self {
        self.register_interval = Duration::from_millis(interval_ms);
        self
    }

    /// Records its runs into `runs` (shared with other workers).
    pub(crate) fn recording_into(mut self, runs: Runs, started: Started) -> Self {
        self.runs = runs;
        self.started = started;
        self
    }

    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        &self.id
    }

    /// Where the worker keeps its state (the spool is `spool/` in it).
    pub fn root(&self) -> PathBuf {
        self.root_parent.join(&self.id)
    }

    /// The worker configuration all this amounts to.
    pub fn config(&self) -> WorkerConfig {
        let text = format!(
            "[config]\nworker_id = {id}\ntotal_vms = {slots}\npyti_slave_root = {root}\nmaster = {master}\nqueue_prefix = {prefix}\nlisten = 127.0.0.1:0\n\n[platform {platform}]\nvms = {slots}\nvariants = {variants}\n",
            id = self.id,
            slots = self.slots,
            root = self.root().display(),
            master = self.master,
            prefix = self.prefix,
            platform = self.platform,
            variants = self.variants.join(", ")
        );
        let text = match self.tls_files() {
            Some(tls) => format!(
                "{text}\n[tls]\ncert = {}\nkey = {}\nca = {}\n",
                tls.cert.display(),
                tls.key.display(),
                tls.ca.display()
            ),
            None => text,
        };
        let file = pyti::config::IniFile::parse(&text, Path::new("worker.ini"))
            .expect("the test worker's INI parses");
        let mut config =
            WorkerConfig::from_ini(&file, &|_| None).expect("the test worker's configuration");
        if let Some((url, tls)) = &self.amqp {
            url.clone_into(&mut config.amqp_url);
            config.amqp_tls.clone_from(tls);
        }
        config
    }

    /// Starts the worker in this process with the test executor.
    pub async fn start(self) -> TestWorker {
        let config = self.config();
        let pool = SlotPool::new(config.slot_names()).expect("the test worker's slots");
        let executor = Arc::new(TestExecutor {
            worker_id: self.id.clone(),
            behaviour: self.behaviour,
            runs: self.runs.clone(),
            results_padding: self.results_padding,
        });
        self.start_with(&config, pool, executor).await
    }

    /// Starts the worker in this process with `executor` over `pool`, configured by
    /// `config` (from [`WorkerBuilder::config`], changed as the test needs).
    pub async fn start_with<E: JobExecutor>(
        self,
        config: &WorkerConfig,
        pool: SlotPool,
        executor: Arc<E>,
    ) -> TestWorker {
        let handle = MasterLinkHandle::new(WorkerCapacity::new(config, pool));
        let control =
            ControlService::new(handle.capacity().clone()).with_master_link(handle.clone());
        let worker = self.serve_control(control, handle.clone()).await;
        let mut settings = MasterLinkSettings::from_config(config);
        settings.control_address.clone_from(&worker.control_address);
        settings.register_interval = self.register_interval;
        let stop = worker.tasks.stop.clone();
        worker.tasks.spawn(async move {
            pyti_worker::masterlink::run(settings, executor, handle, stop)
                .await
                .map_err(|e| format!("the master link failed: {e}"))
        });
        worker
    }

    /// Starts only the worker's control plane: it answers the master, but nothing
    /// registers it or consumes its queue (the test does what it needs by hand).
    pub async fn start_control_only(self) -> TestWorker {
        let config = self.config();
        let pool = SlotPool::new(config.slot_names()).expect("the test worker's slots");
        let capacity = WorkerCapacity::new(&config, pool);
        let handle = MasterLinkHandle::new(capacity.clone());
        self.serve_control(ControlService::new(capacity), handle)
            .await
    }

    /// Serves `control` on a port of its own until the worker stops.
    async fn serve_control(&self, control: ControlService, handle: MasterLinkHandle) -> TestWorker {
        let tasks = WorkerTasks::new(&self.id);
        self.started.record(&self.id, &self.platform, Some(&tasks));
        let (listener, address) = pyti::grpc::bind(([127, 0, 0, 1], 0).into())
            .await
            .expect("binding a port for WorkerControl");
        let stop = tasks.stop.clone();
        let security = pyti_worker::control::security(self.tls_files().as_ref())
            .expect("the worker's TLS files");
        tasks.spawn(async move {
            pyti_worker::control::serve(control, listener, &security, stop.cancelled_owned())
                .await
                .map_err(|e| format!("WorkerControl failed: {e}"))
        });
        TestWorker {
            id: self.id.clone(),
            handle,
            control_address: format!("http://{address}"),
            tasks,
        }
    }

    /// Runs the worker in a child process (this test binary again, whose
    /// `child_worker_process` test calls [`child_worker_process`]), so the test can
    /// kill it with SIGKILL.
    pub fn spawn_process(self) -> std::process::Child {
        self.started.record(&self.id, &self.platform, None);
        let run_ms = match self.behaviour {
            Behaviour::RunFor(duration) => duration.as_millis().to_string(),
            Behaviour::Refuse => panic!("a worker process runs its jobs"),
        };
        std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                "child_worker_process",
                "--ignored",
                "--nocapture",
            ])
            .env("PYTI_TEST_CHILD_WORKER", "1")
            .env("PYTI_TEST_MASTER", &self.master)
            .env("PYTI_TEST_PREFIX", &self.prefix)
            .env("PYTI_TEST_WORKER_ID", &self.id)
            .env("PYTI_TEST_ROOT_PARENT", &self.root_parent)
            .env("PYTI_TEST_PLATFORM", &self.platform)
            .env("PYTI_TEST_SLOTS", self.slots.to_string())
            .env("PYTI_TEST_RUN_MS", run_ms)
            .env(
                "PYTI_TEST_CA_DIR",
                self.ca
                    .as_ref()
                    .map(|ca| ca.dir().to_owned())
                    .unwrap_or_default(),
            )
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the test binary runs again")
    }
}

/// The body of a worker child process ([`WorkerBuilder::spawn_process`]): a worker
/// configured from `PYTI_TEST_*` variables that runs until it is killed. Does nothing
/// without them; a test binary runs it as an ignored test, which
/// [`crate::child_worker_process_test`] declares.
pub fn child_worker_process() {
    if std::env::var_os("PYTI_TEST_CHILD_WORKER").is_none() {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set"));
    let builder = WorkerBuilder::new(
        &var("PYTI_TEST_WORKER_ID"),
        &var("PYTI_TEST_MASTER"),
        &var("PYTI_TEST_PREFIX"),
        Path::new(&var("PYTI_TEST_ROOT_PARENT")),
    )
    .platform(&var("PYTI_TEST_PLATFORM"))
    .slots(var("PYTI_TEST_SLOTS").parse().expect("a number of slots"))
    .run_ms(var("PYTI_TEST_RUN_MS").parse().expect("milliseconds"));
    let builder = match std::env::var_os("PYTI_TEST_CA_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => builder.farm_ca(super::FarmCa::open(Path::new(&dir))),
        None => builder,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let _worker = builder.start().await;
        std::future::pending::<()>().await;
    });
}

/// A worker running in this process.
pub struct TestWorker {
    pub id: String,
    /// The master link's view: running jobs, cancelling, the capacity (slot pool).
    pub handle: MasterLinkHandle,
    /// Where its WorkerControl listens (`http://127.0.0.1:port`).
    pub control_address: String,
    tasks: WorkerTasks,
}

impl TestWorker {
    /// Stops taking work, waits until the running jobs are reported, stops; panics if
    /// the control plane or the master link failed.
    pub async fn stop(self) {
        self.tasks.stop().await;
    }
}
