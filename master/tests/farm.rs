//! The farm end to end on this machine: a master over real RabbitMQ and a real store
//! (SQLite and PostgreSQL), and workers using `pyti_worker::masterlink` with an
//! executor from test code.

use std::str::FromStr;
use std::time::Duration;

use pyti::proto::{self, job_event::Event, JobState, Outcome};
use pyti_testkit::farm::client::{
    assert_refused, get_job, get_results, results_report, spec, submit, try_submit, wait_connected,
    wait_ended, wait_job, wait_job_ended, wait_offered,
};
use pyti_testkit::farm::{FarmBuilder, TestFarm, PLATFORM};
use pyti_testkit::wait::wait_until;
use tokio_stream::StreamExt;
use tonic::Code;

async fn schedules_by_variant_and_streams_results(farm: FarmBuilder) {
    let farm = farm.start().await;
    let plain = farm.worker("plain").slots(2).variants(&["python3.11"]);
    let plain_id = plain.run_ms(300).start().await.id;
    let rich = farm.worker("rich").slots(2);
    let rich = rich.variants(&["python3.11", "python3.12"]);
    let rich_id = rich.run_ms(300).start().await.id;
    let mut jobs = farm.jobs().await;
    let registry = farm.registry().await;
    wait_connected(&registry, &plain_id, Duration::from_secs(20)).await;
    wait_connected(&registry, &rich_id, Duration::from_secs(20)).await;

    // What no worker offers is refused, naming what the farm has, unless queued anyway.
    let rare = spec("rarfile", "4.2", PLATFORM, &["python3.13"]);
    let refused = try_submit(&mut jobs, rare.clone(), false)
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        Code::FailedPrecondition,
        "linux-debian[python3.13]",
    );
    assert_refused(
        &refused,
        Code::FailedPrecondition,
        "linux-debian[python3.11,python3.12]",
    );
    let elsewhere = spec("rarfile", "4.2", "linux-other", &[]);
    let refused = try_submit(&mut jobs, elsewhere, false).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let waiting = try_submit(&mut jobs, rare, true).await.unwrap();
    assert_eq!(waiting.state(), JobState::Queued);

    // An invalid job lists every problem.
    let invalid = spec("", "not a version", "Linux Debian", &[]);
    let invalid = try_submit(&mut jobs, invalid, false).await.unwrap_err();
    for field in ["project_name", "project_version", "platform_identifier"] {
        assert_refused(&invalid, Code::InvalidArgument, field);
    }

    let (mut new_ids, mut plain_ids) = (Vec::new(), Vec::new());
    for n in 0..4 {
        for (ids, stem, variant) in [
            (&mut new_ids, "new", "python3.12"),
            (&mut plain_ids, "plain", "python3.11"),
        ] {
            let wanted = spec(&format!("{stem}-{n}"), "1.0", PLATFORM, &[variant]);
            ids.push(submit(&mut jobs, wanted).await.job_id);
        }
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
    let runs = farm.runs();
    assert_eq!(runs.len(), all.len(), "each job ran once: {runs:?}");
    // Best fit: with the plain worker free, python3.11 jobs went there first.
    assert!(runs
        .iter()
        .any(|r| r.worker_id == plain_id && plain_ids.contains(&r.job_id)));

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
    let results = get_results(&mut jobs, &new_ids[0]).await;
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
    farm.assert_stored_once(&all).await;

    // A second copy of stored results is acknowledged as a duplicate and changes nothing.
    let mut copy = results_report(
        &new_ids[0],
        1,
        &rich_id,
        proto::FinalRecord {
            outcome: Outcome::InstallFailed as i32,
            ..Default::default()
        },
    );
    // As the worker that ran it would resend it: with the lease id of its assignment.
    let stored = farm
        .store()
        .await
        .get_job(&new_ids[0])
        .await
        .unwrap()
        .unwrap();
    if let Some(proto::results_message::Message::Header(header)) = &mut copy[0].message {
        header.lease_id = stored.lease_id;
    }
    let ack = registry
        .clone()
        .report_results(tokio_stream::iter(copy.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.stored && ack.duplicate, "{ack:?}");
    farm.assert_stored_once(&new_ids[..1]).await;
    let kept = get_job(&mut jobs, &new_ids[0]).await;
    assert_eq!(kept.outcome(), Outcome::Passed);
    let headless = registry
        .clone()
        .report_results(tokio_stream::iter(copy[1..].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(headless.code(), Code::InvalidArgument);

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
    assert_eq!(bad.code(), Code::InvalidArgument);

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
    assert_eq!(again.code(), Code::FailedPrecondition);
    let missing = jobs
        .get_job(proto::GetJobRequest {
            job_id: "no-such-job".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_farm_schedules_by_variant_and_streams_results() {
    schedules_by_variant_and_streams_results(TestFarm::builder()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_farm_schedules_by_variant_and_streams_results() {
    schedules_by_variant_and_streams_results(TestFarm::builder().postgres()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_a_running_job_through_its_worker() {
    let farm = TestFarm::start().await;
    let worker = farm.worker("slow").run_ms(600_000).start().await;
    let mut jobs = farm.jobs().await;
    wait_offered(&jobs, PLATFORM, Duration::from_secs(20)).await;
    let job = submit(&mut jobs, spec("slow", "1.0", PLATFORM, &[])).await;
    wait_until("the job running", Duration::from_secs(20), || {
        let handle = worker.handle.clone();
        let job_id = job.job_id.clone();
        async move { handle.running_jobs().iter().any(|(j, _)| *j == job_id) }
    })
    .await;
    let running = |job: &proto::Job| job.state() == JobState::Running;
    let what = "the job recorded as running";
    wait_job(&jobs, &job.job_id, what, Duration::from_secs(20), running).await;
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: job.job_id.clone(),
        reason: "enough".into(),
    })
    .await
    .unwrap();
    let ended = wait_job_ended(&mut jobs, &job.job_id, Duration::from_secs(30)).await;
    assert_eq!(ended.state(), JobState::Cancelled);
    assert_eq!(ended.outcome(), Outcome::Cancelled);
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_omitted_version_is_resolved_from_pypi() {
    let farm = TestFarm::start().await;
    let mut jobs = farm.jobs().await;
    let latest = spec("rarfile", "", PLATFORM, &[]);
    let job = try_submit(&mut jobs, latest, true).await.unwrap();
    assert!(job.spec.as_ref().unwrap().project_version.is_empty());
    let version = pep440_rs::Version::from_str(&job.resolved_version).unwrap();
    assert!(
        version >= pep440_rs::Version::from_str("4.2").unwrap(),
        "{version}"
    );
    assert!(!version.any_prerelease());
    let unknown = spec("pyti-no-such-project-4f1c2", "", PLATFORM, &[]);
    let unknown = try_submit(&mut jobs, unknown, true).await.unwrap_err();
    assert_refused(&unknown, Code::NotFound, "pyti-no-such-project-4f1c2");
    farm.finish().await;
}
