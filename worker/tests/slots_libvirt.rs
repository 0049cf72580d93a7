//! The slot state machine driven by real libvirt calls on `test:///default`
//! (libvirt's in-process test driver: real API, no guest).

use std::time::Duration;

use pyti_worker::stateofvm::{SlotPool, SlotState};
use pyti_worker::vms::{Connection, DiskSpec, VirtualMachine, VmConfig, VmError, VmState};
use tokio::time::Instant;

fn config(name: &str) -> VmConfig {
    let mut config = VmConfig::new(name);
    config.memory_mib = 256;
    config.hard_disk = Some(DiskSpec::new(format!("/nonexistent/{name}.qcow2")));
    config
}

async fn connection() -> Connection {
    Connection::open("test:///default")
        .await
        .expect("libvirt test driver")
}

#[tokio::test]
async fn vm_that_never_powers_off_is_destroyed_at_its_deadline_and_the_slot_recovers() {
    let connection = connection().await;
    let pool = SlotPool::new(SlotPool::slot_names("pyti-t1-", "linux-debian", 1)).unwrap();
    let lease = pool.acquire("linux-debian", "job-deadline").unwrap();
    let vm = VirtualMachine::define(&connection, &config(lease.name()))
        .await
        .unwrap();
    vm.start().await.unwrap();
    lease.running().unwrap();
    assert_eq!(vm.state().await.unwrap(), VmState::Running);

    let deadline = Instant::now() + Duration::from_millis(600);
    let err = vm.wait_for_poweroff(deadline).await.unwrap_err();
    match err {
        VmError::Timeout { ref vm, waited } => {
            assert_eq!(vm, lease.name());
            assert!(waited >= Duration::from_millis(500));
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(vm.state().await.unwrap(), VmState::ShutOff);
    lease.collecting().unwrap();
    lease.rolling_back().unwrap();
    lease.release().unwrap();
    assert_eq!(pool.snapshot().ready("linux-debian"), 1);
    vm.undefine().await.unwrap();
    assert!(!connection
        .domain_names()
        .await
        .unwrap()
        .contains(&vm.name().to_owned()));
}

#[tokio::test]
async fn failed_start_breaks_the_slot_and_capacity_drops() {
    let connection = connection().await;
    // The test driver's own running domain is called "test": defining another domain
    // with that name (different UUID) is refused by libvirt, so this slot cannot start.
    let pool = SlotPool::new([("test", "linux-debian"), ("pyti-t2-ok", "linux-debian")]).unwrap();
    let mut watcher = pool.watch();
    assert_eq!(pool.snapshot().ready("linux-debian"), 2);
    let lease = pool.acquire("linux-debian", "job-broken").unwrap();
    assert_eq!(lease.name(), "test");
    let mut bad = config(lease.name());
    bad.hard_disk = Some(DiskSpec::new("/nonexistent/other.qcow2"));
    let started = async {
        let vm = VirtualMachine::define(&connection, &bad).await?;
        vm.start().await
    }
    .await;
    let error = started.expect_err("libvirt must refuse a second domain named test");
    assert!(matches!(error, VmError::Libvirt { .. }), "{error}");
    lease.mark_broken(&format!("VM failed to start: {error}"));

    let snapshot = watcher.borrow_and_update().clone();
    assert_eq!(snapshot.ready("linux-debian"), 1);
    let capacity = pool.capacity();
    assert_eq!(capacity[0].broken, 1);
    assert_eq!(capacity[0].ready, 1);
    let broken = pool.slots().into_iter().find(|s| s.name == "test").unwrap();
    assert_eq!(broken.state, SlotState::Broken);
    assert!(broken.error.unwrap().contains("already exists"));
    // The broken slot is never handed out again.
    let next = pool.acquire("linux-debian", "job-next").unwrap();
    assert_eq!(next.name(), "pyti-t2-ok");
    assert!(pool.acquire("linux-debian", "job-third").is_err());
    next.rolling_back().unwrap();
    next.release().unwrap();
}

#[tokio::test]
async fn snapshot_create_list_and_rollback() {
    let connection = connection().await;
    let vm = VirtualMachine::define(&connection, &config("pyti-t3-snap"))
        .await
        .unwrap();
    vm.start().await.unwrap();
    vm.create_snapshot("clean", "state before <any> job")
        .await
        .unwrap();
    assert_eq!(vm.list_snapshots().await.unwrap(), vec!["clean".to_owned()]);
    vm.destroy().await.unwrap();
    assert_eq!(vm.state().await.unwrap(), VmState::ShutOff);
    vm.rollback("clean").await.unwrap();
    assert_eq!(
        vm.state().await.unwrap(),
        VmState::Running,
        "the snapshot was taken while running"
    );
    let missing = vm.rollback("no-such-snapshot").await.unwrap_err();
    assert!(missing.to_string().contains("snapshot"), "{missing}");
    vm.undefine().await.unwrap();
}

#[tokio::test]
async fn stop_shuts_down_and_cleanup_removes_stale_domains() {
    let connection = connection().await;
    let a = VirtualMachine::define(&connection, &config("pyti-t4-a"))
        .await
        .unwrap();
    let b = VirtualMachine::define(&connection, &config("pyti-t4-b"))
        .await
        .unwrap();
    a.start().await.unwrap();
    let outcome = a.stop(Duration::from_millis(300)).await.unwrap();
    // The test driver honours shutdown at once.
    assert_eq!(outcome, pyti_worker::vms::StopOutcome::ShutDown);
    assert_eq!(
        a.stop(Duration::from_millis(10)).await.unwrap(),
        pyti_worker::vms::StopOutcome::AlreadyOff
    );
    b.start().await.unwrap();
    let mut removed = connection.cleanup_stale("pyti-t4-").await.unwrap();
    removed.sort();
    assert_eq!(
        removed,
        vec!["pyti-t4-a".to_owned(), "pyti-t4-b".to_owned()]
    );
    let names = connection.domain_names().await.unwrap();
    assert!(names.iter().all(|n| !n.starts_with("pyti-t4-")));
    assert!(names.contains(&"test".to_owned()));
}

#[tokio::test]
async fn domain_from_xml_file() {
    let connection = connection().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.xml");
    std::fs::write(
        &path,
        "<domain type='test'><name>pyti-t5-xml</name><memory unit='MiB'>128</memory>\
         <os><type>hvm</type></os></domain>",
    )
    .unwrap();
    let vm = VirtualMachine::define_from_xml_file(&connection, &path)
        .await
        .unwrap();
    assert_eq!(vm.name(), "pyti-t5-xml");
    vm.start().await.unwrap();
    vm.undefine().await.unwrap();
    let missing = VirtualMachine::define_from_xml_file(&connection, &dir.path().join("nope.xml"))
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("nope.xml"));
}

#[tokio::test]
async fn unsupported_uri_is_refused_with_the_uri_named() {
    let err = Connection::open("xen:///system").await.unwrap_err();
    assert!(err.to_string().contains("xen:///system"));
}

#[tokio::test]
async fn leftovers_of_a_killed_worker_are_removed_by_prefix_only() {
    let connection = connection().await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["pyti-t6-0.qcow2", "pyti-t6-1.qcow2", "pyti-other-0.qcow2"] {
        std::fs::write(dir.path().join(name), b"overlay").unwrap();
    }
    let mine = VirtualMachine::define(&connection, &config("pyti-t6-0"))
        .await
        .unwrap();
    mine.start().await.unwrap();
    let other = VirtualMachine::define(&connection, &config("pyti-other-0"))
        .await
        .unwrap();
    let removed = pyti_worker::vms::cleanup_leftovers(&connection, dir.path(), "pyti-t6-")
        .await
        .unwrap();
    assert_eq!(removed.domains, vec!["pyti-t6-0".to_owned()]);
    assert_eq!(
        removed.overlays,
        vec![
            dir.path().join("pyti-t6-0.qcow2"),
            dir.path().join("pyti-t6-1.qcow2")
        ]
    );
    assert!(dir.path().join("pyti-other-0.qcow2").exists());
    let names = connection.domain_names().await.unwrap();
    assert!(names.contains(&"pyti-other-0".to_owned()));
    assert!(!names.contains(&"pyti-t6-0".to_owned()));
    other.undefine().await.unwrap();
}
