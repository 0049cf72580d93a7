//! The VM slot pool: the seed's `pyti.slave.stateofvm`.
//!
//! The master schedules on the capacity a worker advertises. When capacity was a counter
//! kept beside the slots, the two drifted (a crashed run decremented twice, a broken VM
//! still counted as free), so here capacity is never stored: it is derived from the slot
//! states on every read, and every change of a slot publishes a fresh snapshot on a
//! `watch` channel (what `WorkerControl.WatchCapacity` streams and `Register` sends). A
//! slot in use is held through a `SlotLease`, the worker's only token of capacity: a job
//! runs only while it holds one. A lease dropped mid-run marks its slot broken, because
//! a run that vanished may have left a VM behind, and a broken slot is reported, never
//! reused silently. Draining is the pool's state too (it hands out no more leases and
//! advertises nothing ready), so no view of the worker can disagree about it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::watch;
use tracing::{info, warn};

/// Where a slot is in the life of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotState {
    /// Clean and free: counts as capacity.
    Ready,
    /// Leased to a job: IO disk and overlay being prepared.
    Preparing,
    /// The VM is running the job.
    Running,
    /// The VM is off; results are being read from the IO disk.
    Collecting,
    /// The overlay is being discarded and recreated.
    RollingBack,
    /// Unusable until repaired; carries an error.
    Broken,
}

