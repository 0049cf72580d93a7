//! `WorkerControl`: the control plane the master and operators use to see what a
//! worker can take (capacity per platform), which VMs it runs, and to cancel or drain.

use std::pin::Pin;
use std::sync::Arc;

use pyti::proto::{self, worker_control_server::WorkerControl};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::WorkerConfig;
use crate::error::Result as WorkerResult;
use crate::farm::FarmHandle;

/// Capacity as the worker advertises it; the master schedules by `ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformCapacity {
    /// Platform identifier.
    pub platform: String,
    /// Variants the platform's VMs offer.
    pub variants: Vec<String>,
    /// Configured slots.
    pub total: u32,
    /// Slots free to take a job.
    pub ready: u32,
}

/// The worker's control-plane service (cheap to clone: clones share state).
#[derive(Clone)]
pub struct ControlService {
    config: Arc<WorkerConfig>,
    draining: Arc<watch::Sender<bool>>,
    /// Ends open WatchCapacity streams, which would otherwise hold a graceful shutdown open.
    shutdown: CancellationToken,
    /// The farm loop, when this worker takes jobs from a master: cancel and drain reach
    /// its running jobs through it.
    farm: Option<FarmHandle>,
}

impl ControlService {
    /// A control plane answering from `config`.
    pub fn new(config: Arc<WorkerConfig>) -> Self {
        let (draining, _) = watch::channel(false);
        Self {
            config,
            draining: Arc::new(draining),
            shutdown: CancellationToken::new(),
            farm: None,
        }
    }

    /// Connects the control plane to the farm loop, so CancelJob stops running jobs and
    /// Drain stops the loop taking new ones.
    #[must_use]
    pub fn with_farm(mut self, farm: FarmHandle) -> Self {
        self.farm = Some(farm);
        self
    }

    /// Capacity per platform: every configured slot, none ready while draining.
    pub fn capacity(&self) -> Vec<PlatformCapacity> {
        let draining = *self.draining.borrow();
        self.config
            .platforms
            .iter()
            .map(|p| PlatformCapacity {
                platform: p.name.clone(),
                variants: p.variants.clone(),
                total: p.vms,
                ready: if draining { 0 } else { p.vms },
            })
            .collect()
    }

    fn capacity_message(&self) -> proto::Capacity {
        proto::Capacity {
            worker_id: self.config.worker_id.clone(),
            platforms: self
                .capacity()
                .into_iter()
                .map(|c| proto::PlatformCapacity {
                    platform: c.platform,
                    variants: c.variants,
                    total: c.total,
                    ready: c.ready,
                    ..Default::default()
                })
                .collect(),
            draining: *self.draining.borrow(),
            at: Some(pyti::grpc::now_timestamp()),
        }
    }
}

type CapacityStream = Pin<Box<dyn Stream<Item = Result<proto::Capacity, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerControl for ControlService {
    async fn get_capacity(
        &self,
        _request: Request<proto::GetCapacityRequest>,
    ) -> Result<Response<proto::Capacity>, Status> {
        Ok(Response::new(self.capacity_message()))
    }

    type WatchCapacityStream = CapacityStream;

    async fn watch_capacity(
        &self,
        _request: Request<proto::WatchCapacityRequest>,
    ) -> Result<Response<Self::WatchCapacityStream>, Status> {
        let service = self.clone();
        let changes = WatchStream::new(self.draining.subscribe());
        let stream = futures_util::StreamExt::take_until(
            changes.map(move |_| Ok(service.capacity_message())),
            self.shutdown.clone().cancelled_owned(),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_vms(
        &self,
        _request: Request<proto::ListVmsRequest>,
    ) -> Result<Response<proto::ListVmsResponse>, Status> {
        Err(Status::unimplemented(
            "ListVms: this worker does not manage VM slots yet; GetCapacity shows the configured ones",
        ))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::WorkerCancelJobRequest>,
    ) -> Result<Response<proto::WorkerCancelJobResponse>, Status> {
        if let Some(farm) = &self.farm {
            let request = request.get_ref();
            let found = farm.cancel(&request.job_id);
            tracing::info!(job_id = %request.job_id, reason = %request.reason, found, "Cancel requested");
            return Ok(Response::new(proto::WorkerCancelJobResponse { found }));
        }
        Err(Status::unimplemented(format!(
            "CancelJob {}: this worker does not run jobs yet",
            request.get_ref().job_id
        )))
    }

    async fn drain(
        &self,
        _request: Request<proto::DrainRequest>,
    ) -> Result<Response<proto::DrainResponse>, Status> {
        self.draining.send_replace(true);
        let running = self.farm.as_ref().map_or(0, FarmHandle::drain);
        tracing::info!(worker_id = %self.config.worker_id, running, "Draining: taking no new work");
        Ok(Response::new(proto::DrainResponse {
            capacity: Some(self.capacity_message()),
            running,
        }))
    }
}

/// Serves `WorkerControl` with health and reflection on `listener` until `shutdown`.
pub async fn serve(
    control: ControlService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> WorkerResult<()> {
    use pyti::proto::worker_control_server::{WorkerControlServer, SERVICE_NAME};
    let streams = control.shutdown.clone();
    let shutdown = async move {
        shutdown.await;
        streams.cancel();
    };
    let router = tonic::transport::Server::builder().add_service(WorkerControlServer::new(control));
    let (router, _health) = pyti::grpc::add_introspection(router, &[SERVICE_NAME]).await?;
    pyti::grpc::serve(router, listener, shutdown).await?;
    Ok(())
}
