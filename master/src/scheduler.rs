//! Which worker gets which job: pure decisions over the capacity table.
//!
//! Workers report their VM slots (`WatchCapacity`), but a report lags behind what the
//! master itself has done: a job the master assigned a moment ago is not yet running
//! on the worker, and a job that just started may still show up as a ready slot in
//! the last report. Counting only the reports would hand a worker more jobs than it
//! has VMs, so the table also keeps, per worker, the jobs the master assigned that the
//! worker has not started (`pending`) and the jobs it knows run there (`running`), and
//! the free slots of a platform are
//! `min(ready reported, total - broken - running) - pending`.
//! Nothing here does I/O: the dispatcher applies the decisions.

use std::collections::{BTreeMap, BTreeSet};

/// One platform's slots on one worker, as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlatformSlots {
    /// Variants the platform's VMs offer.
    pub variants: BTreeSet<String>,
    /// Configured slots.
    pub total: u32,
    /// Slots the worker reported ready.
    pub ready: u32,
    /// Slots the worker reported running.
    pub running: u32,
    /// Slots the worker reported broken.
    pub broken: u32,
}

/// What the master knows about one worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerEntry {
    /// Slots per platform, from the last capacity report.
    pub platforms: BTreeMap<String, PlatformSlots>,
    /// The capacity stream is open; a disconnected worker gets no work.
    pub connected: bool,
    /// The worker is draining and takes no work.
    pub draining: bool,
    /// Jobs assigned to the worker and not started yet: job id → platform.
    pub pending: BTreeMap<String, String>,
    /// Jobs the master recorded as running on the worker: job id → platform.
    pub running: BTreeMap<String, String>,
    /// Logical time of the last assignment (0 = never), for least-recently-used.
    pub last_assigned: u64,
    /// Platforms this worker gave a job back for, and until when (ms since the epoch)
    /// it gets no job of them: without the pause, a worker that keeps refusing (its
    /// VMs broke) while still being the best fit would get the same job forever.
    pub paused_until_ms: BTreeMap<String, i64>,
}

impl WorkerEntry {
    /// Slots of `platform` that may take a new job now.
    pub fn free_slots(&self, platform: &str) -> u32 {
        let Some(slots) = self.platforms.get(platform) else {
            return 0;
        };
        if !self.connected || self.draining {
            return 0;
        }
        let count = |jobs: &BTreeMap<String, String>| {
            u32::try_from(jobs.values().filter(|p| *p == platform).count()).unwrap_or(u32::MAX)
        };
        let unoccupied = slots
            .total
            .saturating_sub(slots.broken)
            .saturating_sub(count(&self.running));
        slots
            .ready
            .min(unoccupied)
            .saturating_sub(count(&self.pending))
    }
}

/// What a job needs from a VM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    /// Platform identifier.
    pub platform: String,
    /// Variants the VM must offer (all of them).
    pub variants: BTreeSet<String>,
}

impl Requirement {
    /// A requirement from a platform and a list of variants.
    pub fn new(platform: &str, variants: &[String]) -> Self {
        Self {
            platform: platform.to_owned(),
            variants: variants.iter().cloned().collect(),
        }
    }
}

/// The live table: every registered worker by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapacityTable {
    /// Workers by id.
    pub workers: BTreeMap<String, WorkerEntry>,
    /// Logical clock for `last_assigned`.
    pub clock: u64,
    /// The time decisions are made at (ms since the epoch), for pauses; set by the
    /// caller before deciding.
    pub now_ms: i64,
}

impl CapacityTable {
    /// The worker that should take a job needing `requirement`, if any has a free slot:
    /// the one whose variants exceed the request least, then the least recently used,
    /// then the smallest id (so the choice is deterministic).
    pub fn choose(&self, requirement: &Requirement) -> Option<&str> {
        self.workers
            .iter()
            .filter_map(|(id, entry)| {
                let slots = entry.platforms.get(&requirement.platform)?;
                let paused = entry
                    .paused_until_ms
                    .get(&requirement.platform)
                    .is_some_and(|until| *until > self.now_ms);
                if paused
                    || !requirement.variants.is_subset(&slots.variants)
                    || entry.free_slots(&requirement.platform) == 0
                {
                    return None;
                }
                let excess = slots.variants.len() - requirement.variants.len();
                Some(((excess, entry.last_assigned, id.as_str()), id.as_str()))
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, id)| id)
    }

    /// Records that `job_id` was assigned to `worker_id` (not started yet).
    pub fn assign(&mut self, worker_id: &str, job_id: &str, platform: &str) {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.workers.entry(worker_id.to_owned()).or_default();
        entry.pending.insert(job_id.to_owned(), platform.to_owned());
        entry.last_assigned = clock;
    }

    /// Records that `worker_id` started `job_id`; forgets any other assignment of it.
    pub fn started(&mut self, worker_id: &str, job_id: &str, platform: &str) {
        self.forget(job_id);
        self.workers
            .entry(worker_id.to_owned())
            .or_default()
            .running
            .insert(job_id.to_owned(), platform.to_owned());
    }

    /// `worker_id` gave a job of `platform` back: it gets none of them until `until_ms`.
    pub fn pause(&mut self, worker_id: &str, platform: &str, until_ms: i64) {
        if let Some(entry) = self.workers.get_mut(worker_id) {
            entry.paused_until_ms.insert(platform.to_owned(), until_ms);
        }
    }

    /// Undoes an assignment that did not happen (publishing failed, the job moved on).
    pub fn unassign(&mut self, worker_id: &str, job_id: &str) {
        if let Some(entry) = self.workers.get_mut(worker_id) {
            entry.pending.remove(job_id);
        }
    }

    /// Forgets `job_id` wherever it was pending or running (finished, returned, lapsed).
    pub fn forget(&mut self, job_id: &str) {
        for entry in self.workers.values_mut() {
            entry.pending.remove(job_id);
            entry.running.remove(job_id);
        }
    }

    /// Whether any registered worker (connected or not, busy or not) offers a VM
    /// meeting `requirement`: the test at submit time.
    pub fn offers(&self, requirement: &Requirement) -> bool {
        self.workers.values().any(|entry| {
            entry
                .platforms
                .get(&requirement.platform)
                .is_some_and(|slots| requirement.variants.is_subset(&slots.variants))
        })
    }

    /// What the farm offers, as `platform[variant,variant]` strings, sorted and unique,
    /// for the error a job nobody can run gets.
    pub fn offer_list(&self) -> Vec<String> {
        let offers: BTreeSet<String> = self
            .workers
            .values()
            .flat_map(|entry| entry.platforms.iter())
            .map(|(platform, slots)| {
                let variants: Vec<&str> = slots.variants.iter().map(String::as_str).collect();
                format!("{platform}[{}]", variants.join(","))
            })
            .collect();
        offers.into_iter().collect()
    }

    /// Places as many of `requests` as fit, in order, and returns `(index, worker)` for
    /// each placed one. A request that fits nowhere is skipped, so a job waiting for a
    /// rare variant does not hold up the ones behind it. The table is updated as if
    /// every placement succeeded.
    pub fn plan(&mut self, requests: &[(String, Requirement)]) -> Vec<(usize, String)> {
        let mut placed = Vec::new();
        for (index, (job_id, requirement)) in requests.iter().enumerate() {
            if let Some(worker) = self.choose(requirement).map(str::to_owned) {
                self.assign(&worker, job_id, &requirement.platform);
                placed.push((index, worker));
            }
        }
        placed
    }
}

#[cfg(test)]
mod tests;
