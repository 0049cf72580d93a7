//! A worker's own life in the farm: results spooled before a crash are sent after the
//! restart, and a drained worker finishes what runs and takes nothing new.

use std::time::Duration;

use pyti::proto::{self, JobState, Outcome};
use pyti_testkit::farm::client::{
    get_job, get_results, list_workers, results_report, spec, submit, wait_connected, wait_job,
    wait_job_ended, wait_offered, wait_running_on, Registry,
};
use pyti_testkit::farm::{TestFarm, PLATFORM};
use pyti_testkit::wait::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_worker_sends_the_results_it_had_spooled() {
    let farm = TestFarm::builder().lease_s(30).start().await;
    let phoenix = farm.worker("phoenix");
    let id = phoenix.worker_id().to_owned();
    let mut child = phoenix.clone().run_ms(600_000).spawn_process();
    let mut jobs = farm.jobs().await;
    wait_offered(&jobs, PLATFORM, Duration::from_secs(60)).await;
    let job = submit(&mut jobs, spec("spooled", "1.0", PLATFORM, &[])).await;
    wait_running_on(&jobs, &id, 1, Duration::from_secs(30)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    // As if the worker had finished and spooled the results just before it died.
    let last = proto::FinalRecord {
        outcome: Outcome::Passed as i32,
        results_json: "{\"spooled\":true}".into(),
        error: String::new(),
    };
    let mut messages = results_report(&job.job_id, 1, &id, last);
    // With the lease id of its assignment, as the worker spools it.
    let stored = farm
        .store()
        .await
        .get_job(&job.job_id)
        .await
        .unwrap()
        .unwrap();
    if let Some(proto::results_message::Message::Header(header)) = &mut messages[0].message {
        header.lease_id = stored.lease_id;
    }
    let spool = phoenix.root().join("spool");
    pyti_worker::masterlink::spool::write(&spool, &job.job_id, 1, &messages).unwrap();
    phoenix.start().await;
    let ended = wait_job_ended(&mut jobs, &job.job_id, Duration::from_secs(30)).await;
    assert_eq!(ended.state(), JobState::Succeeded);
    let results = get_results(&mut jobs, &job.job_id).await;
    assert_eq!(results.results_json, "{\"spooled\":true}");
    wait_until("the spool emptied", Duration::from_secs(10), || {
        let spool = spool.clone();
        async move {
            pyti_worker::masterlink::spool::pending(&spool)
                .unwrap()
                .is_empty()
        }
    })
    .await;
    assert!(farm.runs().is_empty(), "nothing ran again");
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_worker_finishes_what_runs_and_takes_nothing_new() {
    let farm = TestFarm::start().await;
    let worker = farm.worker("drained").slots(2).run_ms(1500).start().await;
    let id = worker.id.clone();
    let mut jobs = farm.jobs().await;
    let mut registry = farm.registry().await;
    wait_connected(&registry, &id, Duration::from_secs(20)).await;
    let first = submit(&mut jobs, spec("before-drain", "1.0", PLATFORM, &[])).await;
    wait_running_on(&jobs, &id, 1, Duration::from_secs(30)).await;
    let drained = registry
        .drain_worker(proto::DrainWorkerRequest {
            worker_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(drained.capacity.unwrap().draining);
    let second = submit(&mut jobs, spec("after-drain", "1.0", PLATFORM, &[])).await;
    let ended = wait_job_ended(&mut jobs, &first.job_id, Duration::from_secs(30)).await;
    assert_eq!(ended.state(), JobState::Succeeded);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = get_job(&mut jobs, &second.job_id).await;
    assert_eq!(
        waiting.state(),
        JobState::Queued,
        "a draining worker gets no new job"
    );
    let missing = registry
        .drain_worker(proto::DrainWorkerRequest {
            worker_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: second.job_id.clone(),
        reason: String::new(),
    })
    .await
    .unwrap();
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_given_back_runs_on_another_worker() {
    let farm = TestFarm::start().await;
    // The broken worker offers the variant the job needs best (no excess), so the
    // scheduler tries it first.
    let broken = farm.worker("broken").slots(2).variants(&["python3.11"]);
    let broken_id = broken.refusing().start().await.id;
    let mut jobs = farm.jobs().await;
    let registry = farm.registry().await;
    wait_connected(&registry, &broken_id, Duration::from_secs(20)).await;
    let job = submit(&mut jobs, spec("bounced", "1.0", PLATFORM, &["python3.11"])).await;
    let given_back = |job: &proto::Job| {
        job.history
            .iter()
            .any(|h| h.reason.starts_with("given back by"))
    };
    let limit = Duration::from_secs(20);
    wait_job(&jobs, &job.job_id, "the job given back", limit, given_back).await;
    let sound = farm.worker("sound").variants(&["python3.11", "extra"]);
    let sound_id = sound.start().await.id;
    let ended = wait_job_ended(&mut jobs, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(ended.state(), JobState::Succeeded);
    assert_eq!(ended.worker_id, sound_id);
    assert_eq!(ended.attempt, 1, "giving a job back is not an attempt");
    farm.assert_stored_once(std::slice::from_ref(&job.job_id))
        .await;
    assert_eq!(farm.runs().len(), 1);
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_left_in_a_silent_worker_s_queue_expires_and_runs_elsewhere() {
    let farm = TestFarm::start().await;
    // A worker whose control plane answers but which never consumes its queue.
    let silent = farm
        .worker("silent")
        .variants(&["python3.11"])
        .start_control_only()
        .await;
    let silent_id = silent.id.clone();
    let mut registry = farm.registry().await;
    registry
        .register(proto::RegisterRequest {
            worker_id: silent_id.clone(),
            control_address: silent.control_address.clone(),
            capacity: Some(proto::Capacity {
                worker_id: silent_id.clone(),
                platforms: vec![proto::PlatformCapacity {
                    platform: PLATFORM.into(),
                    variants: vec!["python3.11".into()],
                    total: 1,
                    ready: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            version: String::new(),
        })
        .await
        .unwrap();
    let mut jobs = farm.jobs().await;
    let forgotten = spec("forgotten", "1.0", PLATFORM, &["python3.11"]);
    let job = submit(&mut jobs, forgotten).await;
    let assigned =
        |job: &proto::Job| job.state() == JobState::Assigned && job.worker_id == silent_id;
    let what = "the job assigned to the silent worker";
    wait_job(&jobs, &job.job_id, what, Duration::from_secs(20), assigned).await;
    let live = farm.worker("live").variants(&["python3.11", "more"]);
    let live_id = live.start().await.id;
    // The queue's message TTL (5 s in tests) sends it back; the master places it again.
    let ended = wait_job_ended(&mut jobs, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(ended.state(), JobState::Succeeded);
    assert_eq!(ended.worker_id, live_id);
    assert!(
        ended
            .history
            .iter()
            .any(|h| h.reason == format!("given back by {silent_id}")),
        "{:#?}",
        ended.history
    );
    farm.assert_stored_once(std::slice::from_ref(&job.job_id))
        .await;
    farm.finish().await;
}

/// The master's record of `worker_id`: when it last heard from it, and the capacity.
async fn master_view(registry: &mut Registry, worker_id: &str) -> proto::WorkerInfo {
    list_workers(registry)
        .await
        .into_iter()
        .find(|w| w.worker_id == worker_id)
        .expect("the worker is registered")
}

/// Waits until the capacity the master holds for `worker_id` is as `check` wants it.
async fn wait_master_sees<F>(registry: &Registry, worker_id: &str, what: &str, check: F)
where
    F: Fn(&proto::Capacity) -> bool,
{
    let what = format!("the master saw {what}");
    wait_until(&what, Duration::from_secs(20), || {
        let mut registry = registry.clone();
        let check = &check;
        async move {
            let capacity = master_view(&mut registry, worker_id).await.capacity;
            capacity.is_some_and(|c| check(&c))
        }
    })
    .await;
}

/// The capacity the master holds for `worker_id` once `registrations` more Registers
/// came in: every Register moves `last_seen` (every second in tests), while the
/// capacity stream is silent as long as the slot pool does not change, so the capacity
/// then is what Register sent.
async fn after_registrations(
    registry: &mut Registry,
    worker_id: &str,
    registrations: usize,
) -> proto::Capacity {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let worker = master_view(registry, worker_id).await;
        let last_seen = worker.last_seen.unwrap_or_default();
        seen.insert((last_seen.seconds, last_seen.nanos));
        if seen.len() > registrations {
            return worker.capacity.unwrap_or_default();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not register {registrations} more times"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the worker's own control plane says, asked and streamed; both must agree.
async fn worker_view(control_address: &str) -> proto::Capacity {
    use pyti::proto::worker_control_client::WorkerControlClient;
    use tokio_stream::StreamExt;

    let mut control = WorkerControlClient::connect(control_address.to_owned())
        .await
        .unwrap();
    let asked = control
        .get_capacity(proto::GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let streamed = control
        .watch_capacity(proto::WatchCapacityRequest {})
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asked.platforms, streamed.platforms);
    assert_eq!(asked.draining, streamed.draining);
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_and_watch_capacity_report_the_same_numbers_when_a_slot_breaks() {
    let farm = TestFarm::start().await;
    let worker = farm.worker("cracked").slots(2).start().await;
    let id = worker.id.clone();
    wait_offered(&farm.jobs().await, PLATFORM, Duration::from_secs(20)).await;
    let mut registry = farm.registry().await;
    let control_address = master_view(&mut registry, &id).await.control_address;

    // A slot breaks, as when its VM could not be removed after a run.
    let pool = worker.handle.capacity().pool();
    let slot = pool.slots()[0].name.clone();
    pool.mark_broken(&slot, "the domain is still defined")
        .unwrap();
    let worker_says = worker_view(&control_address).await;
    let platform = &worker_says.platforms[0];
    assert_eq!(
        (platform.total, platform.ready, platform.broken),
        (2, 1, 1),
        "{worker_says:?}"
    );
    let broken = |c: &proto::Capacity| c.platforms.iter().any(|p| p.broken == 1);
    wait_master_sees(&registry, &id, "the broken slot", broken).await;
    let registered = after_registrations(&mut registry, &id, 2).await;
    assert_eq!(registered.platforms, worker_says.platforms);
    assert_eq!(registered.draining, worker_says.draining);

    // Draining zeroes ready in every view, the registrations included.
    let drained = registry
        .drain_worker(proto::DrainWorkerRequest {
            worker_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .capacity
        .unwrap();
    assert!(drained.draining);
    let worker_says = worker_view(&control_address).await;
    assert!(worker_says.draining);
    assert_eq!(worker_says.platforms, drained.platforms);
    assert!(worker_says
        .platforms
        .iter()
        .all(|p| p.ready == 0 && p.total == 2 && p.broken == 1));
    let draining = |c: &proto::Capacity| c.draining;
    wait_master_sees(&registry, &id, "the drain", draining).await;
    let registered = after_registrations(&mut registry, &id, 2).await;
    assert_eq!(registered.platforms, worker_says.platforms);
    assert!(registered.draining);

    farm.finish().await;
}

pyti_testkit::child_worker_process_test!();
