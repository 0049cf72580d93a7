//! Fault tests: each submits a batch, breaks something (kill -9 a worker, restart
//! RabbitMQ, kill -9 and restart the master), and counts jobs submitted against
//! results stored: nothing lost, nothing stored twice.

use std::time::Duration;

use pyti::proto::{self, JobState, Outcome};
use pyti_testkit::farm::client::{
    get_job, running_on, spec, submit, submit_batch, wait_connected, wait_ended, wait_offered,
    wait_running_on,
};
use pyti_testkit::farm::{TestFarm, AMQP, PLATFORM};
use pyti_testkit::wait::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_jobs_finish_on_the_other_worker() {
    a_killed_worker_s_jobs_finish_on_the_other_worker_in(false).await;
}

/// The same with every process on mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_jobs_finish_on_the_other_worker_over_mtls() {
    a_killed_worker_s_jobs_finish_on_the_other_worker_in(true).await;
}

async fn a_killed_worker_s_jobs_finish_on_the_other_worker_in(mtls: bool) {
    let farm = TestFarm::builder().lease_s(3).mtls_if(mtls).start().await;
    let doomed = farm.worker("doomed");
    let doomed_id = doomed.worker_id().to_owned();
    let mut doomed = doomed.slots(2).run_ms(60_000).spawn_process();
    let mut jobs = farm.jobs().await;
    let registry = farm.registry().await;
    wait_connected(&registry, &doomed_id, Duration::from_secs(60)).await;
    let ids = submit_batch(&mut jobs, "batch", 6).await;
    wait_running_on(&jobs, &doomed_id, 2, Duration::from_secs(30)).await;
    let lost: Vec<String> = running_on(&mut jobs, &doomed_id)
        .await
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let steady_id = farm.worker("steady").slots(2).run_ms(200).start().await.id;

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
    farm.assert_stored_once(&ids).await;
    assert_eq!(
        farm.runs().len(),
        ids.len(),
        "each job ran once on the steady worker"
    );
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_and_restarted_loses_no_job() {
    a_master_killed_and_restarted_loses_no_job_in(false).await;
}

/// The same with every process on mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_and_restarted_loses_no_job_over_mtls() {
    a_master_killed_and_restarted_loses_no_job_in(true).await;
}

async fn a_master_killed_and_restarted_loses_no_job_in(mtls: bool) {
    let mut farm = TestFarm::builder()
        .binary(env!("CARGO_BIN_EXE_pyti-master"))
        .lease_s(5)
        .mtls_if(mtls)
        .start()
        .await;
    let mut jobs = farm.jobs().await;
    for name in ["one", "two"] {
        farm.worker(name).run_ms(1500).start().await;
    }
    wait_offered(&jobs, PLATFORM, Duration::from_secs(30)).await;
    let ids = submit_batch(&mut jobs, "through", 8).await;
    wait_until("jobs running", Duration::from_secs(30), || {
        let mut jobs = jobs.clone();
        async move { !running_on(&mut jobs, "").await.is_empty() }
    })
    .await;
    farm.master_process().kill_9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    farm.master_process().spawn().await;
    let mut jobs = farm.jobs().await;
    let ended = wait_ended(&mut jobs, &ids, Duration::from_secs(120)).await;
    for (id, job) in &ended {
        assert_eq!(job.state(), JobState::Succeeded, "{id}: {job:#?}");
    }
    farm.assert_stored_once(&ids).await;
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_attempt_limit_a_job_is_dead_and_in_the_dead_queue() {
    use lapin::options::BasicGetOptions;
    use prost::Message;

    // A long lease, moved past by injected time rather than waited for.
    let farm = TestFarm::builder().lease_s(600).max_attempts(1);
    let farm = farm.start().await;
    let worker = farm.worker("stuck").run_ms(600_000).start().await;
    let mut jobs = farm.jobs().await;
    wait_offered(&jobs, PLATFORM, Duration::from_secs(20)).await;
    let job = submit(&mut jobs, spec("poison", "1.0", PLATFORM, &[])).await;
    wait_running_on(&jobs, &worker.id, 1, Duration::from_secs(20)).await;
    let master = farm.master();
    let later = master.clock().now_ms() + 3_600_000;
    assert_eq!(master.reap_lapsed_leases(later).await.unwrap(), 1);
    let dead = get_job(&mut jobs, &job.job_id).await;
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

    let connection = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(
            &format!("{}.dead", farm.prefix),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the dead queue holds the job");
    let queued = proto::QueuedJob::decode(message.delivery.data.as_slice()).unwrap();
    assert_eq!(queued.job_id, job.job_id);
    assert!(queued.reason.contains("lease lapsed"), "{}", queued.reason);
    // The worker, stopping the job, reports late results: they change nothing.
    assert!(worker.handle.cancel(&job.job_id));
    wait_until(
        "the worker stopped the job",
        Duration::from_secs(30),
        || {
            let handle = worker.handle.clone();
            async move { handle.running() == 0 }
        },
    )
    .await;
    assert_eq!(master.store().count_results(&job.job_id).await.unwrap(), 0);
    let still = get_job(&mut jobs, &job.job_id).await;
    assert_eq!(still.state(), JobState::Dead);
    connection.close(200, "done").await.unwrap();
    farm.finish().await;
}

pyti_testkit::child_worker_process_test!();
