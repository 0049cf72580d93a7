//! RabbitMQ over `amqps://` with client certificates: a private RabbitMQ node
//! (`scripts/rabbitmq-tls`) that speaks only TLS and wants a certificate from the farm
//! CA, a master process and a worker configured for it, and a connection without a
//! certificate that the node turns away.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::ConnectionProperties;
use pyti::amqp::{Amqp, AmqpTls};
use pyti::proto::JobState;
use pyti::trust::ca::{self, Issue, Subject};
use pyti_testkit::farm::client::{spec, try_submit, wait_connected, wait_job_ended};
use pyti_testkit::farm::{TestFarm, PLATFORM};

/// The private node, stopped (SIGTERM to the process this test started, which stops
/// the node cleanly) when dropped.
struct TlsNode {
    child: Child,
    port: u16,
}

impl TlsNode {
    fn start(dir: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-tls");
        let (port, dist_port) = (
            pyti_testkit::net::free_port(),
            pyti_testkit::net::free_port(),
        );
        let log = std::fs::File::create(dir.join("rabbitmq.log")).unwrap();
        let child = Command::new(script)
            .arg(dir)
            .arg(port.to_string())
            .arg(dist_port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("scripts/rabbitmq-tls starts");
        Self { child, port }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn issue(dir: &Path, subject: Subject) -> (PathBuf, PathBuf) {
    ca::issue(
        dir,
        &Issue {
            subject,
            dns: vec!["localhost".into()],
            ips: vec![[127, 0, 0, 1].into()],
            days: 1,
        },
    )
    .expect("the farm CA issues a certificate")
}

/// Connects until the node answers (it takes some seconds to boot).
async fn wait_ready(amqp: &Amqp, node: &mut TlsNode, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match amqp.connect(ConnectionProperties::default()).await {
            Ok(connection) => {
                let _ = connection.close(200, "ready").await;
                return;
            }
            Err(error) => {
                if let Ok(Some(status)) = node.child.try_wait() {
                    panic!(
                        "the TLS RabbitMQ node exited ({status}): {}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "the TLS RabbitMQ node did not answer in 90 s: {error}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_worker_use_rabbitmq_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    ca::init(&ca_dir, 1).unwrap();
    issue(&ca_dir, Subject::Broker);
    let (cert, key) = issue(&ca_dir, Subject::Master);
    let mut node = TlsNode::start(&ca_dir);
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", node.port);
    let with_certificate = AmqpTls {
        ca: ca_dir.join("ca.pem"),
        identity: Some((cert, key)),
    };
    let amqp = Amqp::new(&url, Some(&with_certificate)).unwrap();
    wait_ready(&amqp, &mut node, &ca_dir.join("rabbitmq.log")).await;

    // Without a client certificate the node refuses the TLS handshake.
    let without = AmqpTls {
        identity: None,
        ..with_certificate.clone()
    };
    let refused = Amqp::new(&url, Some(&without))
        .unwrap()
        .connect(ConnectionProperties::default())
        .await;
    assert!(
        refused.is_err(),
        "a connection without a client certificate was accepted"
    );
    // Nor does plaintext AMQP get anywhere on that port.
    let plain = Amqp::new(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.port),
        None,
    )
    .unwrap()
    .connect(ConnectionProperties::default())
    .await;
    assert!(plain.is_err(), "plaintext AMQP was accepted");

    let farm = TestFarm::builder()
        .binary(env!("CARGO_BIN_EXE_pyti-master"))
        .amqp(&url, Some(with_certificate))
        .start()
        .await;
    // A worker that consumes its queue on the TLS node with its own certificate.
    let builder = farm.worker("amqps");
    let (worker_cert, worker_key) = issue(&ca_dir, Subject::Worker(builder.worker_id().into()));
    let worker_tls = AmqpTls {
        ca: ca_dir.join("ca.pem"),
        identity: Some((worker_cert, worker_key)),
    };
    let worker = builder.amqp(&url, Some(worker_tls)).start().await;
    wait_connected(&farm.registry().await, &worker.id, Duration::from_secs(20)).await;
    let mut jobs = farm.jobs().await;
    let job = try_submit(&mut jobs, spec("over-tls", "1.0", PLATFORM, &[]), false)
        .await
        .expect("the job is published to the TLS node");
    // The master published it, dispatched it to the worker's queue, and the worker took
    // it from there: all over amqps://.
    let ended = wait_job_ended(&mut jobs, &job.job_id, Duration::from_secs(60)).await;
    assert_eq!(ended.state(), JobState::Succeeded, "{:?}", ended.history);
    assert_eq!(ended.worker_id, worker.id);
    let runs = farm.runs();
    assert_eq!(
        runs.iter().filter(|r| r.job_id == job.job_id).count(),
        1,
        "{runs:?}"
    );

    farm.finish().await;
    node.stop();
    let status = node.child.try_wait().unwrap();
    assert!(status.is_some(), "the TLS RabbitMQ node stopped");
}
