//! A farm on this machine for tests: a master (in-process or the binary) over real
//! RabbitMQ and a real store, and workers using `pyti_worker::masterlink` with an
//! executor written here, in test code, that runs no VM but holds a real slot lease.
//! Every farm has its own queue prefix and deletes its queues at the end.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyti::proto::job_service_client::JobServiceClient;
use pyti::proto::worker_registry_client::WorkerRegistryClient;
use pyti::proto::{self, JobState, Outcome, QueuedJob};
use pyti_master::Settings;
use pyti_worker::capacity::WorkerCapacity;
use pyti_worker::masterlink::{AttemptReport, JobExecutor, MasterLinkHandle, MasterLinkSettings};
use pyti_worker::stateofvm::{SlotLease, SlotPool};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A unique queue prefix.
pub fn prefix() -> String {
    format!("pyti-test-{}", uuid::Uuid::new_v4().simple())
}

/// A PostgreSQL URL whose connections use a new, empty schema.
pub async fn postgres_url() -> String {
    let base = std::env::var("PYTI_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    format!("{base}?options=-c%20search_path%3D{schema}")
}

pub fn settings(prefix: &str, lease: Duration, max_attempts: u32) -> Settings {
    Settings {
        amqp_url: AMQP.to_owned(),
        queue_prefix: prefix.to_owned(),
        lease,
        max_attempts,
        index_url: "https://pypi.org/simple".to_owned(),
        reap_interval: Duration::from_millis(200),
        worker_queue_ttl: Duration::from_secs(5),
    }
}

/// A master running in this process.
pub struct Master {
    pub farm: Arc<pyti_master::Master>,
    pub address: String,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Master {
    /// A test that panicked still deletes its queues (from a thread of its own, as the
    /// test's runtime is going away).
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.stop.cancel();
        server.abort();
        let prefix = self.farm.broker().topology.prefix.clone();
        let known = self.farm.broker().known_queue_names();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(delete_queues_named(&prefix, &known, &[]));
        })
        .join();
    }
}

impl Master {
    pub async fn start(settings: Settings, database: &str) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            pyti::telemetry::init(false);
        }
        let store = pyti_master::store::open(database).await.unwrap();
        let stop = CancellationToken::new();
        let farm = pyti_master::Master::start(settings, store, stop.clone())
            .await
            .unwrap();
        let (listener, addr) = pyti::grpc::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let service = pyti_master::service::MasterService::new(Arc::clone(&farm));
        let token = stop.clone();
        let server = tokio::spawn(async move {
            pyti_master::service::serve(service, listener, token.cancelled_owned())
                .await
                .unwrap();
        });
        Self {
            farm,
            address: format!("http://{addr}"),
            stop,
            server: Some(server),
        }
    }

    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::connect(self.address.clone())
            .await
            .unwrap()
    }

    pub async fn registry(&self) -> WorkerRegistryClient<Channel> {
        WorkerRegistryClient::connect(self.address.clone())
            .await
            .unwrap()
    }

    /// Stops the master, then deletes its queues (`worker_ids` name the worker queues)
    /// once nothing can declare them again.
    pub async fn finish(mut self, worker_ids: &[&str]) {
        let known = self.farm.broker().known_queue_names();
        let prefix = self.farm.broker().topology.prefix.clone();
        self.stop.cancel();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.farm.stopped().await;
        delete_queues_named(&prefix, &known, worker_ids).await;
    }
}

/// Deletes the queues of `prefix` through a master-less broker handle.
pub async fn delete_queues(prefix: &str, platforms: &[&str], worker_ids: &[&str]) {
    let names: Vec<String> = platforms
        .iter()
        .map(|p| format!("{prefix}.platform.{p}"))
        .collect();
    delete_queues_named(prefix, &names, worker_ids).await;
}

async fn delete_queues_named(prefix: &str, names: &[String], worker_ids: &[&str]) {
    let stop = CancellationToken::new();
    let (broker, supervisor) = pyti_master::broker::Broker::start(
        AMQP,
        pyti_master::broker::Topology {
            prefix: prefix.to_owned(),
            worker_queue_ttl_ms: 1,
        },
        stop.clone(),
    );
    let mut extra: Vec<String> = worker_ids
        .iter()
        .map(|w| broker.topology.worker_queue(w))
        .collect();
    extra.extend(names.iter().cloned());
    broker.delete_topology(&extra).await.unwrap();
    stop.cancel();
    let _ = supervisor.await;
}

/// What the test executor did: (worker, job, attempt) per run.
pub type Runs = Arc<Mutex<Vec<(String, String, u32)>>>;

/// An executor that "runs" a job by waiting `duration` (or until cancelled) while it
/// walks the job's slot lease through the states a VM run takes, or refuses every job
/// (as a worker whose VMs all broke would).
pub struct TestExecutor {
    pub worker_id: String,
    pub duration: Duration,
    pub runs: Runs,
    pub refuse: bool,
}

