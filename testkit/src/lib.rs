//! Test support for the PyTI workspace: what more than one crate's tests (or a test and a
//! benchmark) need, in one place, so a test says what it checks rather than how a farm
//! is put together.
//!
//! Each test binary used to carry its own copy of the master/worker set-up, reached
//! into another crate's tests with `#[path]`, or called a nine-argument constructor;
//! the copies drifted. Here:
//!
//! - [`farm`] (feature `farm`): a master in this process or as its binary, over real
//!   RabbitMQ and SQLite or PostgreSQL, with workers built by name
//!   ([`farm::WorkerBuilder`]); every farm has its own queue prefix and deletes its
//!   queues when it ends, even after a panic. The client helpers (submit, wait for
//!   jobs to end, ...) are in [`farm::client`].
//! - [`postgres`] and [`grpc`] (feature `farm`): a fresh PostgreSQL schema per test;
//!   health and reflection checks of a gRPC server.
//! - [`vm`] (feature `vm`): the test root that caches guest images and the static
//!   guest agent, for the tests that boot real VMs.
//! - [`fixtures`], [`schema`], [`process`], [`rng`], [`trees`], [`wait`], [`net`]:
//!   fixture sdists from `guest/tests/fixtures`, the results schema check, running a
//!   tool that must succeed, deterministic bytes, tree comparison, polling with a
//!   limit, ports.
//!
//! Helpers that only one crate's tests use stay in that crate's `tests/support/`.

#[cfg(feature = "farm")]
pub mod farm;
pub mod fixtures;
#[cfg(feature = "farm")]
pub mod grpc;
pub mod net;
#[cfg(feature = "farm")]
pub mod postgres;
pub mod process;
pub mod rng;
pub mod schema;
pub mod trees;
#[cfg(feature = "vm")]
pub mod vm;
pub mod wait;

/// Declares the ignored test `child_worker_process` that a test binary needs to run
/// workers in child processes ([`farm::WorkerBuilder::spawn_process`] runs the binary
/// again with only that test).
#[cfg(feature = "farm")]
#[macro_export]
macro_rules! child_worker_process_test {
    () => {
        /// The body of the child process of `WorkerBuilder::spawn_process`; does
        /// nothing when run by hand.
        #[test]
        #[ignore = "runs only as the child process of a test"]
        fn child_worker_process() {
            $crate::farm::child_worker_process();
        }
    };
}

/// `name` with a random suffix, so that tests running at the same time (or a run
/// after a crashed one) never share an id, a queue or a directory.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}
