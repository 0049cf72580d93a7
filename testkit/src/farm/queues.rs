//! Deleting a farm's queues once its test is over: every farm has a queue prefix of its
//! own, and RabbitMQ is shared by every test (and every engineer) on the machine.

use pyti_master::broker::{Broker, Topology};
use tokio_util::sync::CancellationToken;

use super::AMQP;

/// What a farm declared under its prefix.
#[derive(Debug, Clone, Default)]
pub struct Queues {
    /// Queues by full name (platform queues, those a master declared).
    pub names: Vec<String>,
    /// Workers whose queues to delete.
    pub worker_ids: Vec<String>,
}

impl Queues {
    /// The platform queues of `platforms` under `prefix`, and the queues of `worker_ids`.
    pub fn of(prefix: &str, platforms: &[&str], worker_ids: &[&str]) -> Self {
        Self {
            names: platforms
                .iter()
                .map(|p| format!("{prefix}.platform.{p}"))
                .collect(),
            worker_ids: worker_ids.iter().map(|w| (*w).to_owned()).collect(),
        }
    }
}

/// Deletes every queue of `prefix` (the fixed ones, and `queues`) through a master-less
/// broker handle.
pub async fn delete_queues(prefix: &str, queues: &Queues) {
    let stop = CancellationToken::new();
    let (broker, supervisor) = Broker::start(
        pyti::amqp::Amqp::new(AMQP, None).expect("a plain URL"),
        Topology {
            prefix: prefix.to_owned(),
            worker_queue_ttl_ms: 1,
        },
        stop.clone(),
    );
    let mut names: Vec<String> = queues
        .worker_ids
        .iter()
        .map(|w| broker.topology.worker_queue(w))
        .collect();
    names.extend(queues.names.iter().cloned());
    broker
        .delete_topology(&names)
        .await
        .unwrap_or_else(|e| panic!("deleting the queues of {prefix}: {e}"));
    stop.cancel();
    supervisor.await.expect("the broker supervisor stops");
}

/// [`delete_queues`] from outside any runtime: on a thread of its own (a test that
/// panicked is unwinding inside its runtime, which cannot block on another).
pub fn delete_queues_blocking(prefix: &str, queues: &Queues) {
    std::thread::scope(|scope| {
        let deleting = scope.spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("a runtime for the clean-up")
                .block_on(delete_queues(prefix, queues));
        });
        if deleting.join().is_err() {
            eprintln!("the queues of {prefix} could not be deleted");
        }
    });
}
