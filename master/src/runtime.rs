//! What every part of the master runs on: the clock it asks for the time, and the
//! task set it spawns into, which stops at shutdown and is waited for before exit.

use std::future::Future;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::store::Millis;

/// The clock and the owned tasks of one master (cheap to clone).
#[derive(Debug, Clone)]
pub struct Runtime {
    clock: Clock,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Runtime {
    /// Tasks that stop when `shutdown` is cancelled, and time from `clock`.
    pub fn new(clock: Clock, shutdown: CancellationToken) -> Self {
        Self {
            clock,
            shutdown,
            tasks: TaskTracker::new(),
        }
    }

    /// Milliseconds since the epoch, by the master's clock.
    pub fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    /// The master's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Runs `task` as one of the master's tasks: [`Runtime::stopped`] waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Completes when the master shuts down.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// A token cancelled at shutdown, or earlier by its holder (one task's stop).
    pub fn child_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// A token cancelled at shutdown, for a task that outlives a borrow of this.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every task has stopped (after shutdown).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
