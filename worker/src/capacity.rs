//! What this worker can take, as every view of it says: one function over the slot pool.
//!
//! The master schedules by the capacity a worker sends with `Register` and streams with
//! `WorkerControl.WatchCapacity`. The farm loop used to count configured slots less its
//! running jobs for `Register` while the control plane counted slot states for the
//! stream, so a broken slot made them disagree and the master's table flipped between
//! the two at every registration. Now both read [`WorkerCapacity::advertised`], derived
//! from the pool (`stateofvm`) and nothing else, and a delivery is accepted only by
//! taking a [`SlotLease`] from that same pool ([`WorkerCapacity::accept`]): the lease is
//! the worker's only token of capacity. Draining is the pool's state too.

use std::sync::Arc;

use pyti::proto;
use tokio::sync::watch;

use crate::config::WorkerConfig;
use crate::stateofvm::{PoolSnapshot, SlotError, SlotLease, SlotPool};

/// A platform as this worker offers it: its identifier and the variants its VMs have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformOffer {
    /// Platform identifier, e.g. `linux-debian`.
    pub platform: String,
    /// Variants the platform's VMs offer (a job may ask for any subset).
    pub variants: Vec<String>,
}

/// Why a job handed to this worker is given back (the master places it elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The worker drains: it finishes what runs and takes nothing new.
    #[error("draining")]
    Draining,
    /// The job already runs here (a redelivery).
    #[error("already running here")]
    AlreadyRunning,
    /// No platform of that name here.
    #[error("no platform {platform}")]
    UnknownPlatform {
        /// The platform asked for.
        platform: String,
    },
    /// The platform lacks a variant the job asks for.
    #[error("platform {platform} lacks variant {variant}")]
    MissingVariant {
        /// The platform.
        platform: String,
        /// The first variant it lacks.
        variant: String,
    },
    /// Every slot of the platform holds a job.
    #[error("all {total} VMs of {platform} are busy")]
    Busy {
        /// The platform.
        platform: String,
        /// Its slots.
        total: usize,
    },
    /// No slot of the platform is ready and some are broken.
    #[error("no ready VM of {platform}: {busy} busy, {broken} broken")]
    NoReadySlot {
        /// The platform.
        platform: String,
        /// Slots holding a job.
        busy: usize,
        /// Broken slots.
        broken: usize,
    },
    /// The executor cannot run the job (its reason).
    #[error("{0}")]
    Executor(String),
}

/// The worker's platforms over its slot pool: what the master sees and what a delivery
/// needs to be accepted. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct WorkerCapacity {
    worker_id: Arc<str>,
    offers: Arc<[PlatformOffer]>,
    pool: SlotPool,
}

impl WorkerCapacity {
    /// The capacity of the worker `config` describes, over `pool` (made from
    /// `config.slot_names()`).
    pub fn new(config: &WorkerConfig, pool: SlotPool) -> Self {
        let offers: Vec<PlatformOffer> = config
            .platforms
            .iter()
            .map(|p| PlatformOffer {
                platform: p.name.clone(),
                variants: p.variants.clone(),
            })
            .collect();
        Self {
            worker_id: Arc::from(config.worker_id.as_str()),
            offers: offers.into(),
            pool,
        }
    }

    /// This worker's id in the farm.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The slot pool everything here is derived from.
    pub fn pool(&self) -> &SlotPool {
        &self.pool
    }

    /// The capacity now, as `Register`, `GetCapacity`, `WatchCapacity` and `Drain` send it.
    pub fn advertised(&self) -> proto::Capacity {
        self.advertised_at(&self.pool.snapshot())
    }

    /// The capacity at `snapshot` (one the pool published).
    pub fn advertised_at(&self, snapshot: &PoolSnapshot) -> proto::Capacity {
        advertised(&self.worker_id, &self.offers, snapshot)
    }

    /// A snapshot after every change of the pool, draining included (the current first).
    pub fn changes(&self) -> watch::Receiver<PoolSnapshot> {
        self.pool.watch()
    }

    /// Stops taking work: no lease is handed out any more and nothing is advertised
    /// ready. Returns the jobs still holding a slot.
    pub fn drain(&self) -> u32 {
        self.pool.drain();
        let busy: usize = self
            .pool
            .capacity()
            .iter()
            .map(|c| c.preparing + c.running + c.collecting)
            .sum();
        u32::try_from(busy).unwrap_or(u32::MAX)
    }

    /// True once [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.pool.is_draining()
    }

    /// Takes a slot for `job_id` if this worker offers `spec`'s platform with its
    /// variants and a slot of it is ready; the lease is the job's right to run.
    pub fn accept(&self, job_id: &str, spec: &proto::JobSpec) -> Result<SlotLease, Refusal> {
        if self.is_draining() {
            return Err(Refusal::Draining);
        }
        admit(&self.offers, spec)?;
        let platform = spec.platform_identifier.as_str();
        match self.pool.acquire(platform, job_id) {
            Ok(lease) => Ok(lease),
            Err(SlotError::Draining) => Err(Refusal::Draining),
            Err(_) => {
                let counts = self
                    .pool
                    .capacity()
                    .into_iter()
                    .find(|c| c.platform == platform)
                    .unwrap_or_default();
                Err(if counts.broken == 0 {
                    Refusal::Busy {
                        platform: platform.to_owned(),
                        total: counts.total,
                    }
                } else {
                    Refusal::NoReadySlot {
                        platform: platform.to_owned(),
                        busy: counts.busy(),
                        broken: counts.broken,
                    }
                })
            }
        }
    }
}

