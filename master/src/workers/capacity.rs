//! What workers tell the master about themselves, as plain types: the gRPC layer
//! (`convert`) makes them from protocol messages and back.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::scheduler::PlatformSlots;
use crate::store::Millis;

/// One platform's VM slots on a worker, as the worker counted them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformCapacity {
    /// Platform identifier.
    pub platform: String,
    /// Variants its VMs offer.
    pub variants: Vec<String>,
    /// Configured slots.
    pub total: u32,
    /// Slots ready for a job.
    pub ready: u32,
    /// Slots being prepared.
    pub preparing: u32,
    /// Slots running a job.
    pub running: u32,
    /// Slots whose results are being read.
    pub collecting: u32,
    /// Slots being rolled back.
    pub rolling_back: u32,
    /// Slots that broke.
    pub broken: u32,
}

/// A worker's capacity report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// The worker that reported it.
    pub worker_id: String,
    /// Its slots by platform.
    pub platforms: Vec<PlatformCapacity>,
    /// The worker is draining and takes no new work.
    pub draining: bool,
    /// When the worker counted (ms since the epoch), if it said.
    pub at_ms: Option<Millis>,
}

impl Capacity {
    /// The slots the scheduler decides over, per platform.
    pub fn slots(&self) -> BTreeMap<String, PlatformSlots> {
        self.platforms
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
            .collect()
    }
}

/// A worker announcing itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// Its id.
    pub worker_id: String,
    /// Where its WorkerControl service listens.
    pub control_address: String,
    /// Its capacity now.
    pub capacity: Capacity,
}

/// What a registered worker is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The queue it consumes.
    pub queue_name: String,
    /// How often it renews a lease.
    pub renew_every: Duration,
}

/// A registered worker as `ListWorkers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    /// Its id.
    pub worker_id: String,
    /// Its WorkerControl address.
    pub control_address: String,
    /// Its last capacity report.
    pub capacity: Capacity,
    /// First registration.
    pub registered_at_ms: Millis,
    /// Last registration or capacity report.
    pub last_seen_ms: Millis,
    /// Jobs assigned to it and not started yet.
    pub assigned_not_started: u32,
    /// Its capacity stream is open.
    pub connected: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_what_the_scheduler_counts() {
        let capacity = Capacity {
            platforms: vec![PlatformCapacity {
                platform: "linux-debian".into(),
                variants: vec!["b".into(), "a".into()],
                total: 4,
                ready: 1,
                preparing: 1,
                running: 1,
                broken: 1,
                ..Default::default()
            }],
            ..Default::default()
        };
        let slots = &capacity.slots()["linux-debian"];
        assert_eq!(
            slots.variants.iter().collect::<Vec<_>>(),
            vec!["a", "b"],
            "variants sorted and unique"
        );
        assert_eq!(
            (slots.total, slots.ready, slots.running, slots.broken),
            (4, 1, 1, 1)
        );
    }
}
