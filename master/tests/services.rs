//! The master's gRPC surface as clients see it: health, reflection listing exactly the
//! master's services, and honest UNIMPLEMENTED answers for what is not built yet.

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

    let (listener, addr) = pyti::grpc::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pyti_master::service::serve(
        pyti_master::service::MasterService,
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
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
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(
        err.message().starts_with("SubmitJob: "),
        "{}",
        err.message()
    );
    drop(jobs);
    drop(health);
    drop(reflection);
    drop(answers);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
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
    std::fs::write(
        &config,
        format!(
            "[config]\npyti_master_root = {}\nlisten = 127.0.0.1:{port}\n",
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
}
