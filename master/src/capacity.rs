//! Workers and their capacity: registration, one task per worker watching its
//! `WorkerControl.WatchCapacity` stream, and the table the scheduler decides over.
//!
//! The table is only as good as the streams: a worker whose stream broke is marked
//! disconnected and gets no work until the stream is back, so a worker that died is
//! never handed jobs it cannot take.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use pyti::proto::{self, worker_control_client::WorkerControlClient};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::broker::QueueKind;
use crate::convert::{self, now_ms};
use crate::error::{Error, Result};
use crate::farm::{Farm, WorkerRuntime};
use crate::scheduler::{PlatformSlots, WorkerEntry};
use crate::store::WorkerRow;

/// The table entry for a capacity report, keeping what the master itself tracks.
pub fn apply_capacity(entry: &mut WorkerEntry, capacity: &proto::Capacity) {
    entry.draining = capacity.draining;
    entry.platforms = capacity
        .platforms
        .iter()
        .map(|p| {
            (
                p.platform.clone(),
                PlatformSlots {
                    variants: p.variants.iter().cloned().collect(),
                    total: p.total,
                    ready: p.ready,
                    running: p.running,
                    broken: p.broken,
                },
            )
        })
        .collect();
}

impl Farm {
    /// A worker announces itself: its queue is declared, its capacity recorded and
    /// watched.
    pub async fn register(
        self: &Arc<Self>,
        request: proto::RegisterRequest,
    ) -> Result<proto::RegisterResponse> {
        if request.worker_id.is_empty() || request.control_address.is_empty() {
            return Err(Error::BadRequest(
                "Register needs worker_id and control_address".to_owned(),
            ));
        }
        let queue = self.broker.topology.worker_queue(&request.worker_id);
        self.broker.declare(&queue, QueueKind::Worker).await?;
        let capacity = request.capacity.unwrap_or_default();
        let now = now_ms();
        let known = self
            .workers
            .lock()
            .expect("workers lock")
            .get(&request.worker_id)
            .map(|w| w.registered_at_ms);
        let registered_at_ms = known.unwrap_or(now);
        self.store
            .upsert_worker(&WorkerRow {
                worker_id: request.worker_id.clone(),
                control_address: request.control_address.clone(),
                capacity: capacity.encode_to_vec(),
                registered_at_ms,
                last_seen_ms: now,
            })
            .await?;
        self.remember_worker(
            &request.worker_id,
            &request.control_address,
            capacity,
            registered_at_ms,
        );
        if known.is_none() {
            tracing::info!(worker_id = %request.worker_id, address = %request.control_address, "Worker registered");
        }
        Ok(proto::RegisterResponse {
            queue_name: queue,
            lease_renew_interval_s: u32::try_from((self.settings.lease / 3).as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
        })
    }

    /// Puts a worker read from the store back into the table (disconnected until its
    /// capacity stream answers).
    pub(crate) fn restore_worker(self: &Arc<Self>, row: &WorkerRow) {
        let capacity = proto::Capacity::decode(row.capacity.as_slice()).unwrap_or_default();
        self.remember_worker(
            &row.worker_id,
            &row.control_address,
            capacity,
            row.registered_at_ms,
        );
    }

    fn remember_worker(
        self: &Arc<Self>,
        worker_id: &str,
        address: &str,
        capacity: proto::Capacity,
        registered_at_ms: i64,
    ) {
        for platform in &capacity.platforms {
            self.want_platform(&platform.platform);
        }
        {
            let mut table = self.table.lock().expect("table lock");
            let entry = table.workers.entry(worker_id.to_owned()).or_default();
            apply_capacity(entry, &capacity);
        }
        let mut workers = self.workers.lock().expect("workers lock");
        let same_watch = workers
            .get(worker_id)
            .is_some_and(|w| w.control_address == address && w.watcher.is_some());
        let watcher = if same_watch {
            workers.get(worker_id).and_then(|w| w.watcher.clone())
        } else {
            if let Some(old) = workers.get(worker_id).and_then(|w| w.watcher.clone()) {
                old.cancel();
            }
            let token = self.shutdown.child_token();
            self.tasks.spawn(Arc::clone(self).watch_capacity(
                worker_id.to_owned(),
                address.to_owned(),
                token.clone(),
            ));
            Some(token)
        };
        workers.insert(
            worker_id.to_owned(),
            WorkerRuntime {
                control_address: address.to_owned(),
                registered_at_ms,
                last_seen_ms: now_ms(),
                capacity,
                watcher,
            },
        );
        self.wake_dispatcher.notify_one();
    }

    fn set_connected(&self, worker_id: &str, connected: bool) {
        if let Some(entry) = self
            .table
            .lock()
            .expect("table lock")
            .workers
            .get_mut(worker_id)
        {
            entry.connected = connected;
        }
        if connected {
            self.wake_dispatcher.notify_one();
        }
    }

    async fn watch_capacity(
        self: Arc<Self>,
        worker_id: String,
        address: String,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let watched = async {
                let mut client = WorkerControlClient::connect(address.clone()).await?;
                let mut stream = client
                    .watch_capacity(proto::WatchCapacityRequest {})
                    .await?
                    .into_inner();
                while let Some(capacity) = stream.next().await {
                    let capacity = capacity?;
                    backoff = Duration::from_millis(100);
                    self.capacity_report(&worker_id, capacity);
                }
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            };
            let result = tokio::select! {
                () = stop.cancelled() => break,
                result = watched => result,
            };
            self.set_connected(&worker_id, false);
            if let Err(error) = result {
                tracing::debug!(%worker_id, %address, %error, "Capacity stream lost");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.set_connected(&worker_id, false);
    }

    fn capacity_report(&self, worker_id: &str, capacity: proto::Capacity) {
        {
            let mut table = self.table.lock().expect("table lock");
            let entry = table.workers.entry(worker_id.to_owned()).or_default();
            apply_capacity(entry, &capacity);
            entry.connected = true;
        }
        if let Some(worker) = self
            .workers
            .lock()
            .expect("workers lock")
            .get_mut(worker_id)
        {
            worker.capacity = capacity;
            worker.last_seen_ms = now_ms();
        }
        self.wake_dispatcher.notify_one();
    }

    /// Every registered worker with its live capacity.
    pub fn list_workers(&self) -> Vec<proto::WorkerInfo> {
        let table = self.table.lock().expect("table lock");
        let workers = self.workers.lock().expect("workers lock");
        workers
            .iter()
            .map(|(id, w)| {
                let entry = table.workers.get(id);
                proto::WorkerInfo {
                    worker_id: id.clone(),
                    control_address: w.control_address.clone(),
                    capacity: Some(w.capacity.clone()),
                    registered_at: Some(convert::timestamp(w.registered_at_ms)),
                    last_seen: Some(convert::timestamp(w.last_seen_ms)),
                    assigned_not_started: entry
                        .map_or(0, |e| u32::try_from(e.pending.len()).unwrap_or(u32::MAX)),
                    connected: entry.is_some_and(|e| e.connected),
                }
            })
            .collect()
    }

    /// Asks a worker to drain through its control plane.
    pub async fn drain_worker(&self, worker_id: &str) -> Result<proto::DrainWorkerResponse> {
        let address = self
            .workers
            .lock()
            .expect("workers lock")
            .get(worker_id)
            .map(|w| w.control_address.clone())
            .ok_or_else(|| Error::WorkerNotFound(worker_id.to_owned()))?;
        let unreachable = |message: String| Error::WorkerUnreachable {
            worker_id: worker_id.to_owned(),
            address: address.clone(),
            message,
        };
        let mut client = WorkerControlClient::connect(address.clone())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = client
            .drain(proto::DrainRequest {})
            .await
            .map_err(|e| unreachable(e.message().to_owned()))?
            .into_inner();
        if let Some(entry) = self
            .table
            .lock()
            .expect("table lock")
            .workers
            .get_mut(worker_id)
        {
            entry.draining = true;
        }
        Ok(proto::DrainWorkerResponse {
            capacity: answer.capacity,
        })
    }
}
