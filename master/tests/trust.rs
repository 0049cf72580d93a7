//! A farm that trusts no one on its network: mutual TLS, roles, tokens, results bound
//! to the worker holding the lease, bounded results. Each test is an attacker (or a
//! client with too little right) against real processes over real TLS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyti::proto::{self, results_message::Message, JobState};
use pyti::trust::Role;
use pyti_testkit::farm::client::{
    assert_refused, get_job, get_results, list_workers, results_report, spec, try_submit,
    wait_connected, wait_job_ended,
};
use pyti_testkit::farm::{Credentials, TestFarm, PLATFORM};
use tonic::Code;

/// A platform no worker offers: jobs on it wait, and fake workers start them by hand.
const NOWHERE: &str = "linux-nowhere";

fn final_record() -> proto::FinalRecord {
    proto::FinalRecord {
        outcome: proto::Outcome::Passed as i32,
        results_json: "{\"forged\":true}".into(),
        error: String::new(),
    }
}

async fn queued_job(farm: &TestFarm, name: &str) -> proto::Job {
    let mut jobs = farm.jobs().await;
    try_submit(&mut jobs, spec(name, "1.0", NOWHERE, &[]), true)
        .await
        .expect("an admin submits")
}

fn register(worker_id: &str, address: &str) -> proto::RegisterRequest {
    proto::RegisterRequest {
        worker_id: worker_id.to_owned(),
        control_address: address.to_owned(),
        capacity: Some(proto::Capacity {
            worker_id: worker_id.to_owned(),
            ..Default::default()
        }),
        version: "test".into(),
    }
}

