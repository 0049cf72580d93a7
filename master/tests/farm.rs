//! The farm end to end on this machine: a master over real RabbitMQ and a real store
//! (SQLite and PostgreSQL), and workers using `pyti_worker::masterlink` with an
//! executor from test code.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spec, submit, wait_ended, Master, Runs, Worker};
use pyti::proto::{self, job_event::Event, JobState, Outcome};
use tokio_stream::StreamExt;

const PLATFORM: &str = "linux-debian";

async fn schedules_by_variant_and_streams_results(database: &str) {
    let prefix = common::prefix();
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(5), 3),
        database,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (plain_id, rich_id) = (format!("plain-{suffix}"), format!("rich-{suffix}"));
    let plain = Worker::start(
        &plain_id,
        &dir.path().join("a"),
        &master.address,
        &prefix,
        PLATFORM,
        2,
        &["python3.11"],
        Duration::from_millis(300),
        Arc::clone(&runs),
    )
    .await;
    let rich = Worker::start(
        &rich_id,
        &dir.path().join("b"),
        &master.address,
        &prefix,
        PLATFORM,
        2,
        &["python3.11", "python3.12"],
        Duration::from_millis(300),
        Arc::clone(&runs),
    )
    .await;
    let mut jobs = master.jobs().await;
    let registry = master.registry().await;
    common::wait_until("both workers connected", Duration::from_secs(20), || {
        let mut registry = registry.clone();
        async move {
            let workers = registry
                .list_workers(proto::ListWorkersRequest {})
                .await
                .unwrap()
                .into_inner()
                .workers;
            workers.iter().filter(|w| w.connected).count() == 2
        }
    })
    .await;

    // What no worker offers is refused, naming what the farm has, unless queued anyway.
    let refused = submit(
        &mut jobs,
        spec("rarfile", "4.2", PLATFORM, &["python3.13"]),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("linux-debian[python3.13]"),
        "{}",
        refused.message()
    );
    assert!(
        refused
            .message()
            .contains("linux-debian[python3.11,python3.12]"),
        "{}",
        refused.message()
    );
    let refused = submit(&mut jobs, spec("rarfile", "4.2", "linux-other", &[]), false)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let waiting = submit(
        &mut jobs,
        spec("rarfile", "4.2", PLATFORM, &["python3.13"]),
        true,
    )
    .await
    .unwrap();
    assert_eq!(waiting.state(), JobState::Queued);

    // An invalid job lists every problem.
    let invalid = submit(
        &mut jobs,
        spec("", "not a version", "Linux Debian", &[]),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    for field in ["project_name", "project_version", "platform_identifier"] {
        assert!(invalid.message().contains(field), "{}", invalid.message());
    }

    let mut new_ids = Vec::new();
    let mut plain_ids = Vec::new();
    for n in 0..4 {
        new_ids.push(
            submit(
                &mut jobs,
                spec(&format!("new-{n}"), "1.0", PLATFORM, &["python3.12"]),
                false,
            )
            .await
            .unwrap()
            .job_id,
        );
        plain_ids.push(
            submit(
                &mut jobs,
                spec(&format!("plain-{n}"), "1.0", PLATFORM, &["python3.11"]),
                false,
            )
            .await
            .unwrap()
            .job_id,
        );
    }
    let watched = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: new_ids[3].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let all: Vec<String> = new_ids.iter().chain(&plain_ids).cloned().collect();
    let ended = wait_ended(&mut jobs, &all, Duration::from_secs(60)).await;
    for (id, job) in &ended {
        assert_eq!(job.state(), JobState::Succeeded, "{id}: {job:?}");
        assert_eq!(job.outcome(), Outcome::Passed);
    }
    for id in &new_ids {
        assert_eq!(
            ended[id].worker_id, rich_id,
            "python3.12 runs only on the worker offering it"
        );
    }
    {
        let runs = runs.lock().unwrap();
        assert_eq!(runs.len(), all.len(), "each job ran once: {runs:?}");
        // Best fit: with the plain worker free, python3.11 jobs went there first.
        assert!(runs
            .iter()
            .any(|(w, id, _)| *w == plain_id && plain_ids.contains(id)));
    }

    // The watch saw the job's life and its task result, and ended with it.
    let events: Vec<Event> = tokio::time::timeout(
        Duration::from_secs(10),
        watched.map(|e| e.unwrap().event.unwrap()).collect(),
    )
    .await
    .unwrap();
    let states: Vec<JobState> = events
        .iter()
        .filter_map(|e| match e {
            Event::Job(j) => Some(j.state()),
            Event::TaskResult(_) => None,
        })
        .collect();
    assert_eq!(states.last(), Some(&JobState::Succeeded), "{events:?}");
    assert!(states.contains(&JobState::Running), "{states:?}");
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::TaskResult(t) if t.task == "install")));

    // Results are retrievable, with the log that was streamed.
    let results = jobs
        .get_results(proto::GetResultsRequest {
            job_id: new_ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(results.tasks.len(), 1);
    assert_eq!(results.tasks[0].summary, format!("ran on {rich_id}"));
    assert_eq!(results.log_names, vec!["install.log"]);
    assert!(results.results_json.contains(&rich_id));
    let mut history: Vec<JobState> = results
        .job
        .unwrap()
        .history
        .iter()
        .map(|h| h.state())
        .collect();
    // SubmitJob records QUEUED after RabbitMQ confirmed; the dispatcher may have
    // assigned the job in that moment already.
    history.retain(|s| *s != JobState::Queued);
    assert_eq!(
        history,
        [
            JobState::Submitted,
            JobState::Assigned,
            JobState::Running,
            JobState::Succeeded
        ]
    );
    for id in &all {
        assert_eq!(master.farm.store().count_results(id).await.unwrap(), 1);
    }

    // A second copy of stored results is acknowledged as a duplicate and changes nothing.
    use proto::results_message::Message as M;
    let copy = vec![
        proto::ResultsMessage {
            message: Some(M::Header(proto::ResultsHeader {
                job_id: new_ids[0].clone(),
                attempt: 1,
                worker_id: rich_id.clone(),
                ..Default::default()
            })),
        },
        proto::ResultsMessage {
            message: Some(M::Final(proto::FinalRecord {
                outcome: Outcome::InstallFailed as i32,
                ..Default::default()
            })),
        },
    ];
    let ack = registry
        .clone()
        .report_results(tokio_stream::iter(copy.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.stored && ack.duplicate, "{ack:?}");
    assert_eq!(
        master
            .farm
            .store()
            .count_results(&new_ids[0])
            .await
            .unwrap(),
        1
    );
    let kept = jobs
        .get_job(proto::GetJobRequest {
            job_id: new_ids[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.outcome(), Outcome::Passed);
    let headless = registry
        .clone()
        .report_results(tokio_stream::iter(copy[1..].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(headless.code(), tonic::Code::InvalidArgument);

    // Listing: filters and pages.
    let page = jobs
        .list_jobs(proto::ListJobsRequest {
            states: vec![JobState::Succeeded as i32],
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.jobs.len(), 5);
    assert!(!page.next_page_token.is_empty());
    let rest = jobs
        .list_jobs(proto::ListJobsRequest {
            states: vec![JobState::Succeeded as i32],
            page_size: 5,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.jobs.len(), 3);
    assert!(rest.next_page_token.is_empty());
    let on_rich = jobs
        .list_jobs(proto::ListJobsRequest {
            worker_id: rich_id.clone(),
            project_name: "new-2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_rich.jobs.len(), 1);
    let bad = jobs
        .list_jobs(proto::ListJobsRequest {
            page_token: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // The job nobody can run waits; cancelling it ends it; cancelling again is refused.
    let cancelled = jobs
        .cancel_job(proto::CancelJobRequest {
            job_id: waiting.job_id.clone(),
            reason: "not needed".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    let again = jobs
        .cancel_job(proto::CancelJobRequest {
            job_id: waiting.job_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    let missing = jobs
        .get_job(proto::GetJobRequest {
            job_id: "no-such-job".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    plain.stop().await;
    rich.stop().await;
    master.finish(&[&plain_id, &rich_id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_farm_schedules_by_variant_and_streams_results() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    schedules_by_variant_and_streams_results(database.to_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_farm_schedules_by_variant_and_streams_results() {
    let url = common::postgres_url().await;
    schedules_by_variant_and_streams_results(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_a_running_job_through_its_worker() {
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(5), 3),
        database.to_str().unwrap(),
    )
    .await;
    let runs: Runs = Arc::new(Mutex::new(Vec::new()));
    let id = format!("slow-{}", uuid::Uuid::new_v4().simple());
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
    let job = submit(&mut jobs, spec("slow", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap();
    common::wait_until("the job running", Duration::from_secs(20), || {
        let handle = worker.handle.clone();
        let job_id = job.job_id.clone();
        async move { handle.running_jobs().iter().any(|(j, _)| *j == job_id) }
    })
    .await;
    common::wait_until(
        "the job recorded as running",
        Duration::from_secs(20),
        || {
            let mut jobs = jobs.clone();
            let job_id = job.job_id.clone();
            async move {
                jobs.get_job(proto::GetJobRequest { job_id })
                    .await
                    .unwrap()
                    .into_inner()
                    .state()
                    == JobState::Running
            }
        },
    )
    .await;
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: job.job_id.clone(),
        reason: "enough".into(),
    })
    .await
    .unwrap();
    let ended = wait_ended(
        &mut jobs,
        std::slice::from_ref(&job.job_id),
        Duration::from_secs(30),
    )
    .await;
    let ended = &ended[&job.job_id];
    assert_eq!(ended.state(), JobState::Cancelled);
    assert_eq!(ended.outcome(), Outcome::Cancelled);
    worker.stop().await;
    master.finish(&[&id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_omitted_version_is_resolved_from_pypi() {
    let prefix = common::prefix();
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = Master::start(
        common::settings(&prefix, Duration::from_secs(5), 3),
        database.to_str().unwrap(),
    )
    .await;
    let mut jobs = master.jobs().await;
    let job = submit(&mut jobs, spec("rarfile", "", PLATFORM, &[]), true)
        .await
        .unwrap();
    assert!(job.spec.as_ref().unwrap().project_version.is_empty());
    let version = pep440_rs::Version::from_str(&job.resolved_version).unwrap();
    assert!(
        version >= pep440_rs::Version::from_str("4.2").unwrap(),
        "{version}"
    );
    assert!(!version.any_prerelease());
    let unknown = submit(
        &mut jobs,
        spec("pyti-no-such-project-4f1c2", "", PLATFORM, &[]),
        true,
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("pyti-no-such-project-4f1c2"),
        "{}",
        unknown.message()
    );
    master.finish(&[]).await;
}

use std::str::FromStr;
