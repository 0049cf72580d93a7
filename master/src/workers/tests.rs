use std::time::Duration;

use super::*;
use crate::broker::Topology;
use crate::clock::ManualClock;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Workers over a fresh SQLite store, on `clock`. The broker is never asked here.
async fn workers(
    clock: &ManualClock,
    dir: &tempfile::TempDir,
) -> (Arc<Workers>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let store = crate::store::open(dir.path().join("m.sqlite").to_str().unwrap())
        .await
        .unwrap();
    let topology = Topology {
        prefix: format!("pyti-unit-{}", uuid::Uuid::new_v4().simple()),
        worker_queue_ttl_ms: 1_000,
    };
    let (broker, _supervisor) = Broker::start(AMQP, topology, shutdown.clone());
    let runtime = Runtime::new(clock.clock(), shutdown.clone());
    let workers = Workers::new(
        store,
        broker,
        DispatchSignals::default(),
        runtime,
        Duration::from_secs(30),
    );
    (Arc::new(workers), shutdown)
}

fn one_slot(platform: &str) -> Capacity {
    Capacity {
        worker_id: "w1".into(),
        platforms: vec![PlatformCapacity {
            platform: platform.into(),
            total: 1,
            ready: 1,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_worker_that_gave_a_job_back_gets_none_until_the_clock_passes_the_pause() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(1_000_000);
    let (workers, shutdown) = workers(&clock, &dir).await;
    workers.report("w1", one_slot("linux-debian"));
    let request = vec![("j1".to_owned(), Requirement::new("linux-debian", &[]))];
    workers.given_back("j0", "w1", "linux-debian");
    assert!(workers.plan(&request).is_empty(), "paused");
    clock.advance(Duration::from_millis(
        u64::try_from(GIVE_BACK_PAUSE_MS).unwrap() - 1,
    ));
    assert!(workers.plan(&request).is_empty(), "still paused");
    clock.advance(Duration::from_millis(1));
    assert_eq!(workers.plan(&request), vec![(0, "w1".to_owned())]);
    shutdown.cancel();
}

#[tokio::test]
async fn offers_count_every_worker_but_placements_only_connected_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(5_000);
    let (workers, shutdown) = workers(&clock, &dir).await;
    workers.report("w1", one_slot("linux-debian"));
    let here = JobSpec::from_requirement("x", None, Some("linux-debian"), &[]).unwrap();
    assert!(workers.check_offered(&here).is_ok());
    let elsewhere = JobSpec::from_requirement("x", None, Some("windows"), &[]).unwrap();
    let refused = workers.check_offered(&elsewhere).unwrap_err().to_string();
    assert!(
        refused.contains("the farm offers: linux-debian[]"),
        "{refused}"
    );
    let request = [("j1".to_owned(), Requirement::new("linux-debian", &[]))];
    workers.set_connected("w1", false);
    assert!(workers.plan(&request).is_empty(), "disconnected: nothing");
    assert!(workers.check_offered(&here).is_ok(), "still offered");
    workers.set_connected("w1", true);
    assert_eq!(workers.plan(&request), vec![(0, "w1".to_owned())]);
    workers.forget("j1");
    shutdown.cancel();
}
