//! The master as a client of one worker's `WorkerControl`: the only place it calls
//! workers, so "did not answer" is turned into one error the same way everywhere.

use pyti::proto::{self, worker_control_client::WorkerControlClient};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;

use super::Capacity;
use crate::convert;
use crate::error::{Error, Result};

/// A connection to one worker's control plane.
pub(super) struct Control {
    worker_id: String,
    address: String,
    client: WorkerControlClient<Channel>,
}

impl Control {
    /// Connects to `worker_id`'s control plane at `address`; with `tls`, presenting
    /// the master's identity and accepting only the certificate of that very worker.
    pub(super) async fn connect(
        worker_id: &str,
        address: &str,
        tls: Option<&pyti::trust::TlsFiles>,
    ) -> Result<Self> {
        let config = tls
            .map(|files| files.client_config(&format!("{worker_id}.worker.pyti")))
            .transpose()
            .map_err(|e| unreachable(worker_id, address, e))?;
        let channel = pyti::trust::tls::endpoint(address, config)
            .map_err(|e| unreachable(worker_id, address, e))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| unreachable(worker_id, address, e.to_string()))?;
        let client = WorkerControlClient::new(channel)
            .max_decoding_message_size(pyti::grpc::MAX_DECODE_BYTES)
            .max_encoding_message_size(pyti::grpc::MAX_DECODE_BYTES);
        Ok(Self {
            worker_id: worker_id.to_owned(),
            address: address.to_owned(),
            client,
        })
    }

    fn unreachable(&self, status: &tonic::Status) -> Error {
        unreachable(&self.worker_id, &self.address, status.message().to_owned())
    }

    /// Asks the worker to drain; its capacity as it answered.
    pub(super) async fn drain(&mut self) -> Result<Option<Capacity>> {
        let answer = self
            .client
            .drain(proto::DrainRequest {})
            .await
            .map_err(|e| self.unreachable(&e))?
            .into_inner();
        Ok(answer.capacity.map(convert::capacity))
    }

    /// Asks the worker to stop `job_id`.
    pub(super) async fn cancel_job(&mut self, job_id: &str, reason: &str) -> Result<()> {
        self.client
            .cancel_job(proto::WorkerCancelJobRequest {
                job_id: job_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await
            .map_err(|e| self.unreachable(&e))?;
        Ok(())
    }

    /// The worker's capacity now and after every change, until the stream breaks.
    pub(super) async fn watch_capacity(&mut self) -> Result<impl Stream<Item = Result<Capacity>>> {
        let stream = self
            .client
            .watch_capacity(proto::WatchCapacityRequest {})
            .await
            .map_err(|e| self.unreachable(&e))?
            .into_inner();
        let (worker_id, address) = (self.worker_id.clone(), self.address.clone());
        Ok(stream.map(move |report| match report {
            Ok(capacity) => Ok(convert::capacity(capacity)),
            Err(status) => Err(unreachable(
                &worker_id,
                &address,
                status.message().to_owned(),
            )),
        }))
    }
}

fn unreachable(worker_id: &str, address: &str, message: String) -> Error {
    Error::WorkerUnreachable {
        worker_id: worker_id.to_owned(),
        address: address.to_owned(),
        message,
    }
}
