//! RabbitMQ restarted under a farm with jobs queued and running: nothing lost, nothing
//! stored twice. In its own test binary because it takes the broker away from every
//! test running at the same time.

use std::process::{Command, Stdio};
use std::time::Duration;

use pyti::proto::JobState;
use pyti_testkit::farm::client::{
    spec, submit_batch, try_submit, wait_ended, wait_offered, wait_running_on,
};
use pyti_testkit::farm::{TestFarm, PLATFORM};

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
    a_rabbitmq_restart_loses_no_queued_or_running_job_in(false).await;
}

/// The same with every process on mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rabbitmq_restart_loses_no_queued_or_running_job_over_mtls() {
    a_rabbitmq_restart_loses_no_queued_or_running_job_in(true).await;
}

async fn a_rabbitmq_restart_loses_no_queued_or_running_job_in(mtls: bool) {
    let farm = TestFarm::builder().lease_s(20).mtls_if(mtls).start().await;
    let worker = farm.worker("survivor").slots(2).run_ms(1500).start().await;
    let mut jobs = farm.jobs().await;
    wait_offered(&jobs, PLATFORM, Duration::from_secs(20)).await;
    let ids = submit_batch(&mut jobs, "queued", 8).await;
    wait_running_on(&jobs, &worker.id, 2, Duration::from_secs(30)).await;
    {
        let _restart = BrokerRestart::stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // While RabbitMQ is away, SubmitJob says so instead of pretending.
        let outage = spec("during-outage", "1.0", PLATFORM, &[]);
        let refused = try_submit(&mut jobs, outage, false).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    }
    let ended = wait_ended(&mut jobs, &ids, Duration::from_secs(120)).await;
    for (id, job) in &ended {
        assert_eq!(job.state(), JobState::Succeeded, "{id}: {job:#?}");
    }
    farm.assert_stored_once(&ids).await;
    let late = submit_batch(&mut jobs, "after-restart", 1).await;
    wait_ended(&mut jobs, &late, Duration::from_secs(30)).await;
    farm.finish().await;
}
