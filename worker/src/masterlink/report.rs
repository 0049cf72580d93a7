//! Leases and results: keeping a running job's lease alive, and getting its results
//! from the spool to the master.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyti::proto::{self, results_message::Message as M, ResultsMessage};
use tokio_util::sync::CancellationToken;

use super::consume::MasterLink;
use super::{spool, AttemptReport};

/// Log chunks and pieces of the results dict stay well under the message limit
/// ([`pyti::grpc::MAX_DECODE_BYTES`]).
const LOG_CHUNK_BYTES: usize = 256 * 1024;

/// The attempt of a job this worker holds, and the lease id its queue message carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub job_id: String,
    pub attempt: u32,
    pub lease_id: String,
}

/// The `ReportResults` stream for one attempt.
pub fn results_messages(
    worker_id: &str,
    held: &Held,
    report: AttemptReport,
) -> Vec<ResultsMessage> {
    let (job_id, attempt) = (held.job_id.as_str(), held.attempt);
    let wrap = |message| ResultsMessage {
        message: Some(message),
    };
    let mut messages = vec![wrap(M::Header(proto::ResultsHeader {
        job_id: job_id.to_owned(),
        attempt,
        worker_id: worker_id.to_owned(),
        image_hash: report.image_hash,
        python_version: report.python_version,
        resolved_version: report.resolved_version,
        lease_id: held.lease_id.clone(),
    }))];
    for mut task in report.tasks {
        task.job_id = job_id.to_owned();
        task.attempt = attempt;
        messages.push(wrap(M::TaskResult(task)));
    }
    for (log_name, data) in report.logs {
        let mut offset = 0;
        for chunk in data.chunks(LOG_CHUNK_BYTES) {
            messages.push(wrap(M::LogChunk(proto::LogChunk {
                job_id: job_id.to_owned(),
                attempt,
                log_name: log_name.clone(),
                offset: offset as u64,
                data: chunk.to_vec(),
            })));
            offset += chunk.len();
        }
    }
    // The results dict may be larger than a message may be: it goes in pieces.
    for piece in report.results_json.as_bytes().chunks(LOG_CHUNK_BYTES) {
        messages.push(wrap(M::ResultsJsonChunk(piece.to_vec())));
    }
    messages.push(wrap(M::Final(proto::FinalRecord {
        outcome: report.outcome as i32,
        results_json: String::new(),
        error: report.error,
    })));
    messages
}

