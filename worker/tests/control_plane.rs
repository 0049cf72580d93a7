//! The worker's control plane as clients see it: the services answer, health says
//! SERVING, reflection (v1 and v1alpha) lists and describes them, and grpcurl works
//! with no proto files at hand.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pyti::config::IniFile;
use pyti::proto::worker_control_client::WorkerControlClient;
use pyti::proto::{
    DrainRequest, GetCapacityRequest, ListVmsRequest, VmState, WatchCapacityRequest,
    WorkerCancelJobRequest,
};
use pyti_testkit::grpc;
use pyti_testkit::net::free_port;
use pyti_worker::capacity::WorkerCapacity;
use pyti_worker::config::WorkerConfig;
use pyti_worker::control::ControlService;
use pyti_worker::stateofvm::SlotPool;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = "[config]\nworker_id = w1\ntotal_vms = 3\n\n[platform linux-debian]\nvms = 2\nvariants = python3.11\n\n[platform linux-other]\nvms = 1\n";

/// A worker's control plane over [`CONFIG`], serving until stopped.
struct ControlPlane {
    url: String,
    stop: CancellationToken,
    server: JoinSet<()>,
}

impl ControlPlane {
    async fn start() -> Self {
        let file = IniFile::parse(CONFIG, Path::new("test_config")).unwrap();
        let config = Arc::new(WorkerConfig::from_ini(&file, &|_| None).unwrap());
        let (listener, addr) = pyti::grpc::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
        let stop = CancellationToken::new();
        let mut server = JoinSet::new();
        let stopped = stop.clone().cancelled_owned();
        server.spawn(async move {
            let pool = SlotPool::new(config.slot_names()).unwrap();
            let control = ControlService::new(WorkerCapacity::new(&config, pool));
            pyti_worker::control::serve(control, listener, &pyti::grpc::Security::open(), stopped)
                .await
                .unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            stop,
            server,
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        while let Some(served) = self.server.join_next().await {
            served.unwrap();
        }
    }
}

#[tokio::test]
async fn capacity_comes_from_the_configuration_and_drain_reaches_watchers() {
    let worker = ControlPlane::start().await;
    let mut client = WorkerControlClient::connect(worker.url.clone())
        .await
        .unwrap();
    let capacity = client
        .get_capacity(GetCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(capacity.worker_id, "w1");
    let summary: Vec<(String, u32, u32, Vec<String>)> = capacity
        .platforms
        .iter()
        .map(|p| (p.platform.clone(), p.total, p.ready, p.variants.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "linux-debian".to_owned(),
                2,
                2,
                vec!["python3.11".to_owned()]
            ),
            ("linux-other".to_owned(), 1, 1, vec![])
        ]
    );
    assert!(!capacity.draining);

    let vms = client
        .list_vms(ListVmsRequest {
            platform: "linux-debian".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .vms;
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["pyti-w1-linux-debian-0", "pyti-w1-linux-debian-1"]);
    assert!(vms
        .iter()
        .all(|v| v.state == VmState::Ready as i32 && v.job_id.is_empty()));

    let mut watch = client
        .watch_capacity(WatchCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert!(!first.draining);
    let drained = client.drain(DrainRequest {}).await.unwrap().into_inner();
    assert!(drained.capacity.unwrap().draining);
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next.draining);
    assert!(next.platforms.iter().all(|p| p.ready == 0 && p.total > 0));

    let err = client
        .cancel_job(WorkerCancelJobRequest {
            job_id: "j1".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("CancelJob j1"), "{}", err.message());
    worker.stop().await;
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_reflection::pb::v1alpha;

    let worker = ControlPlane::start().await;
    let channel = grpc::channel(&worker.url).await;
    grpc::assert_serving(&channel, &["", "pyti.v1.WorkerControl"]).await;
    assert_eq!(
        grpc::reflected_services(&channel).await,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "pyti.v1.WorkerControl"
        ]
    );

    // grpcurl 1.8 asks v1alpha for symbols: the master and job messages must resolve too.
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "pyti.v1.JobService".into(),
            ),
        ),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    worker.stop().await;
}

/// grpcurl, when the host has it (`scripts/setup-host.sh` installs it; CI requires it).
fn grpcurl() -> Option<String> {
    let candidates = [
        std::env::var("PYTI_GRPCURL").ok(),
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tools/grpcurl").to_owned()),
        Some("grpcurl".to_owned()),
    ];
    let found = candidates.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcurl is missing: run scripts/setup-host.sh"
        );
        eprintln!("grpcurl not found: the grpcurl part of this test is left out");
    }
    found
}

#[test]
fn the_binary_serves_grpcurl_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("pyti_config");
    std::fs::write(
        &config,
        format!(
            "[config]\npyti_slave_root = {}\nworker_id = w2\nlisten = 127.0.0.1:{port}\nmaster = http://127.0.0.1:9\n[platform linux-debian]\nvms = 3\nhypervisor = test:///default\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_pyti-worker"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    // Serving, the worker handles signals; merely listening, SIGTERM would kill it.
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(grpc::wait_serving(
            &format!("http://{addr}"),
            Duration::from_secs(30),
        ));

    if let Some(grpcurl) = grpcurl() {
        let run = |args: &[&str]| {
            let out = Command::new(&grpcurl).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "grpcurl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let list = run(&["-plaintext", &addr, "list"]);
        assert!(list.contains("pyti.v1.WorkerControl"), "{list}");
        assert!(list.contains("grpc.health.v1.Health"), "{list}");
        let described = run(&["-plaintext", &addr, "describe", "pyti.v1.WorkerControl"]);
        assert!(described.contains("rpc WatchCapacity"), "{described}");
        let capacity = run(&["-plaintext", &addr, "pyti.v1.WorkerControl/GetCapacity"]);
        let json: serde_json::Value = serde_json::from_str(&capacity).unwrap();
        assert_eq!(json["workerId"], "w2");
        assert_eq!(json["platforms"][0]["platform"], "linux-debian");
        assert_eq!(json["platforms"][0]["total"], 3);
        let health = run(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
        assert!(health.contains("SERVING"), "{health}");
    }

    let pid = worker.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = worker.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(log.contains("pyti-worker stopped"), "{log}");
}

#[test]
fn a_bad_config_is_refused_with_file_section_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pyti_config");
    std::fs::write(&config, "[config]\ntotal_vms = many\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pyti-worker"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: [config] total_vms: \"many\" is not a whole number",
            config.display()
        )),
        "{stderr}"
    );
}
