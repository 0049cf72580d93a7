use super::*;
use proptest::prelude::*;

fn slots(variants: &[&str], total: u32, ready: u32) -> PlatformSlots {
    PlatformSlots {
        variants: variants.iter().map(|v| (*v).to_owned()).collect(),
        total,
        ready,
        running: total - ready,
        broken: 0,
    }
}

fn worker(platforms: &[(&str, PlatformSlots)]) -> WorkerEntry {
    WorkerEntry {
        platforms: platforms
            .iter()
            .map(|(p, s)| ((*p).to_owned(), s.clone()))
            .collect(),
        connected: true,
        ..WorkerEntry::default()
    }
}

fn requirement(platform: &str, variants: &[&str]) -> Requirement {
    Requirement {
        platform: platform.to_owned(),
        variants: variants.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn table(workers: Vec<(&str, WorkerEntry)>) -> CapacityTable {
    CapacityTable {
        workers: workers
            .into_iter()
            .map(|(id, w)| (id.to_owned(), w))
            .collect(),
        clock: 0,
        now_ms: 1_000,
    }
}

#[test]
fn picks_a_worker_offering_the_variant() {
    let t = table(vec![
        ("a", worker(&[("linux", slots(&["py3.11"], 2, 2))])),
        ("b", worker(&[("linux", slots(&["py3.12"], 2, 2))])),
    ]);
    assert_eq!(t.choose(&requirement("linux", &["py3.12"])), Some("b"));
    assert_eq!(t.choose(&requirement("linux", &["py3.11"])), Some("a"));
    assert_eq!(t.choose(&requirement("linux", &["py3.13"])), None);
    assert_eq!(t.choose(&requirement("windows", &[])), None);
}

#[test]
fn best_fit_prefers_the_least_excess_then_least_recently_used() {
    let mut t = table(vec![
        ("big", worker(&[("linux", slots(&["a", "b", "c"], 5, 5))])),
        ("small", worker(&[("linux", slots(&["a"], 5, 5))])),
        ("small2", worker(&[("linux", slots(&["a"], 5, 5))])),
    ]);
    assert_eq!(t.choose(&requirement("linux", &["a"])), Some("small"));
    assert_eq!(t.choose(&requirement("linux", &[])), Some("small"));
    assert_eq!(t.choose(&requirement("linux", &["b"])), Some("big"));
    t.assign("small", "j1", "linux");
    assert_eq!(t.choose(&requirement("linux", &["a"])), Some("small2"));
    t.assign("small2", "j2", "linux");
    assert_eq!(t.choose(&requirement("linux", &["a"])), Some("small"));
}

#[test]
fn pending_and_running_jobs_use_up_slots_even_when_reports_lag() {
    let mut t = table(vec![("a", worker(&[("linux", slots(&[], 1, 1))]))]);
    let linux = requirement("linux", &[]);
    assert_eq!(t.workers["a"].free_slots("linux"), 1);
    t.assign("a", "j1", "linux");
    assert_eq!(t.choose(&linux), None, "assigned, not started");
    // The worker started it, but its last report still says one ready slot.
    t.started("a", "j1", "linux");
    assert_eq!(t.workers["a"].free_slots("linux"), 0);
    assert_eq!(t.choose(&linux), None);
    // Finished: the slot rolls back before the worker reports it ready again.
    t.forget("j1");
    t.workers
        .get_mut("a")
        .unwrap()
        .platforms
        .get_mut("linux")
        .unwrap()
        .ready = 0;
    assert_eq!(t.choose(&linux), None);
    t.workers
        .get_mut("a")
        .unwrap()
        .platforms
        .get_mut("linux")
        .unwrap()
        .ready = 1;
    assert_eq!(t.choose(&linux), Some("a"));
}

#[test]
fn disconnected_draining_and_broken_workers_get_nothing() {
    let mut t = table(vec![("a", worker(&[("linux", slots(&[], 2, 2))]))]);
    let linux = requirement("linux", &[]);
    t.workers.get_mut("a").unwrap().connected = false;
    assert_eq!(t.choose(&linux), None);
    t.workers.get_mut("a").unwrap().connected = true;
    t.workers.get_mut("a").unwrap().draining = true;
    assert_eq!(t.choose(&linux), None);
    t.workers.get_mut("a").unwrap().draining = false;
    let s = t
        .workers
        .get_mut("a")
        .unwrap()
        .platforms
        .get_mut("linux")
        .unwrap();
    s.broken = 2;
    assert_eq!(t.choose(&linux), None);
    assert!(
        t.offers(&linux),
        "a broken worker still offers the platform"
    );
}

#[test]
fn a_worker_that_gave_a_job_back_is_paused_for_that_platform() {
    let mut t = table(vec![
        (
            "exact",
            worker(&[("linux", slots(&["x"], 2, 2)), ("bsd", slots(&[], 1, 1))]),
        ),
        ("wider", worker(&[("linux", slots(&["x", "y"], 2, 2))])),
    ]);
    let linux = requirement("linux", &["x"]);
    assert_eq!(t.choose(&linux), Some("exact"));
    t.pause("exact", "linux", 6_000);
    assert_eq!(t.choose(&linux), Some("wider"));
    assert_eq!(
        t.choose(&requirement("bsd", &[])),
        Some("exact"),
        "other platforms still run"
    );
    t.now_ms = 6_000;
    assert_eq!(t.choose(&linux), Some("exact"), "the pause is over");
    t.pause("nobody", "linux", 9_000);
}

#[test]
fn offers_lists_what_the_farm_has() {
    let t = table(vec![
        ("a", worker(&[("linux", slots(&["py3.11"], 1, 0))])),
        (
            "b",
            worker(&[
                ("linux", slots(&["py3.11", "x"], 1, 0)),
                ("bsd", slots(&[], 1, 1)),
            ]),
        ),
    ]);
    assert!(t.offers(&requirement("linux", &["py3.11", "x"])));
    assert!(!t.offers(&requirement("linux", &["py3.12"])));
    assert_eq!(
        t.offer_list(),
        vec!["bsd[]", "linux[py3.11,x]", "linux[py3.11]"]
    );
}

#[test]
fn plan_skips_what_does_not_fit_and_fills_the_rest() {
    let mut t = table(vec![
        ("a", worker(&[("linux", slots(&["x"], 2, 2))])),
        ("b", worker(&[("linux", slots(&[], 1, 1))])),
    ]);
    let requests: Vec<(String, Requirement)> = vec![
        ("j1".into(), requirement("linux", &["y"])),
        ("j2".into(), requirement("linux", &[])),
        ("j3".into(), requirement("linux", &["x"])),
        ("j4".into(), requirement("linux", &[])),
        ("j5".into(), requirement("linux", &[])),
    ];
    let placed = t.plan(&requests);
    assert_eq!(
        placed,
        vec![
            (1, "b".to_owned()),
            (2, "a".to_owned()),
            (3, "a".to_owned())
        ]
    );
    assert_eq!(t.workers["a"].pending.len(), 2);
}

fn arb_table() -> impl Strategy<Value = CapacityTable> {
    let platform = prop::sample::select(vec!["p1", "p2"]);
    let variants = prop::collection::btree_set(prop::sample::select(vec!["x", "y", "z"]), 0..3);
    let slot =
        (platform, variants, 0u32..4, 0u32..4, 0u32..2).prop_map(|(p, v, total, ready, broken)| {
            (
                p.to_owned(),
                PlatformSlots {
                    variants: v.into_iter().map(str::to_owned).collect(),
                    total,
                    ready: ready.min(total),
                    running: 0,
                    broken: broken.min(total),
                },
            )
        });
    let entry = (
        prop::collection::vec(slot, 0..3),
        any::<bool>(),
        any::<bool>(),
        0u64..5,
    )
        .prop_map(|(slots, connected, draining, last)| WorkerEntry {
            platforms: slots.into_iter().collect(),
            connected,
            draining,
            last_assigned: last,
            ..WorkerEntry::default()
        });
    prop::collection::vec(entry, 0..6).prop_map(|entries| CapacityTable {
        workers: entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| (format!("w{i}"), e))
            .collect(),
        clock: 10,
        now_ms: 0,
    })
}

fn arb_requests() -> impl Strategy<Value = Vec<(String, Requirement)>> {
    let req = (
        prop::sample::select(vec!["p1", "p2", "p3"]),
        prop::collection::btree_set(prop::sample::select(vec!["x", "y", "z"]), 0..2),
    )
        .prop_map(|(p, v)| Requirement {
            platform: p.to_owned(),
            variants: v.into_iter().map(str::to_owned).collect(),
        });
    prop::collection::vec(req, 0..30).prop_map(|reqs| {
        reqs.into_iter()
            .enumerate()
            .map(|(i, r)| (format!("j{i}"), r))
            .collect()
    })
}

proptest! {
    #[test]
    fn no_worker_gets_more_jobs_than_free_slots(t in arb_table(), requests in arb_requests()) {
        let before = t.clone();
        let mut after = t;
        let placed = after.plan(&requests);
        for (id, entry) in &before.workers {
            for platform in entry.platforms.keys() {
                let given = placed
                    .iter()
                    .filter(|(i, w)| w == id && requests[*i].1.platform == *platform)
                    .count();
                prop_assert!(given as u32 <= entry.free_slots(platform));
            }
        }
        for (index, worker) in &placed {
            let requirement = &requests[*index].1;
            let slots = &before.workers[worker].platforms[&requirement.platform];
            prop_assert!(requirement.variants.is_subset(&slots.variants));
        }
    }

    #[test]
    fn a_request_is_left_out_only_when_nothing_fits(t in arb_table(), requests in arb_requests()) {
        let mut after = t;
        let placed = after.plan(&requests);
        let placed_indexes: BTreeSet<usize> = placed.iter().map(|(i, _)| *i).collect();
        for (index, (_, requirement)) in requests.iter().enumerate() {
            if !placed_indexes.contains(&index) {
                prop_assert!(after.choose(requirement).is_none());
            }
        }
    }

    #[test]
    fn the_choice_has_the_least_excess(t in arb_table(), requests in arb_requests()) {
        for (_, requirement) in &requests {
            if let Some(chosen) = t.choose(requirement) {
                let excess = |id: &str| t.workers[id].platforms[&requirement.platform].variants.len();
                for (id, entry) in &t.workers {
                    if entry.free_slots(&requirement.platform) > 0
                        && entry.platforms[&requirement.platform].variants.is_superset(&requirement.variants)
                    {
                        prop_assert!(excess(chosen) <= excess(id));
                    }
                }
            }
        }
    }
}