fn start(worker_id: &str, job_id: &str, attempt: u32) -> proto::StartJobRequest {
    proto::StartJobRequest {
        worker_id: worker_id.to_owned(),
        job_id: job_id.to_owned(),
        attempt,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_every_call_but_health_is_refused() {
    let farm = TestFarm::builder().mtls().start().await;
    let ca = farm.mtls_ca().ca();
    let nothing = Credentials::Nothing(ca.clone());
    let mut jobs = farm.jobs_as(&nothing).await;
    let mut registry = farm.registry_as(&nothing).await;
    let mut tokens = farm.tokens_as(&nothing).await;
    let id = || "0190a0a0-0000-7000-8000-000000000000".to_owned();
    let calls: Vec<(&str, tonic::Status)> = vec![
        (
            "SubmitJob",
            try_submit(&mut jobs, spec("x", "1.0", NOWHERE, &[]), true)
                .await
                .unwrap_err(),
        ),
        (
            "GetJob",
            jobs.get_job(proto::GetJobRequest { job_id: id() })
                .await
                .unwrap_err(),
        ),
        (
            "ListJobs",
            jobs.list_jobs(proto::ListJobsRequest::default())
                .await
                .unwrap_err(),
        ),
        (
            "WatchJob",
            jobs.watch_job(proto::WatchJobRequest { job_id: id() })
                .await
                .unwrap_err(),
        ),
        (
            "CancelJob",
            jobs.cancel_job(proto::CancelJobRequest {
                job_id: id(),
                reason: String::new(),
            })
            .await
            .unwrap_err(),
        ),
        (
            "GetResults",
            jobs.get_results(proto::GetResultsRequest { job_id: id() })
                .await
                .unwrap_err(),
        ),
        (
            "Register",
            registry
                .register(register("intruder", "http://127.0.0.1:1"))
                .await
                .unwrap_err(),
        ),
        (
            "StartJob",
            registry.start_job(start("w", &id(), 1)).await.unwrap_err(),
        ),
        (
            "RenewLease",
            registry
                .renew_lease(proto::RenewLeaseRequest {
                    worker_id: "w".into(),
                    job_id: id(),
                    attempt: 1,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
        ),
        (
            "ReportResults",
            registry
                .report_results(tokio_stream::iter(results_report(
                    &id(),
                    1,
                    "w",
                    final_record(),
                )))
                .await
                .unwrap_err(),
        ),
        (
            "ListWorkers",
            registry
                .list_workers(proto::ListWorkersRequest {})
                .await
                .unwrap_err(),
        ),
        (
            "DrainWorker",
            registry
                .drain_worker(proto::DrainWorkerRequest {
                    worker_id: "w".into(),
                })
                .await
                .unwrap_err(),
        ),
        (
            "CreateToken",
            tokens
                .create_token(proto::CreateTokenRequest {
                    name: "mine".into(),
                    role: "admin".into(),
                    days: 0,
                })
                .await
                .unwrap_err(),
        ),
        (
            "ListTokens",
            tokens
                .list_tokens(proto::ListTokensRequest {})
                .await
                .unwrap_err(),
        ),
        (
            "RevokeToken",
            tokens
                .revoke_token(proto::RevokeTokenRequest {
                    name: "admin".into(),
                })
                .await
                .unwrap_err(),
        ),
    ];
    for (method, status) in &calls {
        assert_eq!(status.code(), Code::Unauthenticated, "{method}: {status:?}");
        assert!(
            status.message().contains(method),
            "{method}: {}",
            status.message()
        );
    }
    // A made-up token is no credential either.
    let forged = Credentials::Token(ca, "pyti_0000_1111".into());
    let refused = farm
        .jobs_as(&forged)
        .await
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Health answers everyone over TLS; reflection only the authenticated.
    let channel = farm.channel_as(&nothing).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers without credentials");
    assert_eq!(answer.into_inner().status, 1, "SERVING");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let refused = reflection
        .server_reflection_info(tokio_stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest::default(),
        ]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Plaintext gets no answer at all from a TLS master.
    let plain = tonic::transport::Endpoint::from_shared(farm.address.clone())
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut jobs = proto::job_service_client::JobServiceClient::new(channel);
        assert!(jobs
            .list_jobs(proto::ListJobsRequest::default())
            .await
            .is_err());
    }
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_what_clients_may_do() {
    let farm = TestFarm::builder().mtls().start().await;
    let job = queued_job(&farm, "roles").await;
    let reader = farm.client_certificate("reader", Role::Read);
    let submitter = farm.client_certificate("submitter", Role::Submit);

    let mut read = farm.jobs_as(&reader).await;
    assert_eq!(get_job(&mut read, &job.job_id).await.job_id, job.job_id);
    let refused = try_submit(&mut read, spec("nope", "1.0", NOWHERE, &[]), true)
        .await
        .unwrap_err();
    assert_refused(
        &refused,
        Code::PermissionDenied,
        "client reader (role read)",
    );
    let refused = read
        .cancel_job(proto::CancelJobRequest {
            job_id: job.job_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let mut submit = farm.jobs_as(&submitter).await;
    // Queueing anyway for a platform no worker offers would declare a queue for it:
    // admins only.
    let refused = try_submit(&mut submit, spec("mine", "1.0", NOWHERE, &[]), true)
        .await
        .unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "only an admin");
    // A worker that offers the platform (registered by hand: nothing needs to run).
    let offering = farm.worker_certificate("offering");
    let mut registration = register("offering", "http://127.0.0.1:1");
    registration.capacity = Some(proto::Capacity {
        worker_id: "offering".into(),
        platforms: vec![proto::PlatformCapacity {
            platform: PLATFORM.into(),
            total: 1,
            ready: 1,
            ..Default::default()
        }],
        ..Default::default()
    });
    farm.registry_as(&offering)
        .await
        .register(registration)
        .await
        .unwrap();
    try_submit(&mut submit, spec("mine", "1.0", PLATFORM, &[]), false)
        .await
        .expect("a submit client submits");
    let refused = farm
        .registry_as(&submitter)
        .await
        .drain_worker(proto::DrainWorkerRequest {
            worker_id: "any".into(),
        })
        .await
        .unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "DrainWorker");
    let refused = farm
        .tokens_as(&submitter)
        .await
        .create_token(proto::CreateTokenRequest {
            name: "escalate".into(),
            role: "admin".into(),
            days: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // A client certificate is not a worker's.
    let admin = farm.client_certificate("root", Role::Admin);
    let refused = farm
        .registry_as(&admin)
        .await
        .register(register("root", "http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "Register");
    assert_eq!(
        get_job(&mut read, &job.job_id).await.state(),
        JobState::Queued
    );
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working() {
    let farm = TestFarm::builder().mtls().start().await;
    let admin = farm.client_certificate("operator", Role::Admin);
    let mut tokens = farm.tokens_as(&admin).await;
    let made = tokens
        .create_token(proto::CreateTokenRequest {
            name: "ci".into(),
            role: "submit".into(),
            days: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(made.token.starts_with("pyti_"), "{}", made.token);
    let listed = tokens
        .list_tokens(proto::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 1);
    assert!(!format!("{listed:?}").contains(made.token.rsplit('_').next().unwrap()));

    let ci = Credentials::Token(farm.mtls_ca().ca(), made.token.clone());
    let mut jobs = farm.jobs_as(&ci).await;
    let worker = farm.worker("tokens").start().await;
    wait_connected(&farm.registry().await, &worker.id, Duration::from_secs(20)).await;
    try_submit(&mut jobs, spec("tokened", "1.0", PLATFORM, &[]), false)
        .await
        .expect("a submit token submits");
    let refused = farm
        .registry_as(&ci)
        .await
        .drain_worker(proto::DrainWorkerRequest {
            worker_id: "any".into(),
        })
        .await
        .unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "client ci (role submit)");
    // A guessed secret with the right id is refused.
    let id = made.token.split('_').nth(1).unwrap();
    let guessed = Credentials::Token(farm.mtls_ca().ca(), format!("pyti_{id}_{}", "0".repeat(64)));
    let refused = farm
        .jobs_as(&guessed)
        .await
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let revoked = tokens
        .revoke_token(proto::RevokeTokenRequest { name: "ci".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let refused = try_submit(&mut jobs, spec("late", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_certificate_acts_only_for_the_jobs_it_holds() {
    let farm = TestFarm::builder().mtls().start().await;
    let job = queued_job(&farm, "leased").await;
    let holder = farm.worker_certificate("holder");
    let other = farm.worker_certificate("other");
    let mut holder_link = farm.registry_as(&holder).await;
    let mut other_link = farm.registry_as(&other).await;
    let started = holder_link
        .start_job(start("holder", &job.job_id, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(started.proceed, "{started:?}");

    // Another worker can neither start, renew nor report it, under its own name or
    // the holder's.
    for claimed in ["other", "holder"] {
        let refused = other_link
            .start_job(start(claimed, &job.job_id, 1))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{claimed}: {refused:?}"
        );
        let refused = other_link
            .renew_lease(proto::RenewLeaseRequest {
                worker_id: claimed.into(),
                job_id: job.job_id.clone(),
                attempt: 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{claimed}: {refused:?}"
        );
        let forged = results_report(&job.job_id, 1, claimed, final_record());
        let refused = other_link
            .report_results(tokio_stream::iter(forged))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{claimed}: {refused:?}"
        );
    }
    let mut jobs = farm.jobs().await;
    let now = get_job(&mut jobs, &job.job_id).await;
    assert_eq!(
        (now.state(), now.worker_id.as_str()),
        (JobState::Running, "holder")
    );
    let store = farm.store().await;
    assert_eq!(store.count_results(&job.job_id).await.unwrap(), 0);

    // Its lease lapses: the job moves on to attempt 2, and the holder's attempt 1 is
    // stale.
    let later = farm.master().clock().now_ms() + 3_600_000;
    assert_eq!(farm.master().reap_lapsed_leases(later).await.unwrap(), 1);
    let stale = results_report(&job.job_id, 1, "holder", final_record());
    let refused = holder_link
        .report_results(tokio_stream::iter(stale))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let refused = holder_link
        .start_job(start("holder", &job.job_id, 1))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let now = get_job(&mut jobs, &job.job_id).await;
    assert_eq!((now.state(), now.attempt), (JobState::Queued, 2));
    assert_eq!(store.count_results(&job.job_id).await.unwrap(), 0);
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_register_cannot_take_over_a_workers_address() {
    let farm = TestFarm::builder().mtls().start().await;
    let worker = farm.worker("victim").start().await;
    let mut registry = farm.registry().await;
    wait_connected(&registry, &worker.id, Duration::from_secs(20)).await;
    let intruder = farm.worker_certificate("intruder");
    let refused = farm
        .registry_as(&intruder)
        .await
        .register(register(&worker.id, "http://127.0.0.1:9"))
        .await
        .unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "cannot speak for worker");
    let workers = list_workers(&mut registry).await;
    let victim = workers.iter().find(|w| w.worker_id == worker.id).unwrap();
    assert_eq!(victim.control_address, worker.control_address);
    assert!(!workers.iter().any(|w| w.worker_id == "intruder"));
    // The real worker still takes and finishes jobs over mutual TLS.
    let mut jobs = farm.jobs().await;
    let job = try_submit(&mut jobs, spec("after", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap();
    let ended = wait_job_ended(&mut jobs, &job.job_id, Duration::from_secs(30)).await;
    assert_eq!(ended.state(), JobState::Succeeded);
    assert_eq!(ended.worker_id, worker.id);
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_mib_of_results_are_stored_end_to_end() {
    const SIX_MIB: usize = 6 * 1024 * 1024;
    let farm = TestFarm::builder().mtls().start().await;
    let worker = farm.worker("large").results_bytes(SIX_MIB).start().await;
    let mut jobs = farm.jobs().await;
    wait_connected(&farm.registry().await, &worker.id, Duration::from_secs(20)).await;
    let job = try_submit(&mut jobs, spec("large", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap();
    let ended = wait_job_ended(&mut jobs, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(ended.state(), JobState::Succeeded, "{ended:?}");
    let results = get_results(&mut jobs, &job.job_id).await;
    assert!(
        results.results_json.len() > SIX_MIB,
        "{}",
        results.results_json.len()
    );
    let dict: serde_json::Value = serde_json::from_str(&results.results_json).unwrap();
    assert_eq!(dict["padding"].as_str().unwrap().len(), SIX_MIB);
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_stream_past_the_cap_is_cut_off() {
    const MIB: usize = 1024 * 1024;
    let farm = TestFarm::builder().mtls().start().await;
    let job = queued_job(&farm, "flood").await;
    let worker = farm.worker_certificate("flooder");
    let mut link = farm.registry_as(&worker).await;
    let started = link
        .start_job(start("flooder", &job.job_id, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(started.proceed);
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    let header = results_report(&job.job_id, 1, "flooder", final_record())
        .into_iter()
        .next()
        .unwrap();
    let job_id = job.job_id.clone();
    let chunks = (0..300_u64).map(move |n| {
        counter.fetch_add(1, Ordering::SeqCst);
        proto::ResultsMessage {
            message: Some(Message::LogChunk(proto::LogChunk {
                job_id: job_id.clone(),
                attempt: 1,
                log_name: "flood.log".into(),
                offset: n * MIB as u64,
                data: vec![b'x'; MIB],
            })),
        }
    });
    let stream = tokio_stream::iter(std::iter::once(header).chain(chunks));
    let refused = link.report_results(stream).await.unwrap_err();
    assert_refused(&refused, Code::ResourceExhausted, "limit");
    let pulled = sent.load(Ordering::SeqCst);
    assert!(
        pulled < 300,
        "the master read the whole flood ({pulled} chunks)"
    );
    let mut jobs = farm.jobs().await;
    let now = get_job(&mut jobs, &job.job_id).await;
    assert_eq!(
        (now.state(), now.worker_id.as_str()),
        (JobState::Running, "flooder")
    );
    assert_eq!(
        farm.store().await.count_results(&job.job_id).await.unwrap(),
        0
    );
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_on_every_interface_without_tls_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("master.ini");
    let port = pyti_testkit::net::free_port();
    std::fs::write(
        &config,
        format!(
            "[config]\npyti_master_root = {}\nlisten = 0.0.0.0:{port}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pyti-master"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("pyti ca init"), "{stderr}");
    assert!(stderr.contains("0.0.0.0"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_registers_with_new_ids_leave_no_hundred_queues() {
    let farm = TestFarm::builder()
        .worker_expiry_ms(1_000)
        .worker_queue_ttl_s(120)
        .start()
        .await;
    let mut registry = farm.registry().await;
    let ghosts: Vec<String> = (0..100)
        .map(|n| format!("{}-{n}", pyti_testkit::unique("ghost")))
        .collect();
    let broker = farm.master().broker().clone();
    let queue = |id: &str| broker.topology.worker_queue(id);
    // The first ghost gets a job in its queue at once: that queue must stay.
    let holder = &ghosts[0];
    let job = proto::QueuedJob {
        job_id: "0190a0a0-0000-7000-8000-00000000abcd".into(),
        attempt: 1,
        ..Default::default()
    };
    for ghost in &ghosts {
        registry
            .register(register(ghost, "http://127.0.0.1:1"))
            .await
            .expect("an open farm takes any Register");
        if ghost == holder {
            broker
                .publish(&queue(holder), pyti_master::broker::QueueKind::Worker, &job)
                .await
                .unwrap();
        }
    }
    assert!(broker.queue_exists(&queue(&ghosts[99])).await.unwrap());
    pyti_testkit::wait::wait_until(
        "the silent workers expired",
        Duration::from_secs(20),
        || {
            let (broker, ghosts) = (broker.clone(), ghosts.clone());
            async move {
                for ghost in &ghosts[1..] {
                    if broker
                        .queue_exists(&broker.topology.worker_queue(ghost))
                        .await
                        .unwrap()
                    {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    assert!(
        broker.queue_exists(&queue(holder)).await.unwrap(),
        "a queue with a job in it is never deleted"
    );
    let listed = list_workers(&mut registry).await;
    assert_eq!(
        listed
            .iter()
            .map(|w| w.worker_id.as_str())
            .collect::<Vec<_>>(),
        [holder.as_str()]
    );
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_password_never_reaches_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("master.ini");
    let port = pyti_testkit::net::free_port();
    let secret = "s3cr3t-Pa55word";
    std::fs::write(
        &config,
        format!(
            "[config]\npyti_master_root = {root}\nlisten = 127.0.0.1:{port}\ndatabase = postgres://pyti:{secret}@127.0.0.1:1/test\n",
            root = dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pyti-master"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("postgres://pyti:***@127.0.0.1:1/test"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");
    let error = pyti_master::store::open(&format!("postgres://pyti:{secret}@127.0.0.1:1/test"))
        .await
        .err()
        .expect("nothing listens on port 1")
        .to_string();
    assert!(!error.contains(secret), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_cancel_records_one_history_row() {
    let farm = TestFarm::start().await;
    let job = queued_job(&farm, "cancelled").await;
    assert_eq!(
        job.submitted_by, "local",
        "an open master records a local submitter"
    );
    let mut link = farm.registry().await;
    let started = link
        .start_job(start("runner", &job.job_id, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(started.proceed);
    let mut jobs = farm.jobs().await;
    let cancel = proto::CancelJobRequest {
        job_id: job.job_id.clone(),
        reason: "enough".into(),
    };
    jobs.cancel_job(cancel.clone()).await.unwrap();
    let once = get_job(&mut jobs, &job.job_id).await.history.len();
    for _ in 0..3 {
        jobs.cancel_job(cancel.clone()).await.unwrap();
    }
    let after = get_job(&mut jobs, &job.job_id).await;
    assert_eq!(after.history.len(), once, "{:?}", after.history);
    assert!(after
        .history
        .last()
        .unwrap()
        .reason
        .contains("cancel requested"));
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_id_of_the_assignment_starts_the_job() {
    let farm = TestFarm::builder().mtls().start().await;
    // A worker whose control plane answers but that takes nothing off its queue: the
    // test is its master link.
    let worker = farm.worker("lessee").start_control_only().await;
    let identity = farm.worker_certificate(&worker.id);
    let mut link = farm.registry_as(&identity).await;
    let mut registration = register(&worker.id, &worker.control_address);
    registration.capacity = Some(worker.handle.capacity().advertised());
    link.register(registration).await.unwrap();
    let mut jobs = farm.jobs().await;
    wait_connected(&farm.registry().await, &worker.id, Duration::from_secs(20)).await;
    let job = try_submit(&mut jobs, spec("leased", "1.0", PLATFORM, &[]), false)
        .await
        .unwrap();
    let store = farm.store().await;
    let job_id = job.job_id.clone();
    pyti_testkit::wait::wait_until("the job is assigned", Duration::from_secs(20), || {
        let (store, job_id) = (Arc::clone(&store), job_id.clone());
        async move { store.get_job(&job_id).await.unwrap().unwrap().state == JobState::Assigned }
    })
    .await;
    let assigned = store.get_job(&job.job_id).await.unwrap().unwrap();
    assert_eq!(assigned.lease_id.len(), 32, "{assigned:?}");
    let mut guess = start(&worker.id, &job.job_id, 1);
    guess.lease_id = "0".repeat(32);
    let refused = link.start_job(guess).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        get_job(&mut jobs, &job.job_id).await.state(),
        JobState::Assigned
    );
    let mut held = start(&worker.id, &job.job_id, 1);
    held.lease_id = assigned.lease_id.clone();
    assert!(link.start_job(held).await.unwrap().into_inner().proceed);
    assert_eq!(
        get_job(&mut jobs, &job.job_id).await.state(),
        JobState::Running
    );
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submit_with_its_key_makes_one_job() {
    let farm = TestFarm::builder().mtls().start().await;
    let mut jobs = farm.jobs().await;
    let request = |key: &str| proto::SubmitJobRequest {
        spec: Some(spec("once", "1.0", NOWHERE, &[])),
        queue_without_capacity: true,
        idempotency_key: key.to_owned(),
    };
    let first = jobs
        .submit_job(request("k-1"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let again = jobs
        .submit_job(request("k-1"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(first.job_id, again.job_id);
    let other = jobs
        .submit_job(request("k-2"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_ne!(first.job_id, other.job_id);
    // Another caller's same key is its own.
    let stranger = farm.client_certificate("stranger", Role::Admin);
    let theirs = farm
        .jobs_as(&stranger)
        .await
        .submit_job(request("k-1"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_ne!(first.job_id, theirs.job_id);
    let listed = jobs
        .list_jobs(proto::ListJobsRequest {
            project_name: "once".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let refused = jobs
        .submit_job(request(&"k".repeat(129)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    farm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_clients_cancel_only_their_own_jobs() {
    let farm = TestFarm::builder()
        .mtls()
        .binary(env!("CARGO_BIN_EXE_pyti-master"))
        .start()
        .await;
    // A worker that offers the platform (registered by hand: nothing needs to run), so
    // submit clients may submit without queueing anyway.
    let offering = farm.worker_certificate("owner-check");
    let mut registration = register("owner-check", "http://127.0.0.1:1");
    registration.capacity = Some(proto::Capacity {
        worker_id: "owner-check".into(),
        platforms: vec![proto::PlatformCapacity {
            platform: PLATFORM.into(),
            total: 1,
            ready: 1,
            ..Default::default()
        }],
        ..Default::default()
    });
    farm.registry_as(&offering)
        .await
        .register(registration)
        .await
        .unwrap();
    let mut alice = farm
        .jobs_as(&farm.client_certificate("alice", Role::Submit))
        .await;
    let mut bob = farm
        .jobs_as(&farm.client_certificate("bob", Role::Submit))
        .await;
    let mut admin = farm.jobs().await;
    let cancel = |job_id: &str, reason: &str| proto::CancelJobRequest {
        job_id: job_id.to_owned(),
        reason: reason.to_owned(),
    };

    let job = try_submit(&mut alice, spec("owned", "1.0", PLATFORM, &[]), false)
        .await
        .expect("alice submits");
    assert_eq!(job.submitted_by, "client:alice");
    let refused = bob
        .cancel_job(cancel(&job.job_id, "bob was here"))
        .await
        .unwrap_err();
    assert_refused(&refused, Code::PermissionDenied, "client:alice");
    assert!(
        refused.message().contains("ask its submitter or an admin"),
        "{}",
        refused.message()
    );
    let after = get_job(&mut admin, &job.job_id).await;
    assert!(!after
        .history
        .iter()
        .any(|h| h.state() == JobState::Cancelled
            || h.reason.contains("bob was here")
            || h.reason.contains("cancel")));
    assert_ne!(after.state(), JobState::Cancelled);

    let own = alice
        .cancel_job(cancel(&job.job_id, "alice changed her mind"))
        .await
        .expect("alice cancels her own job")
        .into_inner()
        .job
        .unwrap();
    assert_eq!(own.state(), JobState::Cancelled, "nobody started it");
    assert_eq!(
        get_job(&mut admin, &job.job_id).await.state(),
        JobState::Cancelled
    );

    let other = try_submit(&mut bob, spec("owned", "2.0", PLATFORM, &[]), false)
        .await
        .expect("bob submits");
    assert_eq!(other.submitted_by, "client:bob");
    admin
        .cancel_job(cancel(&other.job_id, "an admin cancels anything"))
        .await
        .expect("an admin cancels bob's job");
    assert_eq!(
        get_job(&mut admin, &other.job_id).await.state(),
        JobState::Cancelled
    );
    farm.finish().await;
}
