//! The master's gRPC surface as clients see it: health, reflection listing exactly the
//! master's services, and a clear refusal of a job no registered worker can run.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use pyti::proto::job_service_client::JobServiceClient;
use pyti::proto::{JobSpec, SubmitJobRequest};
use tokio_stream::StreamExt;

#[tokio::test]
async fn serves_health_reflection_and_says_what_is_missing() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1;

    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("master.sqlite");
    let master = common::Master::start(
        common::settings(&common::prefix(), Duration::from_secs(5), 3),
        database.to_str().unwrap(),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(master.address.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["pyti.v1.JobService", "pyti.v1.WorkerRegistry"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
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
    drop(health);
    drop(reflection);
    drop(answers);
    tokio::time::timeout(Duration::from_secs(20), master.finish(&[]))
        .await
        .unwrap();
}

#[test]
fn the_binary_stops_cleanly_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("master.ini");
    let prefix = common::prefix();
    std::fs::write(
        &config,
        format!(
            "[config]\npyti_master_root = {}\nlisten = 127.0.0.1:{port}\nqueue_prefix = {prefix}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut master = Command::new(env!("CARGO_BIN_EXE_pyti-master"))
        .args(["--log-json", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "pyti-master did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill")
        .args(["-INT", &master.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = master.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(master.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{status:?}: {log}");
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["fields"]["message"], "pyti-master stopped", "{log}");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::delete_queues(&prefix, &[], &[]));
}
