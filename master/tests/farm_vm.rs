//! The whole farm with a real VM: a master (SQLite) and RabbitMQ, a worker running the
//! VM pipeline through libvirt, one job from PyPI submitted, run in a VM, its results
//! streamed back and retrievable. Needs root and libvirtd like the worker's VM tests.

mod common;
#[path = "../../worker/tests/support/mod.rs"]
mod vm_support;

use std::sync::Arc;
use std::time::Duration;

use common::{settings, Master};
use pyti::proto::{self, JobState};
use pyti_guest::recipe::RecipeBook;
use pyti_worker::capacity::WorkerCapacity;
use pyti_worker::control::ControlService;
use pyti_worker::manager::Manager;
use pyti_worker::masterlink::{MasterLinkHandle, MasterLinkSettings};
use pyti_worker::stateofvm::SlotPool;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_from_pypi_runs_in_a_real_vm_through_the_farm() {
    let prefix = common::prefix();
    let database = tempfile::tempdir().unwrap();
    let master = Master::start(
        settings(&prefix, Duration::from_secs(60), 2),
        database.path().join("pyti.sqlite").to_str().unwrap(),
    )
    .await;

    let agent = tokio::task::spawn_blocking(vm_support::static_agent)
        .await
        .unwrap();
    let worker_id = format!("vm{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let root = vm_support::test_root();
    let mut config = common::worker_config(
        &worker_id,
        &root,
        &master.address,
        &prefix,
        "linux-debian",
        1,
        &["python3.11"],
    );
    config.platforms[0].accel = pyti_worker::vms::AcceleratorChoice::Tcg;
    let config = Arc::new(config);
    let pool = SlotPool::new(config.slot_names()).unwrap();
    let manager = Arc::new(
        Manager::start(
            Arc::clone(&config),
            pool.clone(),
            RecipeBook::embedded(),
            Some(&agent),
        )
        .await
        .unwrap(),
    );
    let (listener, addr) = pyti::grpc::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut link_settings = MasterLinkSettings::from_config(&config);
    link_settings.control_address = format!("http://{addr}");
    link_settings.register_interval = Duration::from_secs(1);
    let handle = MasterLinkHandle::new(WorkerCapacity::new(&config, pool));
    let control = ControlService::new(handle.capacity().clone()).with_master_link(handle.clone());
    let stop = CancellationToken::new();
    let server = tokio::spawn(pyti_worker::control::serve(
        control,
        listener,
        stop.clone().cancelled_owned(),
    ));
    let link = tokio::spawn(pyti_worker::masterlink::run(
        link_settings,
        manager,
        handle,
        stop.clone(),
    ));

    let mut registry = master.registry().await;
    common::wait_until("the worker registered", Duration::from_secs(60), || {
        let mut registry = registry.clone();
        async move {
            registry
                .list_workers(proto::ListWorkersRequest {})
                .await
                .is_ok_and(|r| !r.into_inner().workers.is_empty())
        }
    })
    .await;

    let mut jobs = master.jobs().await;
    let mut spec = common::spec("rarfile", "4.2", "linux-debian", &["python3.11"]);
    spec.recipe_identifier = "install".into();
    let job = common::submit(&mut jobs, spec, false).await.unwrap();
    let ended = common::wait_ended(
        &mut jobs,
        std::slice::from_ref(&job.job_id),
        Duration::from_secs(900),
    )
    .await;
    let done = &ended[&job.job_id];
    let results = jobs
        .get_results(proto::GetResultsRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.state(),
        JobState::Succeeded,
        "{done:#?}\n{}",
        results.results_json
    );
    assert_eq!(done.worker_id, worker_id);
    assert_eq!(done.outcome(), proto::Outcome::Passed);
    let tasks: Vec<(&str, proto::TaskStatus)> = results
        .tasks
        .iter()
        .map(|t| (t.task.as_str(), t.status()))
        .collect();
    assert_eq!(
        tasks,
        [
            ("install", proto::TaskStatus::Passed),
            ("import", proto::TaskStatus::Passed)
        ]
    );
    let dict: serde_json::Value = serde_json::from_str(&results.results_json).unwrap();
    assert_eq!(dict["job"]["project_name"], "rarfile");
    assert_eq!(dict["outcome"], "passed");
    assert!(
        results.log_names.iter().any(|l| l == "logs/install.log"),
        "{:?}",
        results.log_names
    );

    stop.cancel();
    link.await.unwrap().unwrap();
    server.await.unwrap().unwrap();
    registry
        .list_workers(proto::ListWorkersRequest {})
        .await
        .unwrap();
    master.finish(&[&worker_id]).await;
    let leftovers = vm_support::domains_with_prefix(&format!("pyti-{worker_id}-"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
