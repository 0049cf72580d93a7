//! `WorkerControl`: the control plane the master and operators use to see what a
//! worker can take (capacity per platform), which VMs it runs, and to cancel or drain.
//!
//! Everything it reports is derived from the slot pool (`stateofvm`) by
//! [`WorkerCapacity`], the same function `Register` sends, so what the master schedules
//! by is what the worker really has.

use std::pin::Pin;

use pyti::proto::{self, worker_control_server::WorkerControl};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::capacity::WorkerCapacity;
use crate::error::Result as WorkerResult;
use crate::masterlink::MasterLinkHandle;
use crate::stateofvm::{SlotInfo, SlotState};

/// The worker's control-plane service (cheap to clone: clones share state).
#[derive(Clone)]
pub struct ControlService {
    capacity: WorkerCapacity,
    /// Ends open WatchCapacity streams, which would otherwise hold a graceful shutdown open.
    shutdown: CancellationToken,
    /// The master link, when this worker takes jobs from a master: cancel reaches its
    /// running jobs through it.
    link: Option<MasterLinkHandle>,
}

impl ControlService {
    /// A control plane over `capacity` (the worker's platforms and slot pool).
    pub fn new(capacity: WorkerCapacity) -> Self {
        Self {
            capacity,
            shutdown: CancellationToken::new(),
            link: None,
        }
    }

    /// Connects the control plane to the master link, so CancelJob stops running jobs.
    /// The link must run over the same capacity (it takes its leases from that pool).
    #[must_use]
    pub fn with_master_link(mut self, link: MasterLinkHandle) -> Self {
        self.link = Some(link);
        self
    }
}

fn vm_info(slot: SlotInfo) -> proto::VmInfo {
    let state = match slot.state {
        SlotState::Ready => proto::VmState::Ready,
        SlotState::Preparing => proto::VmState::Preparing,
        SlotState::Running => proto::VmState::Running,
        SlotState::Collecting => proto::VmState::Collecting,
        SlotState::RollingBack => proto::VmState::RollingBack,
        SlotState::Broken => proto::VmState::Broken,
    };
    proto::VmInfo {
        name: slot.name,
        platform: slot.platform,
        state: state as i32,
        job_id: slot.job_id.unwrap_or_default(),
        since: Some(prost_types::Timestamp::from(slot.since)),
        error: slot.error.unwrap_or_default(),
    }
}

type CapacityStream = Pin<Box<dyn Stream<Item = Result<proto::Capacity, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerControl for ControlService {
    async fn get_capacity(
        &self,
        _request: Request<proto::GetCapacityRequest>,
    ) -> Result<Response<proto::Capacity>, Status> {
        Ok(Response::new(self.capacity.advertised()))
    }

    type WatchCapacityStream = CapacityStream;

    async fn watch_capacity(
        &self,
        _request: Request<proto::WatchCapacityRequest>,
    ) -> Result<Response<Self::WatchCapacityStream>, Status> {
        let capacity = self.capacity.clone();
        // The pool publishes every change, draining included; the first item is now.
        let stream = futures_util::StreamExt::take_until(
            WatchStream::new(self.capacity.changes())
                .map(move |snapshot| Ok(capacity.advertised_at(&snapshot))),
            self.shutdown.clone().cancelled_owned(),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_vms(
        &self,
        request: Request<proto::ListVmsRequest>,
    ) -> Result<Response<proto::ListVmsResponse>, Status> {
        let platform = request.into_inner().platform;
        let vms = self
            .capacity
            .pool()
            .slots()
            .into_iter()
            .filter(|s| platform.is_empty() || s.platform == platform)
            .map(vm_info)
            .collect();
        Ok(Response::new(proto::ListVmsResponse { vms }))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::WorkerCancelJobRequest>,
    ) -> Result<Response<proto::WorkerCancelJobResponse>, Status> {
        if let Some(link) = &self.link {
            let request = request.get_ref();
            let found = link.cancel(&request.job_id);
            tracing::info!(job_id = %request.job_id, reason = %request.reason, found, "Cancel requested");
            return Ok(Response::new(proto::WorkerCancelJobResponse { found }));
        }
        Err(Status::unimplemented(format!(
            "CancelJob {}: this worker does not take jobs from the farm yet",
            request.get_ref().job_id
        )))
    }

    async fn drain(
        &self,
        _request: Request<proto::DrainRequest>,
    ) -> Result<Response<proto::DrainResponse>, Status> {
        let running = self.capacity.drain();
        tracing::info!(worker_id = %self.capacity.worker_id(), running, "Draining: taking no new work");
        let capacity = self.capacity.advertised();
        Ok(Response::new(proto::DrainResponse {
            capacity: Some(capacity),
            running,
        }))
    }
}

/// How WorkerControl lets callers in: with `tls`, only clients with a farm certificate
/// (the master, admins; see [`pyti::trust::METHODS`]); without, open.
pub fn security(tls: Option<&pyti::trust::TlsFiles>) -> Result<pyti::grpc::Security, String> {
    let Some(files) = tls else {
        return Ok(pyti::grpc::Security::open());
    };
    Ok(pyti::grpc::Security {
        tls: Some(files.server_config(false)?),
        auth: pyti::trust::Authenticator::enforcing(None),
    })
}

/// Serves `WorkerControl` with health and reflection on `listener`, as `security`
/// says, until `shutdown`.
pub async fn serve(
    control: ControlService,
    listener: tokio::net::TcpListener,
    security: &pyti::grpc::Security,
    shutdown: impl std::future::Future<Output = ()>,
) -> WorkerResult<()> {
    use pyti::grpc::{MAX_DECODE_BYTES, MAX_ENCODE_BYTES};
    use pyti::proto::worker_control_server::{WorkerControlServer, SERVICE_NAME};
    let streams = control.shutdown.clone();
    let shutdown = async move {
        shutdown.await;
        streams.cancel();
    };
    let router = pyti::grpc::server(security)?.add_service(
        WorkerControlServer::new(control)
            .max_decoding_message_size(MAX_DECODE_BYTES)
            .max_encoding_message_size(MAX_ENCODE_BYTES),
    );
    let (router, _health) = pyti::grpc::add_introspection(router, &[SERVICE_NAME]).await?;
    pyti::grpc::serve(router, listener, shutdown).await?;
    Ok(())
}
