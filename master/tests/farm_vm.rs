//! The whole farm with a real VM: a master (SQLite) and RabbitMQ, a worker running the
//! VM pipeline through libvirt, one job from PyPI submitted, run in a VM, its results
//! streamed back and retrievable. Needs root and libvirtd like the worker's VM tests.

use std::sync::Arc;
use std::time::Duration;

use pyti::proto::{self, JobState};
use pyti_guest::recipe::RecipeBook;
use pyti_testkit::farm::client::{get_results, list_workers, spec, submit, wait_job_ended};
use pyti_testkit::farm::{TestFarm, PLATFORM};
use pyti_testkit::vm;
use pyti_testkit::wait::wait_until;
use pyti_worker::manager::Manager;
use pyti_worker::stateofvm::SlotPool;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_from_pypi_runs_in_a_real_vm_through_the_farm() {
    a_job_from_pypi_runs_in_a_real_vm_through_the_farm_in(false).await;
}

/// The same with every process on mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_from_pypi_runs_in_a_real_vm_through_the_farm_over_mtls() {
    a_job_from_pypi_runs_in_a_real_vm_through_the_farm_in(true).await;
}

async fn a_job_from_pypi_runs_in_a_real_vm_through_the_farm_in(mtls: bool) {
    let farm = TestFarm::builder()
        .lease_s(60)
        .max_attempts(2)
        .mtls_if(mtls);
    let farm = farm.start().await;

    let agent = tokio::task::spawn_blocking(vm::static_agent).await.unwrap();
    let worker_id = format!("vm{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let builder = farm.worker("vm").id(&worker_id).variants(&["python3.11"]);
    let mut config = builder.config();
    config.root = vm::test_root();
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
    let worker = builder.start_with(&config, pool, manager).await;

    let mut registry = farm.registry().await;
    wait_until("the worker registered", Duration::from_secs(60), || {
        let mut registry = registry.clone();
        async move { !list_workers(&mut registry).await.is_empty() }
    })
    .await;

    let mut jobs = farm.jobs().await;
    let mut spec = spec("rarfile", "4.2", PLATFORM, &["python3.11"]);
    spec.recipe_identifier = "install".into();
    let job = submit(&mut jobs, spec).await;
    let done = wait_job_ended(&mut jobs, &job.job_id, Duration::from_secs(900)).await;
    let results = get_results(&mut jobs, &job.job_id).await;
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

    worker.stop().await;
    list_workers(&mut registry).await;
    farm.finish().await;
    let leftovers = vm::domains_with_prefix(&format!("pyti-{worker_id}-"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
