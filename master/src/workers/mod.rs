//! Workers and their capacity: registration, one task per worker watching its
//! `WorkerControl.WatchCapacity` stream, and the table the scheduler decides over.
//!
//! [`Workers`] is the one owner of what the master knows about workers: who is
//! registered and where, what each last reported, whether its stream is open, and
//! which jobs the master has placed on it. Every other part asks through its methods.
//!
//! The table is only as good as the streams: a worker whose stream broke is marked
//! disconnected and gets no work until the stream is back, so a worker that died is
//! never handed jobs it cannot take.

mod capacity;
mod control;
mod watch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyti::model::JobSpec;
use tokio_util::sync::CancellationToken;

pub use capacity::{Capacity, PlatformCapacity, Registered, Registration, WorkerView};

use crate::broker::{Broker, QueueKind};
use crate::convert;
use crate::dispatch::DispatchSignals;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::scheduler::{CapacityTable, Requirement, WorkerEntry};
use crate::store::{Millis, Store, WorkerRow};
use control::Control;

/// How long a worker that gave a job back gets no job of that platform.
pub const GIVE_BACK_PAUSE_MS: Millis = 5_000;

/// A registered worker's link to the master.
#[derive(Debug)]
struct Link {
    control_address: String,
    registered_at_ms: Millis,
    last_seen_ms: Millis,
    /// Its last capacity report, as it sent it.
    capacity: Capacity,
    /// Stops the task watching its capacity.
    watcher: Option<CancellationToken>,
}

/// The registry of workers and the capacity table.
pub struct Workers {
    /// What the scheduler decides over (derived from the reports, plus the master's
    /// own placements).
    table: Mutex<CapacityTable>,
    /// Registered workers by id. Locked after `table` when both are.
    links: Mutex<BTreeMap<String, Link>>,
    store: Arc<dyn Store>,
    broker: Broker,
    signals: DispatchSignals,
    runtime: Runtime,
    renew_every: Duration,
    /// The master's identity, presented to workers' control planes.
    tls: Option<pyti::trust::TlsFiles>,
}

