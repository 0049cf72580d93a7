//! Fault tests: each submits a batch, breaks something (kill -9 a worker, restart
//! RabbitMQ, kill -9 and restart the master), and counts jobs submitted against
//! results stored: nothing lost, nothing stored twice.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spawn_worker_process, spec, submit, wait_ended, Master, Runs, Worker};
use pyti::proto::{self, JobState, Outcome};

const PLATFORM: &str = "linux-debian";

/// The body of the child process of `spawn_worker_process`; does nothing when run
/// by hand.
#[test]
#[ignore = "runs only as the child process of a fault test"]
fn child_worker_process() {
    common::child_worker_process(PLATFORM);
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn count_stored(master: &Master, ids: &[String]) {
    for id in ids {
        assert_eq!(
            master.farm.store().count_results(id).await.unwrap(),
            1,
            "results of {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_jobs_finish_on_the_other_worker() {
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(3), 3),
        database.to_str().unwrap(),
    )
    .await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (doomed_id, steady_id) = (format!("doomed-{suffix}"), format!("steady-{suffix}"));
    let mut doomed = spawn_worker_process(
        &master.address,
        &prefix,
        &doomed_id,
        &dir.path().join("doomed"),
        2,
        60_000,
    );
    let mut jobs = master.jobs().await;
    let registry = master.registry().await;
    common::wait_until(
        "the doomed worker connected",
        Duration::from_secs(60),
        || {
            let mut registry = registry.clone();
            let id = doomed_id.clone();
            async move {
                let workers = registry
                    .list_workers(proto::ListWorkersRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .workers;
                workers.iter().any(|w| w.worker_id == id && w.connected)
            }
        },
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            submit(
                &mut jobs,
                spec(&format!("batch-{n}"), "1.0", PLATFORM, &[]),
                false,
            )
            .await
            .unwrap()
            .job_id,
        );
    }
    common::wait_until(
        "two jobs running on the doomed worker",
        Duration::from_secs(30),
        || {
            let mut jobs = jobs.clone();
            let id = doomed_id.clone();
            async move { common::running_on(&mut jobs, &id).await.len() == 2 }
        },
    )
    .await;
    let lost: Vec<String> = common::running_on(&mut jobs, &doomed_id)
        .await
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    kill_9(&mut doomed);
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let steady = Worker::start(
        &steady_id,
        &dir.path().join("steady"),
        &master.address,
        &prefix,
        PLATFORM,
        2,
        &[],
        Duration::from_millis(200),
        Arc::clone(&runs),
    )
    .await;

    let ended = wait_ended(&mut jobs, &ids, Duration::from_secs(90)).await;
    for (id, job) in &ended {
        assert_eq!(job.state(), JobState::Succeeded, "{id}: {job:#?}");
        assert_eq!(job.worker_id, steady_id);
    }
    for id in &lost {
        assert_eq!(
            ended[id].attempt, 2,
            "the lapsed lease gave {id} a second attempt"
        );
        let reasons: Vec<&str> = ended[id]
            .history
            .iter()
            .map(|h| h.reason.as_str())
            .collect();
        assert!(
            reasons.iter().any(|r| r.contains("lease lapsed")),
            "{reasons:?}"
        );
    }
    count_stored(&master, &ids).await;
    assert_eq!(
        runs.lock().unwrap().len(),
        ids.len(),
        "each job ran once on the steady worker"
    );
    steady.stop().await;
    master.finish(&[&doomed_id, &steady_id]).await;
}

fn start_master_binary(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pyti-master"))
        .arg("--config")
        .arg(config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_and_restarted_loses_no_job() {
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("http://127.0.0.1:{port}");
    let database = dir.path().join("master.sqlite");
    let config = dir.path().join("master.ini");
    std::fs::write(
        &config,
        format!(
            "[config]\npyti_master_root = {root}\nlisten = 127.0.0.1:{port}\nqueue_prefix = {prefix}\nlease_s = 5\ndatabase = {db}\n",
            root = dir.path().display(),
            db = database.display()
        ),
    )
    .unwrap();
    let mut master = start_master_binary(&config);
    let connect = || async {
        let mut last = None;
        for _ in 0..200 {
            match proto::job_service_client::JobServiceClient::connect(address.clone()).await {
                Ok(client) => return client,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the master did not come up: {last:?}");
    };
    let mut jobs = connect().await;
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let ids_of_workers = [format!("one-{suffix}"), format!("two-{suffix}")];
    let mut workers = Vec::new();
    for (n, id) in ids_of_workers.iter().enumerate() {
        workers.push(
            Worker::start(
                id,
                &dir.path().join(format!("w{n}")),
                &address,
                &prefix,
                PLATFORM,
                1,
                &[],
                Duration::from_millis(1500),
                Arc::clone(&runs),
            )
            .await,
        );
    }
    common::wait_until("the workers registered", Duration::from_secs(30), || {
        let mut jobs = jobs.clone();
        async move {
            submit(
                &mut jobs,
                spec("probe", "1.0", PLATFORM, &["nothing"]),
                false,
            )
            .await
            .unwrap_err()
            .message()
            .contains("linux-debian[]")
        }
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            submit(
                &mut jobs,
                spec(&format!("through-{n}"), "1.0", PLATFORM, &[]),
                false,
            )
            .await
            .unwrap()
            .job_id,
        );
    }
    common::wait_until("jobs running", Duration::from_secs(30), || {
        let mut jobs = jobs.clone();
        async move {
            let running = jobs
                .list_jobs(proto::ListJobsRequest {
                    states: vec![JobState::Running as i32],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .jobs;
            !running.is_empty()
        }
    })
    .await;
    kill_9(&mut master);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut master = start_master_binary(&config);
    let mut jobs = connect().await;
    let ended = wait_ended(&mut jobs, &ids, Duration::from_secs(120)).await;
    for (id, job) in &ended {
        assert_eq!(job.state(), JobState::Succeeded, "{id}: {job:#?}");
    }
    let store = pyti_master::store::open(database.to_str().unwrap())
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(store.count_results(id).await.unwrap(), 1, "results of {id}");
    }
    for worker in workers {
        worker.stop().await;
    }
    kill_9(&mut master);
    common::delete_queues(
        &prefix,
        &[PLATFORM],
        &[&ids_of_workers[0], &ids_of_workers[1]],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_attempt_limit_a_job_is_dead_and_in_the_dead_queue() {
    use lapin::options::BasicGetOptions;
    use prost::Message;

    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    // A long lease, moved past by injected time rather than waited for.
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(600), 1),
        database.to_str().unwrap(),
    )
    .await;
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let id = format!("stuck-{}", uuid::Uuid::new_v4().simple());
    let worker = Worker::start(
        &id,
        &dir.path().join("w"),
        &master.address,
        &prefix,
        PLATFORM,
        1,
        &[],
        Duration::from_secs(600),
        Arc::clone(&runs),
    )
    .await;
    let mut jobs = master.jobs().await;
    common::wait_offered(&jobs, PLATFORM, Duration::from_secs(20)).await;
    let job = submit(&mut jobs, spec("poison", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap();
    common::wait_running_on(&jobs, &id, Duration::from_secs(20)).await;
    let later = master.farm.clock().now_ms() + 3_600_000;
    assert_eq!(master.farm.reap_lapsed_leases(later).await.unwrap(), 1);
    let dead = jobs
        .get_job(proto::GetJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.state(), JobState::Dead);
    assert_eq!(dead.outcome(), Outcome::WorkerLost);
    assert!(
        dead.history
            .last()
            .unwrap()
            .reason
            .contains("attempt 1 of 1"),
        "{:?}",
        dead.history
    );

    let connection =
        lapin::Connection::connect(common::AMQP, lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(&format!("{prefix}.dead"), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the dead queue holds the job");
    let queued = proto::QueuedJob::decode(message.delivery.data.as_slice()).unwrap();
    assert_eq!(queued.job_id, job.job_id);
    assert!(queued.reason.contains("lease lapsed"), "{}", queued.reason);
    // The worker, stopping the job, reports late results: they change nothing.
    assert!(worker.handle.cancel(&job.job_id));
    common::wait_until(
        "the worker stopped the job",
        Duration::from_secs(30),
        || {
            let handle = worker.handle.clone();
            async move { handle.running() == 0 }
        },
    )
    .await;
    assert_eq!(
        master
            .farm
            .store()
            .count_results(&job.job_id)
            .await
            .unwrap(),
        0
    );
    let still = jobs
        .get_job(proto::GetJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.state(), JobState::Dead);
    let _ = connection.close(200, "done").await;
    worker.stop().await;
    master.finish(&[&id]).await;
}
