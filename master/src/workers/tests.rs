use std::time::Duration;

use super::*;
use crate::broker::Topology;
use crate::clock::ManualClock;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PLATFORM: &str = "linux-debian";

/// Workers over a fresh SQLite store, on a manual clock, with worker `w1` reporting
/// one ready slot of [`PLATFORM`]. The broker is never asked here.
struct OneWorker {
    workers: Arc<Workers>,
    clock: ManualClock,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl OneWorker {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_at(1_000_000);
        let shutdown = CancellationToken::new();
        let store = crate::store::open(dir.path().join("m.sqlite").to_str().unwrap())
            .await
            .unwrap();
        let topology = Topology {
            prefix: format!("pyti-unit-{}", uuid::Uuid::new_v4().simple()),
            worker_queue_ttl_ms: 1_000,
        };
        let (broker, _supervisor) = Broker::start(
            pyti::amqp::Amqp::new(AMQP, None).unwrap(),
            topology,
            shutdown.clone(),
        );
        let runtime = Runtime::new(clock.clock(), shutdown.clone());
        let workers = Arc::new(Workers::new(
            store,
            broker,
            DispatchSignals::default(),
            runtime,
            (Duration::from_secs(30), None),
        ));
        let capacity = Capacity {
            worker_id: "w1".into(),
            platforms: vec![PlatformCapacity {
                platform: PLATFORM.into(),
                total: 1,
                ready: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        workers.report("w1", capacity);
        Self {
            workers,
            clock,
            shutdown,
            _dir: dir,
        }
    }

    /// Where a job of [`PLATFORM`] would go now.
    fn plan_one(&self) -> Vec<(usize, String)> {
        let request = [("j1".to_owned(), Requirement::new(PLATFORM, &[]))];
        let placed = self.workers.plan(&request);
        self.workers.forget("j1");
        placed
    }
}

impl Drop for OneWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn a_worker_that_gave_a_job_back_gets_none_until_the_clock_passes_the_pause() {
    let one = OneWorker::new().await;
    one.workers.given_back("j0", "w1", PLATFORM);
    assert!(one.plan_one().is_empty(), "paused");
    let pause = u64::try_from(GIVE_BACK_PAUSE_MS).unwrap();
    one.clock.advance(Duration::from_millis(pause - 1));
    assert!(one.plan_one().is_empty(), "still paused");
    one.clock.advance(Duration::from_millis(1));
    assert_eq!(one.plan_one(), vec![(0, "w1".to_owned())]);
}

#[tokio::test]
async fn offers_count_every_worker_but_placements_only_connected_ones() {
    let one = OneWorker::new().await;
    let here = JobSpec::from_requirement("x", None, Some(PLATFORM), &[]).unwrap();
    assert!(one.workers.check_offered(&here).is_ok());
    let elsewhere = JobSpec::from_requirement("x", None, Some("windows"), &[]).unwrap();
    let refused = one.workers.check_offered(&elsewhere).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the farm offers: linux-debian[]"),
        "{refused}"
    );
    one.workers.set_connected("w1", false);
    assert!(one.plan_one().is_empty(), "disconnected: nothing");
    assert!(one.workers.check_offered(&here).is_ok(), "still offered");
    one.workers.set_connected("w1", true);
    assert_eq!(one.plan_one(), vec![(0, "w1".to_owned())]);
}