impl Workers {
    /// An empty registry; workers lease jobs for `lease`; the master calls them with
    /// `tls` when given.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        broker: Broker,
        signals: DispatchSignals,
        runtime: Runtime,
        (lease, tls): (Duration, Option<pyti::trust::TlsFiles>),
    ) -> Self {
        Self {
            table: Mutex::new(CapacityTable::default()),
            links: Mutex::new(BTreeMap::new()),
            store,
            broker,
            signals,
            runtime,
            renew_every: (lease / 3).max(Duration::from_secs(1)),
            tls,
        }
    }

    fn table(&self) -> MutexGuard<'_, CapacityTable> {
        self.table.lock().expect("capacity table lock")
    }

    fn links(&self) -> MutexGuard<'_, BTreeMap<String, Link>> {
        self.links.lock().expect("worker links lock")
    }

    /// Changes `worker_id`'s table entry, if it has one.
    fn with_entry(&self, worker_id: &str, change: impl FnOnce(&mut WorkerEntry)) {
        if let Some(entry) = self.table().workers.get_mut(worker_id) {
            change(entry);
        }
    }

    /// A worker announces itself: its queue is declared, its capacity recorded and
    /// watched.
    pub async fn register(self: &Arc<Self>, registration: Registration) -> Result<Registered> {
        let Registration {
            worker_id,
            control_address,
            capacity,
        } = registration;
        if worker_id.is_empty() || control_address.is_empty() {
            return Err(Error::BadRequest(
                "Register needs worker_id and control_address".to_owned(),
            ));
        }
        let queue = self.broker.topology.worker_queue(&worker_id);
        self.broker.declare(&queue, QueueKind::Worker).await?;
        let now = self.runtime.now_ms();
        let known = self.links().get(&worker_id).map(|w| w.registered_at_ms);
        let registered_at_ms = known.unwrap_or(now);
        self.store
            .upsert_worker(&WorkerRow {
                worker_id: worker_id.clone(),
                control_address: control_address.clone(),
                capacity: convert::capacity_blob(&capacity),
                registered_at_ms,
                last_seen_ms: now,
            })
            .await?;
        self.remember(&worker_id, &control_address, capacity, registered_at_ms);
        if known.is_none() {
            tracing::info!(%worker_id, address = %control_address, "Worker registered");
        }
        Ok(Registered {
            queue_name: queue,
            renew_every: self.renew_every,
        })
    }

    /// After a start: puts every worker the store knows back into the table
    /// (disconnected until its capacity stream answers).
    pub(crate) async fn restore(self: &Arc<Self>) -> Result<()> {
        for row in self.store.workers().await? {
            let capacity = convert::capacity_from_blob(&row.capacity);
            self.remember(
                &row.worker_id,
                &row.control_address,
                capacity,
                row.registered_at_ms,
            );
        }
        Ok(())
    }

    fn remember(
        self: &Arc<Self>,
        worker_id: &str,
        address: &str,
        capacity: Capacity,
        registered_at_ms: Millis,
    ) {
        for platform in &capacity.platforms {
            self.signals.want_platform(&platform.platform);
        }
        {
            let mut table = self.table();
            let entry = table.workers.entry(worker_id.to_owned()).or_default();
            entry.platforms = capacity.slots();
            entry.draining = capacity.draining;
        }
        let mut links = self.links();
        let old = links.get(worker_id);
        let same_watch = old.is_some_and(|w| w.control_address == address && w.watcher.is_some());
        let watcher = if same_watch {
            old.and_then(|w| w.watcher.clone())
        } else {
            if let Some(previous) = old.and_then(|w| w.watcher.as_ref()) {
                previous.cancel();
            }
            Some(self.start_watching(worker_id, address))
        };
        links.insert(
            worker_id.to_owned(),
            Link {
                control_address: address.to_owned(),
                registered_at_ms,
                last_seen_ms: self.runtime.now_ms(),
                capacity,
                watcher,
            },
        );
        self.signals.wake();
    }

    /// A capacity report from `worker_id`'s stream.
    fn report(&self, worker_id: &str, capacity: Capacity) {
        {
            let mut table = self.table();
            let entry = table.workers.entry(worker_id.to_owned()).or_default();
            entry.platforms = capacity.slots();
            entry.draining = capacity.draining;
            entry.connected = true;
        }
        if let Some(link) = self.links().get_mut(worker_id) {
            link.capacity = capacity;
            link.last_seen_ms = self.runtime.now_ms();
        }
        self.signals.wake();
    }

    fn set_connected(&self, worker_id: &str, connected: bool) {
        self.with_entry(worker_id, |entry| entry.connected = connected);
        if connected {
            self.signals.wake();
        }
    }

    /// Forgets every worker silent for `silent_for` (no Register, no capacity report,
    /// its stream down) that holds no job, deleting its queue; looks every `every`
    /// until shutdown. A queue with a message or a consumer is never deleted, and its
    /// worker stays.
    pub(crate) async fn expire_silent(self: Arc<Self>, silent_for: Duration, every: Duration) {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                () = self.runtime.cancelled() => return,
                _ = tick.tick() => {}
            }
            let cutoff = self.runtime.now_ms() - crate::clock::millis(silent_for);
            for worker_id in self.silent_since(cutoff) {
                if let Err(error) = self.expire(&worker_id).await {
                    tracing::debug!(%worker_id, %error, "Silent worker kept for now");
                }
            }
        }
    }

    /// Workers last heard of before `cutoff`, disconnected, holding no job.
    fn silent_since(&self, cutoff: Millis) -> Vec<String> {
        let table = self.table();
        let links = self.links();
        links
            .iter()
            .filter(|(id, link)| {
                let idle = table
                    .workers
                    .get(*id)
                    .is_none_or(|e| !e.connected && e.pending.is_empty() && e.running.is_empty());
                link.last_seen_ms < cutoff && idle
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    async fn expire(&self, worker_id: &str) -> Result<()> {
        let holding = self
            .store
            .list_jobs(&crate::store::JobFilter {
                states: crate::store::LIVE_STATES.to_vec(),
                worker_id: worker_id.to_owned(),
                limit: 1,
                ..Default::default()
            })
            .await?;
        if !holding.is_empty() {
            return Ok(());
        }
        let queue = self.broker.topology.worker_queue(worker_id);
        if !self.broker.delete_if_unused(&queue).await? {
            return Ok(());
        }
        self.store.delete_worker(worker_id).await?;
        self.table().workers.remove(worker_id);
        if let Some(link) = self.links().remove(worker_id) {
            if let Some(watcher) = link.watcher {
                watcher.cancel();
            }
        }
        tracing::info!(%worker_id, "Silent worker forgotten; its queue deleted");
        Ok(())
    }

    /// Every registered worker with its live capacity.
    pub fn list(&self) -> Vec<WorkerView> {
        let table = self.table();
        let links = self.links();
        links
            .iter()
            .map(|(id, link)| {
                let entry = table.workers.get(id);
                WorkerView {
                    worker_id: id.clone(),
                    control_address: link.control_address.clone(),
                    capacity: link.capacity.clone(),
                    registered_at_ms: link.registered_at_ms,
                    last_seen_ms: link.last_seen_ms,
                    assigned_not_started: entry
                        .map_or(0, |e| u32::try_from(e.pending.len()).unwrap_or(u32::MAX)),
                    connected: entry.is_some_and(|e| e.connected),
                }
            })
            .collect()
    }

    /// A connection to `worker_id`'s control plane.
    async fn control(&self, worker_id: &str) -> Result<Control> {
        let address = self
            .links()
            .get(worker_id)
            .map(|w| w.control_address.clone())
            .ok_or_else(|| Error::WorkerNotFound(worker_id.to_owned()))?;
        Control::connect(worker_id, &address, self.tls.as_ref()).await
    }

    /// Asks a worker to drain through its control plane; its capacity as it answered.
    /// It gets no new work from now on.
    pub async fn drain(&self, worker_id: &str) -> Result<Option<Capacity>> {
        let capacity = self.control(worker_id).await?.drain().await?;
        self.with_entry(worker_id, |entry| entry.draining = true);
        Ok(capacity)
    }

    /// Asks `worker_id` to stop running `job_id`.
    pub(crate) async fn cancel_job(
        &self,
        worker_id: &str,
        job_id: &str,
        reason: &str,
    ) -> Result<()> {
        self.control(worker_id)
            .await?
            .cancel_job(job_id, reason)
            .await
    }

    /// Refuses a job no registered worker (connected or not, busy or not) could run.
    pub(crate) fn check_offered(&self, spec: &JobSpec) -> Result<()> {
        let requirement = Requirement::new(&spec.platform_identifier, &spec.platform_variants);
        let table = self.table();
        if table.offers(&requirement) {
            return Ok(());
        }
        Err(Error::NoCapacity {
            requirement: format!(
                "{}[{}]",
                spec.platform_identifier,
                spec.platform_variants.join(",")
            ),
            offers: table.offer_list(),
        })
    }

    /// Whether any registered worker offers `platform` (with any variants): whether
    /// its queue is one the farm has anyway.
    pub fn knows_platform(&self, platform: &str) -> bool {
        self.table()
            .workers
            .values()
            .any(|entry| entry.platforms.contains_key(platform))
    }

    /// Records that `job_id` of `platform` is assigned to `worker_id`, not started.
    pub(crate) fn assign(&self, worker_id: &str, job_id: &str, platform: &str) {
        self.table().assign(worker_id, job_id, platform);
    }

    /// Undoes an assignment that did not happen.
    pub(crate) fn unassign(&self, worker_id: &str, job_id: &str) {
        self.table().unassign(worker_id, job_id);
    }

    /// Records that `worker_id` runs `job_id` of `platform`.
    pub(crate) fn started(&self, worker_id: &str, job_id: &str, platform: &str) {
        self.table().started(worker_id, job_id, platform);
    }

    /// Forgets `job_id` wherever it was placed (it ended, went back or lapsed).
    pub(crate) fn forget(&self, job_id: &str) {
        self.table().forget(job_id);
    }

    /// `job_id` of `platform` came back from `worker_id` (empty when unknown): it is
    /// forgotten, and that worker gets no job of the platform for
    /// [`GIVE_BACK_PAUSE_MS`].
    pub(crate) fn given_back(&self, job_id: &str, worker_id: &str, platform: &str) {
        let until = self.runtime.now_ms() + GIVE_BACK_PAUSE_MS;
        let mut table = self.table();
        table.forget(job_id);
        if !worker_id.is_empty() {
            table.pause(worker_id, platform, until);
        }
    }

    /// Places as many of `requests` as fit now (see [`CapacityTable::plan`]), recording
    /// each placement as an assignment.
    pub(crate) fn plan(&self, requests: &[(String, Requirement)]) -> Vec<(usize, String)> {
        let mut table = self.table();
        table.now_ms = self.runtime.now_ms();
        let placed = table.plan(requests);
        if placed.is_empty() {
            tracing::debug!(waiting = requests.len(), table = ?*table, "Nothing placeable");
        }
        placed
    }
}

#[cfg(test)]
mod tests;