impl JobExecutor for TestExecutor {
    fn can_run(&self, _job: &QueuedJob) -> Result<(), String> {
        if self.refuse {
            Err("every VM of this test worker is broken".to_owned())
        } else {
            Ok(())
        }
    }

    async fn run(
        &self,
        job: QueuedJob,
        lease: SlotLease,
        cancel: CancellationToken,
    ) -> AttemptReport {
        self.runs
            .lock()
            .unwrap()
            .push((self.worker_id.clone(), job.job_id.clone(), job.attempt));
        lease.running().unwrap();
        let cancelled = tokio::select! {
            () = cancel.cancelled() => true,
            () = tokio::time::sleep(self.duration) => false,
        };
        if !cancelled {
            lease.collecting().unwrap();
        }
        lease.rolling_back().unwrap();
        lease.release().unwrap();
        let spec = job.spec.unwrap_or_default();
        AttemptReport {
            outcome: if cancelled {
                Outcome::Cancelled
            } else {
                Outcome::Passed
            },
            tasks: vec![proto::TaskResult {
                task: "install".into(),
                status: proto::TaskStatus::Passed as i32,
                duration_s: self.duration.as_secs_f64(),
                metrics_json: "{}".into(),
                log_name: "install.log".into(),
                summary: format!("ran on {}", self.worker_id),
                ..Default::default()
            }],
            logs: vec![(
                "install.log".into(),
                format!("installed {} on {}\n", spec.project_name, self.worker_id).into_bytes(),
            )],
            results_json: format!("{{\"version\":1,\"worker\":\"{}\"}}", self.worker_id),
            resolved_version: spec.project_version,
            ..Default::default()
        }
    }
}

/// A worker running in this process: WorkerControl plus the master link.
pub struct Worker {
    pub id: String,
    pub handle: MasterLinkHandle,
    pub root: PathBuf,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The worker configuration text for one platform with `vms` slots and `variants`.
pub fn worker_config(
    id: &str,
    root: &Path,
    master: &str,
    prefix: &str,
    platform: &str,
    vms: u32,
    variants: &[&str],
) -> pyti_worker::config::WorkerConfig {
    let text = format!(
        "[config]\nworker_id = {id}\ntotal_vms = {vms}\npyti_slave_root = {}\nmaster = {master}\nqueue_prefix = {prefix}\nlisten = 127.0.0.1:0\n\n[platform {platform}]\nvms = {vms}\nvariants = {}\n",
        root.display(),
        variants.join(", ")
    );
    let file = pyti::config::IniFile::parse(&text, Path::new("worker.ini")).unwrap();
    pyti_worker::config::WorkerConfig::from_ini(&file, &|_| None).unwrap()
}

impl Worker {
    /// Starts a worker for `platform` with `vms` slots offering `variants`.
    // Every test states all of these; a builder would only hide them.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        id: &str,
        root: &Path,
        master: &str,
        prefix: &str,
        platform: &str,
        vms: u32,
        variants: &[&str],
        duration: Duration,
        runs: Runs,
    ) -> Self {
        Self::launch(
            id, root, master, prefix, platform, vms, variants, duration, runs, false,
        )
        .await
    }

