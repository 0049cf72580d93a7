use super::*;
use SlotState::*;

const ALL: [SlotState; 6] = [Ready, Preparing, Running, Collecting, RollingBack, Broken];

#[test]
fn transition_table_is_exactly_the_documented_one() {
    let allowed = [
        (Ready, Preparing),
        (Preparing, Running),
        (Preparing, RollingBack),
        (Running, Collecting),
        (Running, RollingBack),
        (Collecting, RollingBack),
        (RollingBack, Ready),
        (Broken, RollingBack),
        (Ready, Broken),
        (Preparing, Broken),
        (Running, Broken),
        (Collecting, Broken),
        (RollingBack, Broken),
    ];
    for from in ALL {
        for to in ALL {
            assert_eq!(
                from.can_become(to),
                allowed.contains(&(from, to)),
                "{from} -> {to}"
            );
        }
    }
}

#[test]
fn state_names_are_stable() {
    let names: Vec<&str> = ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "ready",
            "preparing",
            "running",
            "collecting",
            "rolling-back",
            "broken"
        ]
    );
}

fn pool() -> SlotPool {
    let mut names = SlotPool::slot_names("pyti-w1-", "linux-debian", 2);
    names.extend(SlotPool::slot_names("pyti-w1-", "linux-alpine", 1));
    SlotPool::new(names).unwrap()
}

fn cap(pool: &SlotPool, platform: &str) -> PlatformCapacity {
    pool.capacity()
        .into_iter()
        .find(|c| c.platform == platform)
        .unwrap()
}

#[test]
fn full_cycle_returns_the_slot_and_capacity_follows() {
    let pool = pool();
    assert_eq!(cap(&pool, "linux-debian").ready, 2);
    let lease = pool.acquire("linux-debian", "job-1").unwrap();
    assert_eq!(lease.name(), "pyti-w1-linux-debian-0");
    assert_eq!(lease.state(), Preparing);
    let c = cap(&pool, "linux-debian");
    assert_eq!((c.total, c.ready, c.busy(), c.broken), (2, 1, 1, 0));
    let slot = pool.slots().into_iter().next().unwrap();
    assert_eq!(slot.job_id.as_deref(), Some("job-1"));
    lease.running().unwrap();
    lease.collecting().unwrap();
    lease.rolling_back().unwrap();
    assert_eq!(cap(&pool, "linux-debian").ready, 1);
    lease.release().unwrap();
    let c = cap(&pool, "linux-debian");
    assert_eq!((c.total, c.ready, c.busy(), c.broken), (2, 2, 0, 0));
    assert!(pool.slots().iter().all(|s| s.job_id.is_none()));
}

#[test]
fn acquire_refuses_when_nothing_is_ready_or_platform_unknown() {
    let pool = pool();
    let _a = pool.acquire("linux-alpine", "job-1").unwrap();
    assert_eq!(
        pool.acquire("linux-alpine", "job-2").unwrap_err(),
        SlotError::NoReadySlot {
            platform: "linux-alpine".into()
        }
    );
    assert_eq!(
        pool.acquire("windows", "job-3").unwrap_err(),
        SlotError::UnknownPlatform {
            platform: "windows".into()
        }
    );
}

#[test]
fn invalid_transitions_are_refused_and_change_nothing() {
    let pool = pool();
    let lease = pool.acquire("linux-debian", "job-1").unwrap();
    let before = pool.snapshot();
    let err = lease.collecting().unwrap_err();
    assert!(matches!(
        err,
        SlotError::InvalidTransition {
            from: Preparing,
            to: Collecting,
            ..
        }
    ));
    assert_eq!(pool.snapshot(), before);
    lease.rolling_back().unwrap();
    lease.release().unwrap();
}

#[test]
fn release_before_rollback_is_refused_and_the_lease_stays_responsible() {
    let pool = pool();
    let lease = pool.acquire("linux-debian", "job-1").unwrap();
    lease.running().unwrap();
    let name = lease.name().to_owned();
    assert!(lease.release().is_err());
    // The failed release consumed the lease unfinished: the slot is broken, not reused.
    let slot = pool.slots().into_iter().find(|s| s.name == name).unwrap();
    assert_eq!(slot.state, Broken);
}

#[test]
fn broken_slots_are_reported_and_not_acquired_until_repaired() {
    let pool = pool();
    let lease = pool.acquire("linux-alpine", "job-1").unwrap();
    lease.mark_broken("VM failed to start: no such file");
    let c = cap(&pool, "linux-alpine");
    assert_eq!((c.total, c.ready, c.busy(), c.broken), (1, 0, 0, 1));
    let slot = pool
        .slots()
        .into_iter()
        .find(|s| s.platform == "linux-alpine")
        .unwrap();
    assert_eq!(slot.state, Broken);
    assert_eq!(
        slot.error.as_deref(),
        Some("VM failed to start: no such file")
    );
    assert!(pool.acquire("linux-alpine", "job-2").is_err());
    let repair = pool.repair(&slot.name).unwrap();
    assert_eq!(repair.state(), RollingBack);
    repair.release().unwrap();
    let slot = pool
        .slots()
        .into_iter()
        .find(|s| s.name == slot.name)
        .unwrap();
    assert_eq!(slot.state, Ready);
    assert_eq!(slot.error, None);
    assert!(pool.acquire("linux-alpine", "job-2").is_ok());
}

