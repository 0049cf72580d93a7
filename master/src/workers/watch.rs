//! One task per registered worker keeps its `WatchCapacity` stream open, feeding
//! each report into the table, and marks the worker disconnected while it is not.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Control, Workers};
use crate::error::Result;

/// First wait before reconnecting a lost stream; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Workers {
    /// Starts watching `worker_id` at `address`; cancel the token to stop.
    pub(super) fn start_watching(
        self: &Arc<Self>,
        worker_id: &str,
        address: &str,
    ) -> CancellationToken {
        let stop = self.runtime.child_token();
        self.runtime.spawn(Arc::clone(self).watch(
            worker_id.to_owned(),
            address.to_owned(),
            stop.clone(),
        ));
        stop
    }

    async fn watch(self: Arc<Self>, worker_id: String, address: String, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        while !stop.is_cancelled() {
            let result = tokio::select! {
                () = stop.cancelled() => break,
                result = self.follow(&worker_id, &address, &mut backoff) => result,
            };
            self.set_connected(&worker_id, false);
            if let Err(error) = result {
                tracing::debug!(%worker_id, %address, %error, "Capacity stream lost");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.set_connected(&worker_id, false);
    }

    /// Applies every report of one stream until it ends; a report resets `backoff`.
    async fn follow(&self, worker_id: &str, address: &str, backoff: &mut Duration) -> Result<()> {
        let mut control = Control::connect(worker_id, address, self.tls.as_ref()).await?;
        let mut reports = std::pin::pin!(control.watch_capacity().await?);
        while let Some(capacity) = reports.next().await {
            let capacity = capacity?;
            *backoff = FIRST_BACKOFF;
            self.report(worker_id, capacity);
        }
        Ok(())
    }
}
