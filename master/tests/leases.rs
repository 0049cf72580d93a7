//! Leases by the master's clock: a manual clock moved past a deadline makes the lease
//! lapse at once, with no waiting for real time to pass.

use std::sync::Arc;
use std::time::Duration;

use pyti::model::JobSpec;
use pyti::proto::JobState;
use pyti_master::clock::ManualClock;
use pyti_master::jobs::{LeaseKey, Start, Submission};
use pyti_master::Master;
use pyti_testkit::farm::{TestFarm, PLATFORM};
use pyti_testkit::wait::wait_until;

const LEASE: Duration = Duration::from_secs(60);

/// A farm whose master goes by `clock`, with a 60 s lease, its reaper running every
/// `reap_interval_ms`.
async fn farm(clock: &ManualClock, reap_interval_ms: u64) -> TestFarm {
    TestFarm::builder()
        .lease_s(LEASE.as_secs())
        .reap_interval_ms(reap_interval_ms)
        .clock(clock.clock())
        .start()
        .await
}

/// Submits a job nobody offers a VM for and starts it as worker `w1` would.
async fn started_job(master: &Master) -> LeaseKey {
    let spec = JobSpec::from_requirement("leased==1.0", None, Some(PLATFORM), &[]).unwrap();
    let job = master
        .jobs()
        .submit(Submission {
            spec,
            queue_without_capacity: true,
            idempotency_key: String::new(),
            submitted_by: "local".into(),
        })
        .await
        .unwrap();
    LeaseKey {
        worker_id: "w1".into(),
        job_id: job.job_id,
        attempt: 1,
        lease_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lapses_when_the_clock_passes_its_deadline_and_not_before() {
    let clock = ManualClock::starting_now();
    // The reaper looks once at start, then not for an hour: this test reaps itself.
    let farm = farm(&clock, 3_600_000).await;
    let master = farm.master();
    let key = started_job(master).await;
    let jobs = master.jobs();
    let started = jobs.start(&key).await.unwrap();
    assert_eq!(
        started,
        Start::Proceed {
            lease_deadline_ms: Some(clock.now_ms() + 60_000)
        }
    );

    clock.advance(LEASE - Duration::from_millis(1));
    assert_eq!(master.reap_lapsed_leases(clock.now_ms()).await.unwrap(), 0);
    let renewal = jobs.renew(&key).await.unwrap();
    assert_eq!(renewal.lease_deadline_ms, Some(clock.now_ms() + 60_000));
    assert!(!renewal.cancelled);
    clock.advance(LEASE - Duration::from_secs(1));
    assert_eq!(
        master.reap_lapsed_leases(clock.now_ms()).await.unwrap(),
        0,
        "the renewal moved the deadline"
    );

    clock.advance(Duration::from_secs(2));
    assert_eq!(master.reap_lapsed_leases(clock.now_ms()).await.unwrap(), 1);
    let job = jobs.job(&key.job_id).await.unwrap();
    assert_eq!(
        (job.state, job.attempt, job.worker_id.as_str()),
        (JobState::Queued, 2, "")
    );
    let last = job.history.last().unwrap();
    assert_eq!(last.reason, "lease lapsed on w1; queued again");
    assert_eq!(last.at_ms, clock.now_ms());
    // The worker that lost it hears so at its next renewal.
    let late = jobs.renew(&key).await.unwrap();
    assert!(late.cancelled);
    assert_eq!(late.lease_deadline_ms, None);
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_goes_by_the_masters_clock() {
    let clock = ManualClock::starting_now();
    let farm = farm(&clock, 50).await;
    let key = started_job(farm.master()).await;
    let jobs = farm.master().jobs();
    assert!(matches!(
        jobs.start(&key).await.unwrap(),
        Start::Proceed { .. }
    ));
    // A 60 s lease lapses within the few seconds allowed here only because the
    // reaper asks the clock that was moved.
    clock.advance(LEASE + Duration::from_secs(1));
    wait_until("the reaper moved the job", Duration::from_secs(10), || {
        let jobs = Arc::clone(jobs);
        let job_id = key.job_id.clone();
        async move { jobs.job(&job_id).await.unwrap().attempt == 2 }
    })
    .await;
    let job = jobs.job(&key.job_id).await.unwrap();
    assert_eq!(job.state, JobState::Queued);
    farm.finish().await;
}
