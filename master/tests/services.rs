//! The master's gRPC surface as clients see it: health, reflection listing exactly the
//! master's services, and a clear refusal of a job no registered worker can run.

use std::time::Duration;

use pyti::proto::job_service_client::JobServiceClient;
use pyti::proto::{JobSpec, SubmitJobRequest};
use pyti_testkit::farm::TestFarm;
use pyti_testkit::grpc;

#[tokio::test]
async fn serves_health_reflection_and_says_what_is_missing() {
    let farm = TestFarm::start().await;
    let channel = grpc::channel(&farm.address).await;
    grpc::assert_serving(&channel, &["pyti.v1.JobService", "pyti.v1.WorkerRegistry"]).await;

    let names = grpc::reflected_services(&channel).await;
    assert!(
        names.contains(&"pyti.v1.JobService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"pyti.v1.WorkerRegistry".to_owned()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"pyti.v1.WorkerControl".to_owned()),
        "{names:?}"
    );

    let mut jobs = JobServiceClient::new(channel);
    let spec = JobSpec {
        project_name: "rarfile".into(),
        ..Default::default()
    };
    let err = jobs
        .submit_job(SubmitJobRequest {
            spec: Some(spec),
            queue_without_capacity: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("the farm offers: nothing (no worker registered)"),
        "{}",
        err.message()
    );
    drop(jobs);
    tokio::time::timeout(Duration::from_secs(20), farm.finish())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_binary_stops_cleanly_on_sigint() {
    let mut farm = TestFarm::builder()
        .binary(env!("CARGO_BIN_EXE_pyti-master"))
        .start()
        .await;
    let (status, log) = farm.master_process().interrupt();
    assert!(status.success(), "{status:?}: {log}");
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["fields"]["message"], "pyti-master stopped", "{log}");
    farm.finish().await;
}