impl MasterLink {
    /// Renews the lease of a running job every `every` until aborted; fires `cancel`
    /// when the master says the job was cancelled or no longer runs here.
    pub(super) async fn renew(
        self: Arc<Self>,
        held: Held,
        every: Duration,
        cancel: CancellationToken,
    ) {
        let job_id = held.job_id.clone();
        let request = proto::RenewLeaseRequest {
            worker_id: self.worker_id().to_owned(),
            job_id: held.job_id,
            attempt: held.attempt,
            lease_id: held.lease_id,
        };
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.registry.clone().renew_lease(request.clone()).await {
                Ok(answer) if answer.get_ref().cancelled => {
                    tracing::info!(%job_id, "The master says stop: cancelled or no longer ours");
                    cancel.cancel();
                    return;
                }
                Ok(_) => {}
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
                    ) =>
                {
                    tracing::warn!(%job_id, error = %status.message(), "The master says this attempt is not ours: stopping it");
                    cancel.cancel();
                    return;
                }
                Err(status) => {
                    tracing::warn!(%job_id, error = %status.message(), "Lease renewal failed; retrying")
                }
            }
        }
    }

    /// Writes the report to the spool; `None` (logged) if the disk refused, in which
    /// case the results are sent straight from memory once.
    pub(super) async fn spool(&self, held: &Held, report: AttemptReport) -> Option<PathBuf> {
        let (job_id, attempt) = (held.job_id.as_str(), held.attempt);
        let messages = results_messages(self.worker_id(), held, report);
        let dir = self.settings.spool_dir.clone();
        let id = job_id.to_owned();
        let kept = messages.clone();
        let written =
            tokio::task::spawn_blocking(move || spool::write(&dir, &id, attempt, &kept)).await;
        match written {
            Ok(Ok(path)) => Some(path),
            Ok(Err(error)) => {
                tracing::error!(%job_id, %error, "Cannot spool results; sending them unspooled");
                if let Err(status) = self.send(messages).await {
                    tracing::error!(%job_id, error = %status.message(), "Unspooled results could not be sent: they are lost");
                }
                None
            }
            Err(error) => {
                tracing::error!(%job_id, %error, "Spooling results panicked");
                None
            }
        }
    }

    async fn send(
        &self,
        messages: Vec<ResultsMessage>,
    ) -> Result<proto::ResultsAck, tonic::Status> {
        Ok(self
            .registry
            .clone()
            .report_results(tokio_stream::iter(messages))
            .await?
            .into_inner())
    }

    /// Sends one spooled result until the master stored it, then deletes it. Gives up
    /// (keeping the file for the next start) at shutdown.
    pub(super) async fn send_spooled(&self, path: PathBuf) {
        let read_path = path.clone();
        let spooled = match tokio::task::spawn_blocking(move || spool::read(&read_path)).await {
            Ok(Ok(spooled)) => spooled,
            Ok(Err(error)) => {
                tracing::error!(%error, "Unreadable spooled results left in place");
                return;
            }
            Err(_) => return,
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.send(spooled.messages.clone()).await {
                Ok(ack) if ack.stored => {
                    tracing::info!(job_id = %ack.job_id, attempt = ack.attempt, duplicate = ack.duplicate, "Results stored by the master");
                    let remove_path = path.clone();
                    if let Ok(Err(error)) =
                        tokio::task::spawn_blocking(move || spool::remove(&remove_path)).await
                    {
                        tracing::warn!(%error, "Stored results could not be removed from the spool");
                    }
                    return;
                }
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "The master did not store the results; retrying")
                }
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    // An attempt the job has left behind: the master will never take it.
                    tracing::warn!(path = %path.display(), error = %status.message(), "Stale results dropped from the spool");
                    let remove_path = path.clone();
                    if let Ok(Err(error)) =
                        tokio::task::spawn_blocking(move || spool::remove(&remove_path)).await
                    {
                        tracing::warn!(%error, "Stale results could not be removed from the spool");
                    }
                    return;
                }
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::InvalidArgument
                            | tonic::Code::NotFound
                            | tonic::Code::PermissionDenied
                            | tonic::Code::ResourceExhausted
                    ) =>
                {
                    tracing::error!(path = %path.display(), error = %status.message(), "The master refuses these results; left in the spool");
                    return;
                }
                Err(status) => {
                    tracing::warn!(path = %path.display(), error = %status.message(), "Results not delivered; retrying")
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyti::proto::Outcome;

    #[test]
    fn a_report_becomes_header_tasks_chunks_and_final() {
        let report = AttemptReport {
            outcome: Outcome::Passed,
            tasks: vec![proto::TaskResult {
                task: "install".into(),
                ..Default::default()
            }],
            logs: vec![("install.log".into(), vec![7; LOG_CHUNK_BYTES + 10])],
            results_json: "{}".into(),
            ..Default::default()
        };
        let held = Held {
            job_id: "j1".into(),
            attempt: 2,
            lease_id: "l1".into(),
        };
        let messages = results_messages("w1", &held, report);
        let kinds: Vec<&str> = messages
            .iter()
            .map(|m| match m.message.as_ref().unwrap() {
                M::Header(h) => {
                    assert_eq!(h.lease_id, "l1");
                    "header"
                }
                M::TaskResult(t) => {
                    assert_eq!((t.job_id.as_str(), t.attempt), ("j1", 2));
                    "task"
                }
                M::LogChunk(c) => {
                    assert!(c.offset == 0 || c.offset == LOG_CHUNK_BYTES as u64);
                    "log"
                }
                M::ResultsJsonChunk(piece) => {
                    assert_eq!(piece, b"{}");
                    "json"
                }
                M::Final(f) => {
                    assert_eq!(f.outcome(), Outcome::Passed);
                    "final"
                }
            })
            .collect();
        assert_eq!(kinds, ["header", "task", "log", "log", "json", "final"]);
    }
}
