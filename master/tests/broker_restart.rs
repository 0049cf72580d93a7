//! RabbitMQ restarted under a farm with jobs queued and running: nothing lost, nothing
//! stored twice. In its own test binary because it takes the broker away from every
//! test running at the same time.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spec, submit, wait_ended, Master, Runs, Worker};
use pyti::proto::JobState;

const PLATFORM: &str = "linux-debian";

/// Restarts the RabbitMQ application, and makes sure it is started again even when
/// the test fails half-way.
struct BrokerRestart;

impl BrokerRestart {
    fn stop() -> Self {
        let status = Command::new("rabbitmqctl")
            .arg("stop_app")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "rabbitmqctl stop_app");
        Self
    }
}

impl Drop for BrokerRestart {
    fn drop(&mut self) {
        let status = Command::new("rabbitmqctl")
            .arg("start_app")
            .stdout(Stdio::null())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "rabbitmqctl start_app: restore the broker by hand"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rabbitmq_restart_loses_no_queued_or_running_job() {
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(20), 3),
        database.to_str().unwrap(),
    )
    .await;
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let id = format!("survivor-{}", uuid::Uuid::new_v4().simple());
    let worker = Worker::start(
        &id,
        &dir.path().join("w"),
        &master.address,
        &prefix,
        PLATFORM,
        2,
        &[],
        Duration::from_millis(1500),
        Arc::clone(&runs),
    )
    .await;
    let mut jobs = master.jobs().await;
    common::wait_offered(&jobs, PLATFORM, Duration::from_secs(20)).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            submit(
                &mut jobs,
                spec(&format!("queued-{n}"), "1.0", PLATFORM, &[]),
                false,
            )
            .await
            .unwrap()
            .job_id,
        );
    }
    common::wait_until("two jobs running", Duration::from_secs(30), || {
        let mut jobs = jobs.clone();
        let id = id.clone();
        async move { common::running_on(&mut jobs, &id).await.len() == 2 }
    })
    .await;
    {
        let _restart = BrokerRestart::stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // While RabbitMQ is away, SubmitJob says so instead of pretending.
        let refused = submit(
            &mut jobs,
            spec("during-outage", "1.0", PLATFORM, &[]),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    }
    let ended = wait_ended(&mut jobs, &ids, Duration::from_secs(120)).await;
    for (id, job) in &ended {
        assert_eq!(job.state(), JobState::Succeeded, "{id}: {job:#?}");
    }
    for id in &ids {
        assert_eq!(
            master.farm.store().count_results(id).await.unwrap(),
            1,
            "results of {id}"
        );
    }
    let late = submit(
        &mut jobs,
        spec("after-restart", "1.0", PLATFORM, &[]),
        false,
    )
    .await
    .unwrap();
    wait_ended(&mut jobs, &[late.job_id], Duration::from_secs(30)).await;
    worker.stop().await;
    master.finish(&[&id]).await;
}
