//! A worker's own life in the farm: results spooled before a crash are sent after the
//! restart, and a drained worker finishes what runs and takes nothing new.

mod common;

use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spawn_worker_process, spec, submit, wait_ended, Master, Runs, Worker};
use pyti::proto::{self, JobState, Outcome};

const PLATFORM: &str = "linux-debian";

/// The body of the child process of `spawn_worker_process`; does nothing when run
/// by hand.
#[test]
#[ignore = "runs only as the child process of a test"]
fn child_worker_process() {
    common::child_worker_process(PLATFORM);
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_worker_sends_the_results_it_had_spooled() {
    use pyti::proto::results_message::Message as M;

    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(30), 3),
        database.to_str().unwrap(),
    )
    .await;
    let id = format!("phoenix-{}", uuid::Uuid::new_v4().simple());
    let root = dir.path().join("w");
    let mut child = spawn_worker_process(&master.address, &prefix, &id, &root, 1, 600_000);
    let mut jobs = master.jobs().await;
    common::wait_offered(&jobs, PLATFORM, Duration::from_secs(60)).await;
    let job = submit(&mut jobs, spec("spooled", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap();
    common::wait_running_on(&jobs, &id, Duration::from_secs(30)).await;
    kill_9(&mut child);
    // As if the worker had finished and spooled the results just before it died.
    let messages = vec![
        proto::ResultsMessage {
            message: Some(M::Header(proto::ResultsHeader {
                job_id: job.job_id.clone(),
                attempt: 1,
                worker_id: id.clone(),
                ..Default::default()
            })),
        },
        proto::ResultsMessage {
            message: Some(M::Final(proto::FinalRecord {
                outcome: Outcome::Passed as i32,
                results_json: "{\"spooled\":true}".into(),
                error: String::new(),
            })),
        },
    ];
    let spool = root.join("spool");
    pyti_worker::masterlink::spool::write(&spool, &job.job_id, 1, &messages).unwrap();
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let worker = Worker::start(
        &id,
        &root,
        &master.address,
        &prefix,
        PLATFORM,
        1,
        &[],
        Duration::from_millis(100),
        Arc::clone(&runs),
    )
    .await;
    let ended = wait_ended(
        &mut jobs,
        std::slice::from_ref(&job.job_id),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ended[&job.job_id].state(), JobState::Succeeded);
    let results = jobs
        .get_results(proto::GetResultsRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(results.results_json, "{\"spooled\":true}");
    common::wait_until("the spool emptied", Duration::from_secs(10), || {
        let spool = spool.clone();
        async move {
            pyti_worker::masterlink::spool::pending(&spool)
                .unwrap()
                .is_empty()
        }
    })
    .await;
    assert!(runs.lock().unwrap().is_empty(), "nothing ran again");
    worker.stop().await;
    master.finish(&[&id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_worker_finishes_what_runs_and_takes_nothing_new() {
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(10), 3),
        database.to_str().unwrap(),
    )
    .await;
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let id = format!("drained-{}", uuid::Uuid::new_v4().simple());
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
    let mut registry = master.registry().await;
    common::wait_until("the worker connected", Duration::from_secs(20), || {
        let mut registry = registry.clone();
        async move {
            registry
                .list_workers(proto::ListWorkersRequest {})
                .await
                .unwrap()
                .into_inner()
                .workers
                .iter()
                .any(|w| w.connected)
        }
    })
    .await;
    let first = submit(&mut jobs, spec("before-drain", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap();
    common::wait_running_on(&jobs, &id, Duration::from_secs(30)).await;
    let drained = registry
        .drain_worker(proto::DrainWorkerRequest {
            worker_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(drained.capacity.unwrap().draining);
    let second = submit(&mut jobs, spec("after-drain", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap();
    let ended = wait_ended(
        &mut jobs,
        std::slice::from_ref(&first.job_id),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(ended[&first.job_id].state(), JobState::Succeeded);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = jobs
        .get_job(proto::GetJobRequest {
            job_id: second.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
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
    worker.stop().await;
    master.finish(&[&id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_given_back_runs_on_another_worker() {
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(10), 3),
        database.to_str().unwrap(),
    )
    .await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (broken_id, sound_id) = (format!("broken-{suffix}"), format!("sound-{suffix}"));
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    // The broken worker offers the variant the job needs best (no excess), so the
    // scheduler tries it first.
    let broken = Worker::launch(
        &broken_id,
        &dir.path().join("b"),
        &master.address,
        &prefix,
        PLATFORM,
        2,
        &["python3.11"],
        Duration::ZERO,
        Arc::clone(&runs),
        true,
    )
    .await;
    let mut jobs = master.jobs().await;
    let registry = master.registry().await;
    common::wait_until(
        "the broken worker connected",
        Duration::from_secs(20),
        || {
            let mut registry = registry.clone();
            async move {
                registry
                    .list_workers(proto::ListWorkersRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .workers
                    .iter()
                    .any(|w| w.connected)
            }
        },
    )
    .await;
    let job = submit(
        &mut jobs,
        spec("bounced", "1.0", PLATFORM, &["python3.11"]),
        false,
    )
    .await
    .unwrap();
    common::wait_until("the job given back", Duration::from_secs(20), || {
        let mut jobs = jobs.clone();
        let id = job.job_id.clone();
        async move {
            let job = jobs
                .get_job(proto::GetJobRequest { job_id: id })
                .await
                .unwrap()
                .into_inner();
            job.history
                .iter()
                .any(|h| h.reason.starts_with("given back by"))
        }
    })
    .await;
    let sound = Worker::start(
        &sound_id,
        &dir.path().join("s"),
        &master.address,
        &prefix,
        PLATFORM,
        1,
        &["python3.11", "extra"],
        Duration::from_millis(100),
        Arc::clone(&runs),
    )
    .await;
    let ended = wait_ended(
        &mut jobs,
        std::slice::from_ref(&job.job_id),
        Duration::from_secs(60),
    )
    .await;
    let ended = &ended[&job.job_id];
    assert_eq!(ended.state(), JobState::Succeeded);
    assert_eq!(ended.worker_id, sound_id);
    assert_eq!(ended.attempt, 1, "giving a job back is not an attempt");
    assert_eq!(
        master
            .farm
            .store()
            .count_results(&job.job_id)
            .await
            .unwrap(),
        1
    );
    assert_eq!(runs.lock().unwrap().len(), 1);
    broken.stop().await;
    sound.stop().await;
    master.finish(&[&broken_id, &sound_id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_left_in_a_silent_worker_s_queue_expires_and_runs_elsewhere() {
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(10), 3),
        database.to_str().unwrap(),
    )
    .await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (silent_id, live_id) = (format!("silent-{suffix}"), format!("live-{suffix}"));
    // A worker whose control plane answers but which never consumes its queue.
    let config = common::worker_config(
        &silent_id,
        &dir.path().join("s"),
        &master.address,
        &prefix,
        PLATFORM,
        1,
        &["python3.11"],
    );
    let (listener, addr) = pyti::grpc::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let pool = pyti_worker::stateofvm::SlotPool::new(config.slot_names()).unwrap();
    let control = pyti_worker::control::ControlService::new(
        pyti_worker::capacity::WorkerCapacity::new(&config, pool),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(pyti_worker::control::serve(
        control,
        listener,
        stop.clone().cancelled_owned(),
    ));
    let mut registry = master.registry().await;
    registry
        .register(proto::RegisterRequest {
            worker_id: silent_id.clone(),
            control_address: format!("http://{addr}"),
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
    let mut jobs = master.jobs().await;
    let job = submit(
        &mut jobs,
        spec("forgotten", "1.0", PLATFORM, &["python3.11"]),
        false,
    )
    .await
    .unwrap();
    common::wait_until(
        "the job assigned to the silent worker",
        Duration::from_secs(20),
        || {
            let mut jobs = jobs.clone();
            let id = job.job_id.clone();
            let silent = silent_id.clone();
            async move {
                let job = jobs
                    .get_job(proto::GetJobRequest { job_id: id })
                    .await
                    .unwrap()
                    .into_inner();
                job.state() == JobState::Assigned && job.worker_id == silent
            }
        },
    )
    .await;
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let live = Worker::start(
        &live_id,
        &dir.path().join("l"),
        &master.address,
        &prefix,
        PLATFORM,
        1,
        &["python3.11", "more"],
        Duration::from_millis(100),
        Arc::clone(&runs),
    )
    .await;
    // The queue's message TTL (5 s in tests) sends it back; the master places it again.
    let ended = wait_ended(
        &mut jobs,
        std::slice::from_ref(&job.job_id),
        Duration::from_secs(60),
    )
    .await;
    let ended = &ended[&job.job_id];
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
    assert_eq!(
        master
            .farm
            .store()
            .count_results(&job.job_id)
            .await
            .unwrap(),
        1
    );
    live.stop().await;
    stop.cancel();
    let _ = server.await;
    master.finish(&[&silent_id, &live_id]).await;
}

/// The master's record of `worker_id`: when it last heard from it, and the capacity.
async fn master_view(
    registry: &mut pyti::proto::worker_registry_client::WorkerRegistryClient<
        tonic::transport::Channel,
    >,
    worker_id: &str,
) -> proto::WorkerInfo {
    registry
        .list_workers(proto::ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner()
        .workers
        .into_iter()
        .find(|w| w.worker_id == worker_id)
        .expect("the worker is registered")
}

/// The capacity the master holds for `worker_id` once `registrations` more Registers
/// came in: every Register moves `last_seen` (every second in tests), while the
/// capacity stream is silent as long as the slot pool does not change, so the capacity
/// then is what Register sent.
async fn after_registrations(
    registry: &mut pyti::proto::worker_registry_client::WorkerRegistryClient<
        tonic::transport::Channel,
    >,
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
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(10), 3),
        database.to_str().unwrap(),
    )
    .await;
    let id = format!("cracked-{}", uuid::Uuid::new_v4().simple());
    let worker = Worker::start(
        &id,
        &dir.path().join("w"),
        &master.address,
        &prefix,
        PLATFORM,
        2,
        &[],
        Duration::from_millis(100),
        Arc::new(Mutex::new(Vec::new())),
    )
    .await;
    common::wait_offered(&master.jobs().await, PLATFORM, Duration::from_secs(20)).await;
    let mut registry = master.registry().await;
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
    common::wait_until(
        "the master saw the broken slot",
        Duration::from_secs(20),
        || {
            let mut registry = registry.clone();
            let id = id.clone();
            async move {
                master_view(&mut registry, &id)
                    .await
                    .capacity
                    .is_some_and(|c| c.platforms.iter().any(|p| p.broken == 1))
            }
        },
    )
    .await;
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
    common::wait_until("the master saw the drain", Duration::from_secs(20), || {
        let mut registry = registry.clone();
        let id = id.clone();
        async move {
            master_view(&mut registry, &id)
                .await
                .capacity
                .is_some_and(|c| c.draining)
        }
    })
    .await;
    let registered = after_registrations(&mut registry, &id, 2).await;
    assert_eq!(registered.platforms, worker_says.platforms);
    assert!(registered.draining);

    worker.stop().await;
    master.finish(&[&id]).await;
}