    /// Like `start`; with `refuse`, the worker gives back every job it is handed.
    #[allow(clippy::too_many_arguments)]
    pub async fn launch(
        id: &str,
        root: &Path,
        master: &str,
        prefix: &str,
        platform: &str,
        vms: u32,
        variants: &[&str],
        duration: Duration,
        runs: Runs,
        refuse: bool,
    ) -> Self {
        let config = worker_config(id, root, master, prefix, platform, vms, variants);
        let (listener, addr) = pyti::grpc::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let mut settings = MasterLinkSettings::from_config(&config);
        settings.control_address = format!("http://{addr}");
        settings.register_interval = Duration::from_secs(1);
        let pool = SlotPool::new(config.slot_names()).unwrap();
        let handle = MasterLinkHandle::new(WorkerCapacity::new(&config, pool));
        let control = pyti_worker::control::ControlService::new(handle.capacity().clone())
            .with_master_link(handle.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let server = tokio::spawn(async move {
            pyti_worker::control::serve(control, listener, token.cancelled_owned())
                .await
                .unwrap();
        });
        let executor = Arc::new(TestExecutor {
            worker_id: id.to_owned(),
            duration,
            runs,
            refuse,
        });
        let link = tokio::spawn(pyti_worker::masterlink::run(
            settings,
            executor,
            handle.clone(),
            stop.clone(),
        ));
        let link = tokio::spawn(async move {
            link.await.unwrap().unwrap();
        });
        Self {
            id: id.to_owned(),
            handle,
            root: root.to_owned(),
            stop,
            tasks: vec![server, link],
        }
    }

    /// Stops taking work, waits for running jobs to be reported, stops.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Polls until every job in `ids` has ended, or panics after `limit`.
pub async fn wait_ended(
    jobs: &mut JobServiceClient<Channel>,
    ids: &[String],
    limit: Duration,
) -> BTreeMap<String, proto::Job> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut ended = BTreeMap::new();
        let mut open = Vec::new();
        for id in ids {
            if let Ok(job) = jobs
                .get_job(proto::GetJobRequest { job_id: id.clone() })
                .await
            {
                let job = job.into_inner();
                open.push(job.clone());
                if matches!(
                    job.state(),
                    JobState::Succeeded
                        | JobState::Failed
                        | JobState::TimedOut
                        | JobState::Cancelled
                        | JobState::Dead
                ) {
                    ended.insert(id.clone(), job);
                }
            }
        }
        if ended.len() == ids.len() {
            return ended;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} jobs ended within {limit:?}: {:#?}",
            ended.len(),
            ids.len(),
            open.iter()
                .filter(|j| !ended.contains_key(&j.job_id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until `check` holds, or panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn spec(project: &str, version: &str, platform: &str, variants: &[&str]) -> proto::JobSpec {
    proto::JobSpec {
        project_name: project.to_owned(),
        project_version: version.to_owned(),
        recipe_identifier: "recipe".to_owned(),
        platform_identifier: platform.to_owned(),
        platform_variants: variants.iter().map(|v| (*v).to_owned()).collect(),
    }
}

pub async fn submit(
    jobs: &mut JobServiceClient<Channel>,
    spec: proto::JobSpec,
    anyway: bool,
) -> Result<proto::Job, tonic::Status> {
    jobs.submit_job(proto::SubmitJobRequest {
        spec: Some(spec),
        queue_without_capacity: anyway,
    })
    .await
    .map(|r| r.into_inner().job.unwrap())
}

/// The body of a worker child process (see the fault tests): a worker configured from
/// `PYTI_TEST_*` variables that runs until it is killed; does nothing without them.
pub fn child_worker_process(platform: &str) {
    if std::env::var_os("PYTI_TEST_CHILD_WORKER").is_none() {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let worker = Worker::start(
            &var("PYTI_TEST_WORKER_ID"),
            std::path::Path::new(&var("PYTI_TEST_ROOT")),
            &var("PYTI_TEST_MASTER"),
            &var("PYTI_TEST_PREFIX"),
            platform,
            var("PYTI_TEST_VMS").parse().unwrap(),
            &[],
            Duration::from_millis(var("PYTI_TEST_RUN_MS").parse().unwrap()),
            Arc::new(Mutex::new(Vec::new())),
        )
        .await;
        std::future::pending::<()>().await;
        drop(worker);
    });
}

/// Runs a worker in a child process (the calling test binary again, whose
/// `child_worker_process` test calls [`child_worker_process`]), so it can be killed -9.
pub fn spawn_worker_process(
    master: &str,
    prefix: &str,
    id: &str,
    root: &Path,
    vms: u32,
    run_ms: u64,
) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_worker_process",
            "--ignored",
            "--nocapture",
        ])
        .env("PYTI_TEST_CHILD_WORKER", "1")
        .env("PYTI_TEST_MASTER", master)
        .env("PYTI_TEST_PREFIX", prefix)
        .env("PYTI_TEST_WORKER_ID", id)
        .env("PYTI_TEST_ROOT", root)
        .env("PYTI_TEST_VMS", vms.to_string())
        .env("PYTI_TEST_RUN_MS", run_ms.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The jobs recorded RUNNING on `worker_id`.
pub async fn running_on(jobs: &mut JobServiceClient<Channel>, worker_id: &str) -> Vec<proto::Job> {
    jobs.list_jobs(proto::ListJobsRequest {
        states: vec![JobState::Running as i32],
        worker_id: worker_id.to_owned(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .jobs
}

/// Waits until a worker registered `platform`: a probe for a variant nobody offers is
/// refused with the list of what the farm offers, which then names the platform.
pub async fn wait_offered(jobs: &JobServiceClient<Channel>, platform: &str, limit: Duration) {
    wait_until("the worker registered", limit, || {
        let mut jobs = jobs.clone();
        async move {
            submit(
                &mut jobs,
                spec("probe", "1.0", platform, &["nothing"]),
                false,
            )
            .await
            .unwrap_err()
            .message()
            .contains(&format!("{platform}[]"))
        }
    })
    .await;
}

/// Waits until some job is recorded RUNNING on `worker_id`.
pub async fn wait_running_on(jobs: &JobServiceClient<Channel>, worker_id: &str, limit: Duration) {
    wait_until("the job running", limit, || {
        let mut jobs = jobs.clone();
        let worker_id = worker_id.to_owned();
        async move { !running_on(&mut jobs, &worker_id).await.is_empty() }
    })
    .await;
}