#[test]
fn dropping_a_lease_mid_run_breaks_the_slot() {
    let pool = pool();
    {
        let lease = pool.acquire("linux-debian", "job-1").unwrap();
        lease.running().unwrap();
    }
    let slot = &pool.slots()[0];
    assert_eq!(slot.state, Broken);
    assert!(slot.error.as_deref().unwrap().contains("running"));
    assert_eq!(cap(&pool, "linux-debian").broken, 1);
}

#[test]
fn every_change_is_published_on_the_watch_channel() {
    let pool = pool();
    let mut watcher = pool.watch();
    assert_eq!(watcher.borrow_and_update().version, 0);
    let lease = pool.acquire("linux-debian", "job-1").unwrap();
    assert!(watcher.has_changed().unwrap());
    let seen = watcher.borrow_and_update().clone();
    assert_eq!(seen.version, 1);
    assert_eq!(seen.ready("linux-debian"), 1);
    lease.rolling_back().unwrap();
    lease.release().unwrap();
    let seen = watcher.borrow_and_update().clone();
    assert_eq!(seen.version, 3);
    assert_eq!(seen.ready("linux-debian"), 2);
    assert_eq!(seen, pool.snapshot());
}

#[test]
fn capacity_is_derived_per_platform_in_order() {
    let now = SystemTime::now();
    let slot = |name: &str, platform: &str, state| SlotInfo {
        name: name.into(),
        platform: platform.into(),
        state,
        job_id: None,
        since: now,
        error: None,
    };
    let slots = [
        slot("a", "p2", Ready),
        slot("b", "p1", Running),
        slot("c", "p2", Broken),
        slot("d", "p2", RollingBack),
        slot("e", "p1", Ready),
    ];
    let c = capacity(&slots, false);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].platform, "p1");
    assert_eq!(
        (c[0].total, c[0].ready, c[0].busy(), c[0].broken),
        (2, 1, 1, 0)
    );
    assert_eq!(
        (c[1].total, c[1].ready, c[1].busy(), c[1].broken),
        (3, 1, 1, 1)
    );
    assert!(capacity(&[], false).is_empty());
}

#[test]
fn duplicate_and_unknown_names_are_refused() {
    assert_eq!(
        SlotPool::new([("a", "p"), ("a", "p")]).unwrap_err(),
        SlotError::DuplicateSlot { name: "a".into() }
    );
    let pool = pool();
    assert!(matches!(
        pool.mark_broken("nope", "x"),
        Err(SlotError::UnknownSlot { .. })
    ));
    assert!(matches!(
        pool.repair("pyti-w1-linux-debian-0"),
        Err(SlotError::InvalidTransition { from: Ready, .. })
    ));
}

#[test]
fn drain_refuses_new_leases_and_zeroes_ready_in_every_view() {
    let pool = pool();
    let mut watcher = pool.watch();
    watcher.borrow_and_update();
    let held = pool.acquire("linux-debian", "job-1").unwrap();
    pool.drain();
    assert!(pool.is_draining());
    let seen = watcher.borrow_and_update().clone();
    assert!(seen.draining);
    assert_eq!(seen, pool.snapshot());
    assert_eq!(seen.ready("linux-debian"), 0);
    for view in [pool.capacity(), seen.capacity()] {
        assert!(view.iter().all(|c| c.ready == 0 && c.total > 0), "{view:?}");
    }
    let c = cap(&pool, "linux-debian");
    assert_eq!((c.total, c.ready, c.preparing, c.broken), (2, 0, 1, 0));
    assert_eq!(
        pool.acquire("linux-alpine", "job-2").unwrap_err(),
        SlotError::Draining
    );
    // What runs finishes: the held lease still walks to ready.
    held.rolling_back().unwrap();
    held.release().unwrap();
    assert_eq!(cap(&pool, "linux-debian").busy(), 0);
    assert_eq!(cap(&pool, "linux-debian").ready, 0);
    let version = pool.snapshot().version;
    pool.drain();
    assert_eq!(
        pool.snapshot().version,
        version,
        "draining twice changes nothing"
    );
    // A job accepted before the drain, back from its download, still gets a slot.
    let back = pool.reacquire("linux-debian", "job-1").unwrap();
    assert_eq!(back.state(), SlotState::Preparing);
    back.release_unused().unwrap();
}

#[test]
fn an_unused_lease_goes_back_to_ready() {
    let pool = pool();
    let lease = pool.acquire("linux-alpine", "job-1").unwrap();
    assert_eq!(cap(&pool, "linux-alpine").ready, 0);
    lease.release_unused().unwrap();
    let c = cap(&pool, "linux-alpine");
    assert_eq!((c.total, c.ready, c.busy(), c.broken), (1, 1, 0, 0));
    // A lease whose VM ran cannot pretend it was unused: the slot breaks instead.
    let lease = pool.acquire("linux-alpine", "job-2").unwrap();
    lease.running().unwrap();
    lease.collecting().unwrap();
    assert!(lease.release_unused().is_err());
    assert_eq!(cap(&pool, "linux-alpine").broken, 1);
}
