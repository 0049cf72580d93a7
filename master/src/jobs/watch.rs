//! Watching one job: its state now, then every change and task result until it ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::Jobs;
use crate::error::{Error, Result};

/// At most this many `WatchJob` streams at once: each holds a task and a buffer.
pub const MAX_WATCHERS: usize = 1024;

/// Counts one watcher while it lives.
struct WatcherSlot(Arc<AtomicUsize>);

impl WatcherSlot {
    fn take(count: &Arc<AtomicUsize>) -> Result<Self> {
        let before = count.fetch_add(1, Ordering::SeqCst);
        let slot = Self(Arc::clone(count));
        if before >= MAX_WATCHERS {
            return Err(Error::TooLarge(format!(
                "{MAX_WATCHERS} jobs are being watched already; try again later or poll GetJob"
            )));
        }
        Ok(slot)
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
use crate::store::{JobRow, TaskRow};

/// Something that happened to a job.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// The job as it stands after a change.
    Job(JobRow),
    /// A task result of a stored attempt.
    Task {
        /// The job.
        job_id: String,
        /// The attempt that produced it.
        attempt: u32,
        /// The result.
        task: TaskRow,
    },
}

impl JobEvent {
    /// The job it concerns.
    pub fn job_id(&self) -> &str {
        match self {
            Self::Job(job) => &job.job_id,
            Self::Task { job_id, .. } => job_id,
        }
    }

    /// Whether it says the job ended: nothing follows it.
    pub fn is_end(&self) -> bool {
        matches!(self, Self::Job(job) if job.is_terminal())
    }
}

impl Jobs {
    /// The job now, then each state change and task result until it ends.
    pub async fn watch(self: &Arc<Self>, job_id: &str) -> Result<mpsc::Receiver<JobEvent>> {
        let slot = WatcherSlot::take(&self.watchers)?;
        let events = self.events.subscribe();
        let job = self.job(job_id).await?;
        let (sender, receiver) = mpsc::channel(64);
        let jobs = Arc::clone(self);
        self.runtime.spawn(async move {
            jobs.forward(JobEvent::Job(job), events, sender).await;
            drop(slot);
        });
        Ok(receiver)
    }

    /// Sends `first`, then the events of its job, until the job ends, the watcher
    /// goes or the master stops.
    async fn forward(
        self: Arc<Self>,
        first: JobEvent,
        mut events: broadcast::Receiver<JobEvent>,
        sender: mpsc::Sender<JobEvent>,
    ) {
        let job_id = first.job_id().to_owned();
        let mut event = first;
        loop {
            let end = event.is_end();
            if sender.send(event).await.is_err() || end {
                return;
            }
            match self.next_event(&job_id, &mut events, &sender).await {
                Some(next) => event = next,
                None => return,
            }
        }
    }

    /// The next event of `job_id`; `None` when the watcher went or the master stops.
    async fn next_event(
        &self,
        job_id: &str,
        events: &mut broadcast::Receiver<JobEvent>,
        sender: &mpsc::Sender<JobEvent>,
    ) -> Option<JobEvent> {
        loop {
            let received = tokio::select! {
                () = sender.closed() => return None,
                () = self.runtime.cancelled() => return None,
                received = events.recv() => received,
            };
            match received {
                Ok(event) if event.job_id() == job_id => return Some(event),
                Ok(_) => {}
                // Missed some: the job as it is now says where it stands.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return self.job(job_id).await.ok().map(JobEvent::Job)
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