impl SlotState {
    /// The stable name (`ready`, `rolling-back`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Preparing => "preparing",
            Self::Running => "running",
            Self::Collecting => "collecting",
            Self::RollingBack => "rolling-back",
            Self::Broken => "broken",
        }
    }

    /// Whether a slot may go from `self` to `next`.
    ///
    /// The run cycle is ready → preparing → running → collecting → rolling-back → ready;
    /// preparing and running may skip to rolling-back (nothing to run, or nothing to
    /// collect); anything but broken may become broken; broken leaves only through
    /// rolling-back (a repair).
    pub fn can_become(self, next: Self) -> bool {
        use SlotState::*;
        matches!(
            (self, next),
            (Ready, Preparing)
                | (Preparing, Running)
                | (Preparing, RollingBack)
                | (Running, Collecting)
                | (Running, RollingBack)
                | (Collecting, RollingBack)
                | (RollingBack, Ready)
                | (Broken, RollingBack)
        ) || (next == Broken && self != Broken)
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slot as reported (`ListVms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot (and VM domain) name.
    pub name: String,
    /// Platform the slot runs, e.g. `linux-debian`.
    pub platform: String,
    /// Current state.
    pub state: SlotState,
    /// The job holding the slot, if any.
    pub job_id: Option<String>,
    /// When the slot entered its state.
    pub since: SystemTime,
    /// Why the slot is broken (kept until it is repaired).
    pub error: Option<String>,
}

/// Capacity of one platform, derived from its slots: a count per state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformCapacity {
    /// Platform name.
    pub platform: String,
    /// All slots of the platform.
    pub total: usize,
    /// Ready slots: what the master may assign. None while the pool drains (the ready
    /// slots then count in `total` only).
    pub ready: usize,
    /// Slots leased, their IO disk and overlay being prepared.
    pub preparing: usize,
    /// Slots whose VM runs a job.
    pub running: usize,
    /// Slots whose results are being read.
    pub collecting: usize,
    /// Slots being rolled back.
    pub rolling_back: usize,
    /// Broken slots.
    pub broken: usize,
}

impl PlatformCapacity {
    /// Slots held by a job: preparing, running, collecting or rolling back.
    pub fn busy(&self) -> usize {
        self.preparing + self.running + self.collecting + self.rolling_back
    }
}

/// Per-platform capacity of `slots`, sorted by platform; nothing is ready when
/// `draining`. The one derivation every view of the worker's capacity uses.
pub fn capacity(slots: &[SlotInfo], draining: bool) -> Vec<PlatformCapacity> {
    let mut by_platform: BTreeMap<&str, PlatformCapacity> = BTreeMap::new();
    for slot in slots {
        let entry = by_platform
            .entry(&slot.platform)
            .or_insert_with(|| PlatformCapacity {
                platform: slot.platform.clone(),
                ..PlatformCapacity::default()
            });
        entry.total += 1;
        let counter = match slot.state {
            SlotState::Ready if draining => continue,
            SlotState::Ready => &mut entry.ready,
            SlotState::Preparing => &mut entry.preparing,
            SlotState::Running => &mut entry.running,
            SlotState::Collecting => &mut entry.collecting,
            SlotState::RollingBack => &mut entry.rolling_back,
            SlotState::Broken => &mut entry.broken,
        };
        *counter += 1;
    }
    by_platform.into_values().collect()
}

/// The whole pool at one moment, as published on the watch channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Increases by one with every change.
    pub version: u64,
    /// Every slot, in the order the pool was made.
    pub slots: Vec<SlotInfo>,
    /// The pool hands out no more leases (`Drain`).
    pub draining: bool,
}

impl PoolSnapshot {
    /// Capacity per platform, derived from the slots.
    pub fn capacity(&self) -> Vec<PlatformCapacity> {
        capacity(&self.slots, self.draining)
    }

    /// Ready slots of `platform` (none while draining).
    pub fn ready(&self, platform: &str) -> usize {
        if self.draining {
            return 0;
        }
        self.slots
            .iter()
            .filter(|s| s.platform == platform && s.state == SlotState::Ready)
            .count()
    }
}

/// What can go wrong with the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// No slot of the platform is ready.
    #[error("no ready VM slot for platform {platform:?}")]
    NoReadySlot {
        /// The platform asked for.
        platform: String,
    },
    /// The pool has no slot of that platform at all.
    #[error("this worker has no VM slots for platform {platform:?}")]
    UnknownPlatform {
        /// The platform asked for.
        platform: String,
    },
    /// The pool is draining: no new lease is handed out.
    #[error("the worker is draining: it takes no new job")]
    Draining,
    /// No slot has that name.
    #[error("no VM slot named {name:?}")]
    UnknownSlot {
        /// The name asked for.
        name: String,
    },
    /// Two slots were given the same name.
    #[error("VM slot name {name:?} is used twice")]
    DuplicateSlot {
        /// The repeated name.
        name: String,
    },
    /// The state machine forbids the change.
    #[error("VM slot {name:?} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The slot.
        name: String,
        /// Its current state.
        from: SlotState,
        /// The state asked for.
        to: SlotState,
    },
}

/// The pool's state behind its lock; every change publishes it whole.
struct PoolState {
    version: u64,
    slots: Vec<SlotInfo>,
    draining: bool,
}

impl PoolState {
    fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            version: self.version,
            slots: self.slots.clone(),
            draining: self.draining,
        }
    }
}

struct PoolInner {
    state: Mutex<PoolState>,
    sender: watch::Sender<PoolSnapshot>,
}

/// The slots of one worker, all platforms together. Cheap to clone (shared).
#[derive(Clone)]
pub struct SlotPool {
    inner: Arc<PoolInner>,
}

impl fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotPool")
            .field("slots", &self.slots())
            .finish()
    }
}

impl SlotPool {
    /// A pool of `(name, platform)` slots, all ready.
    pub fn new<N, P>(slots: impl IntoIterator<Item = (N, P)>) -> Result<Self, SlotError>
    where
        N: Into<String>,
        P: Into<String>,
    {
        let now = SystemTime::now();
        let mut list: Vec<SlotInfo> = Vec::new();
        for (name, platform) in slots {
            let name = name.into();
            if list.iter().any(|s| s.name == name) {
                return Err(SlotError::DuplicateSlot { name });
            }
            list.push(SlotInfo {
                name,
                platform: platform.into(),
                state: SlotState::Ready,
                job_id: None,
                since: now,
                error: None,
            });
        }
        let state = PoolState {
            version: 0,
            slots: list,
            draining: false,
        };
        let (sender, _) = watch::channel(state.snapshot());
        Ok(Self {
            inner: Arc::new(PoolInner {
                state: Mutex::new(state),
                sender,
            }),
        })
    }

    /// Slot names for `count` slots of `platform`: `<prefix><platform>-<n>`.
    pub fn slot_names(prefix: &str, platform: &str, count: usize) -> Vec<(String, String)> {
        (0..count)
            .map(|n| (format!("{prefix}{platform}-{n}"), platform.to_owned()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock cannot leave a half-made change: every change
        // is a single assignment, so the data is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Receives a snapshot after every change (the current one first).
    pub fn watch(&self) -> watch::Receiver<PoolSnapshot> {
        self.inner.sender.subscribe()
    }

    /// The pool now.
    pub fn snapshot(&self) -> PoolSnapshot {
        self.lock().snapshot()
    }

    /// Every slot now (`ListVms`).
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.lock().slots.clone()
    }

    /// Capacity per platform now (`GetCapacity`).
    pub fn capacity(&self) -> Vec<PlatformCapacity> {
        let guard = self.lock();
        capacity(&guard.slots, guard.draining)
    }

    /// Stops handing out leases (running ones finish); capacity shows nothing ready
    /// from now on. There is no way back: a drained worker is restarted.
    pub fn drain(&self) {
        let mut guard = self.lock();
        if !guard.draining {
            guard.draining = true;
            info!("Slot pool draining: no new leases");
            self.publish(&mut guard);
        }
    }

    /// True once [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Takes the first ready slot of `platform` for `job_id` (it becomes preparing).
    /// Refused while draining.
    pub fn acquire(&self, platform: &str, job_id: &str) -> Result<SlotLease, SlotError> {
        self.take(platform, job_id, false)
    }

    /// Takes a ready slot for a job this worker accepted before and whose slot went
    /// back to the pool while it downloaded: allowed while draining, since a drain lets
    /// accepted jobs finish.
    pub fn reacquire(&self, platform: &str, job_id: &str) -> Result<SlotLease, SlotError> {
        self.take(platform, job_id, true)
    }

    fn take(&self, platform: &str, job_id: &str, accepted: bool) -> Result<SlotLease, SlotError> {
        let mut guard = self.lock();
        if guard.draining && !accepted {
            return Err(SlotError::Draining);
        }
        let slots = &mut guard.slots;
        if !slots.iter().any(|s| s.platform == platform) {
            return Err(SlotError::UnknownPlatform {
                platform: platform.to_owned(),
            });
        }
        let Some(slot) = slots
            .iter_mut()
            .find(|s| s.platform == platform && s.state == SlotState::Ready)
        else {
            return Err(SlotError::NoReadySlot {
                platform: platform.to_owned(),
            });
        };
        slot.state = SlotState::Preparing;
        slot.job_id = Some(job_id.to_owned());
        slot.since = SystemTime::now();
        let lease = SlotLease {
            pool: self.clone(),
            name: slot.name.clone(),
            platform: slot.platform.clone(),
            finished: false,
        };
        info!(slot = %lease.name, job_id, "Slot acquired");
        self.publish(&mut guard);
        Ok(lease)
    }

    /// Starts repairing a broken slot: it goes to rolling-back and the returned lease
    /// finishes the repair with `release` (or breaks it again).
    pub fn repair(&self, name: &str) -> Result<SlotLease, SlotError> {
        let platform = self.move_slot(name, SlotState::RollingBack, None)?;
        Ok(SlotLease {
            pool: self.clone(),
            name: name.to_owned(),
            platform,
            finished: false,
        })
    }

    /// Marks a slot broken with `reason` (e.g. its base image is missing at startup).
    pub fn mark_broken(&self, name: &str, reason: &str) -> Result<(), SlotError> {
        self.move_slot(name, SlotState::Broken, Some(reason))
            .map(|_| ())
    }

    /// Moves slot `name` to `to`, enforcing the state machine; returns its platform.
    fn move_slot(
        &self,
        name: &str,
        to: SlotState,
        reason: Option<&str>,
    ) -> Result<String, SlotError> {
        let mut guard = self.lock();
        let slot = guard
            .slots
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| SlotError::UnknownSlot {
                name: name.to_owned(),
            })?;
        if !slot.state.can_become(to) {
            return Err(SlotError::InvalidTransition {
                name: name.to_owned(),
                from: slot.state,
                to,
            });
        }
        let from = slot.state;
        slot.state = to;
        slot.since = SystemTime::now();
        match to {
            SlotState::Ready => {
                slot.job_id = None;
                slot.error = None;
            }
            SlotState::Broken => {
                slot.error = reason.map(str::to_owned);
                warn!(slot = name, from = %from, reason, "Slot broken");
            }
            _ => {}
        }
        let platform = slot.platform.clone();
        self.publish(&mut guard);
        Ok(platform)
    }

    fn publish(&self, guard: &mut MutexGuard<'_, PoolState>) {
        guard.version += 1;
        self.inner.sender.send_replace(guard.snapshot());
    }

    fn state_of(&self, name: &str) -> Option<SlotState> {
        self.lock()
            .slots
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.state)
    }
}

/// Exclusive use of one slot for one run. Drive it through the states; finish with
/// `release` (after rolling back) or `mark_broken`. Dropping it unfinished breaks the slot.
#[derive(Debug)]
pub struct SlotLease {
    pool: SlotPool,
    name: String,
    platform: String,
    finished: bool,
}

impl SlotLease {
    /// The slot (and VM domain) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slot's platform.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// The slot's state now.
    pub fn state(&self) -> SlotState {
        self.pool.state_of(&self.name).unwrap_or(SlotState::Broken)
    }

    /// preparing → running: the VM has been started.
    pub fn running(&self) -> Result<(), SlotError> {
        self.pool
            .move_slot(&self.name, SlotState::Running, None)
            .map(|_| ())
    }

    /// running → collecting: the VM is off, results are being read.
    pub fn collecting(&self) -> Result<(), SlotError> {
        self.pool
            .move_slot(&self.name, SlotState::Collecting, None)
            .map(|_| ())
    }

    /// → rolling-back: the overlay is being discarded.
    pub fn rolling_back(&self) -> Result<(), SlotError> {
        self.pool
            .move_slot(&self.name, SlotState::RollingBack, None)
            .map(|_| ())
    }

    /// preparing → rolling-back → ready, for a lease whose job never started (given
    /// back to the master, or the master said not to run it): nothing was made, so
    /// nothing needs removing.
    /// A lease past preparing is refused (and, consumed, breaks its slot): its VM may
    /// have left something behind.
    pub fn release_unused(self) -> Result<(), SlotError> {
        let state = self.state();
        if state != SlotState::Preparing {
            return Err(SlotError::InvalidTransition {
                name: self.name.clone(),
                from: state,
                to: SlotState::Ready,
            });
        }
        self.rolling_back()?;
        self.release()
    }

    /// rolling-back → ready: the slot is clean again and returns to the pool.
    pub fn release(mut self) -> Result<(), SlotError> {
        let result = self.pool.move_slot(&self.name, SlotState::Ready, None);
        if result.is_ok() {
            self.finished = true;
        }
        result.map(|_| ())
    }

    /// Takes the slot out of service with `reason` (reported until repaired).
    pub fn mark_broken(mut self, reason: &str) {
        self.finished = true;
        if let Err(error) = self.pool.mark_broken(&self.name, reason) {
            warn!(slot = %self.name, %error, "Slot could not be marked broken");
        }
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let state = self.state();
        if state != SlotState::Broken {
            let reason = format!("run abandoned while {state} (lease dropped)");
            if let Err(error) = self.pool.mark_broken(&self.name, &reason) {
                warn!(slot = %self.name, %error, "An abandoned slot could not be marked broken");
            }
        }
    }
}

#[cfg(test)]
mod tests;