/// Whether `offers` include `spec`'s platform with every variant it asks for.
pub fn admit(offers: &[PlatformOffer], spec: &proto::JobSpec) -> Result<(), Refusal> {
    let Some(offer) = offers
        .iter()
        .find(|o| o.platform == spec.platform_identifier)
    else {
        return Err(Refusal::UnknownPlatform {
            platform: spec.platform_identifier.clone(),
        });
    };
    match spec
        .platform_variants
        .iter()
        .find(|v| !offer.variants.contains(v))
    {
        Some(missing) => Err(Refusal::MissingVariant {
            platform: offer.platform.clone(),
            variant: missing.clone(),
        }),
        None => Ok(()),
    }
}

/// The `Capacity` message of worker `worker_id` offering `offers` at `snapshot`: a
/// count per slot state for every offered platform (slots of other platforms are not
/// advertised), nothing ready while draining.
pub fn advertised(
    worker_id: &str,
    offers: &[PlatformOffer],
    snapshot: &PoolSnapshot,
) -> proto::Capacity {
    let counted = snapshot.capacity();
    let platforms = offers
        .iter()
        .map(|offer| {
            let counts = counted
                .iter()
                .find(|c| c.platform == offer.platform)
                .cloned()
                .unwrap_or_default();
            let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            proto::PlatformCapacity {
                platform: offer.platform.clone(),
                variants: offer.variants.clone(),
                total: count(counts.total),
                ready: count(counts.ready),
                preparing: count(counts.preparing),
                running: count(counts.running),
                collecting: count(counts.collecting),
                rolling_back: count(counts.rolling_back),
                broken: count(counts.broken),
            }
        })
        .collect();
    proto::Capacity {
        worker_id: worker_id.to_owned(),
        platforms,
        draining: snapshot.draining,
        at: Some(pyti::grpc::now_timestamp()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity() -> WorkerCapacity {
        let text = "[config]\nworker_id = w1\ntotal_vms = 3\n[platform linux]\nvms = 2\nvariants = py3.11\n[platform other]\nvms = 1\n";
        let file = pyti::config::IniFile::parse(text, std::path::Path::new("c")).unwrap();
        let config = WorkerConfig::from_ini(&file, &|_| None).unwrap();
        let pool = SlotPool::new(config.slot_names()).unwrap();
        WorkerCapacity::new(&config, pool)
    }

    fn spec(platform: &str, variants: &[&str]) -> proto::JobSpec {
        proto::JobSpec {
            platform_identifier: platform.to_owned(),
            platform_variants: variants.iter().map(|v| (*v).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn linux(capacity: &proto::Capacity) -> &proto::PlatformCapacity {
        &capacity.platforms[0]
    }

    #[test]
    fn a_lease_is_taken_at_accept_and_capacity_follows_it() {
        let capacity = capacity();
        let refusal = || {
            capacity
                .accept("late", &spec("linux", &[]))
                .unwrap_err()
                .to_string()
        };
        let first = capacity.accept("a", &spec("linux", &[])).unwrap();
        assert_eq!(first.platform(), "linux");
        let second = capacity.accept("b", &spec("linux", &["py3.11"])).unwrap();
        let now = capacity.advertised();
        assert_eq!((linux(&now).ready, linux(&now).preparing), (0, 2));
        assert_eq!(refusal(), "all 2 VMs of linux are busy");
        first.release_unused().unwrap();
        assert_eq!(linux(&capacity.advertised()).ready, 1);
        let third = capacity.accept("c", &spec("linux", &[])).unwrap();
        second.mark_broken("test");
        let now = capacity.advertised();
        assert_eq!(
            (linux(&now).ready, linux(&now).preparing, linux(&now).broken),
            (0, 1, 1)
        );
        assert_eq!(refusal(), "no ready VM of linux: 1 busy, 1 broken");
        third.release_unused().unwrap();
    }

    #[test]
    fn jobs_this_worker_cannot_run_are_refused_with_the_reason() {
        let capacity = capacity();
        let refusal = |platform: &str, variants: &[&str]| {
            capacity
                .accept("a", &spec(platform, variants))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(refusal("bsd", &[]), "no platform bsd");
        assert_eq!(
            refusal("linux", &["py3.12"]),
            "platform linux lacks variant py3.12"
        );
        assert_eq!(capacity.drain(), 0);
        assert_eq!(refusal("linux", &[]), "draining");
        assert!(capacity.advertised().draining);
        assert!(capacity
            .advertised()
            .platforms
            .iter()
            .all(|p| p.ready == 0 && p.total > 0));
    }

    #[test]
    fn every_view_reads_the_same_pool() {
        let capacity = capacity();
        let mut changes = capacity.changes();
        let broken = capacity.pool().slots()[0].name.clone();
        capacity.pool().mark_broken(&broken, "disk gone").unwrap();
        let streamed = capacity.advertised_at(&changes.borrow_and_update());
        let asked = capacity.advertised();
        assert_eq!(streamed.platforms, asked.platforms);
        assert_eq!(
            (
                linux(&asked).total,
                linux(&asked).ready,
                linux(&asked).broken
            ),
            (2, 1, 1)
        );
        assert_eq!(asked.worker_id, "w1");
        assert_eq!(asked.platforms[0].variants, ["py3.11"]);
        assert_eq!(asked.platforms[1].platform, "other");
        let held = capacity.accept("a", &spec("linux", &[])).unwrap();
        assert_eq!(capacity.drain(), 1, "the held lease is still running");
        let streamed = capacity.advertised_at(&changes.borrow_and_update());
        assert!(streamed.draining);
        assert_eq!(streamed.platforms, capacity.advertised().platforms);
        held.release_unused().unwrap();
    }
}
