//! `WorkerControl`: the control plane the master and operators use to see what a
//! worker can take (capacity per platform), which VMs it runs, and to cancel or drain.
//!
//! Everything it reports is derived from the slot pool (`stateofvm`), never counted
//! separately, so what the master schedules by is what the worker really has.

use std::collections::BTreeMap;
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
use crate::stateofvm::{SlotInfo, SlotPool, SlotState};

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
    pool: SlotPool,
    draining: Arc<watch::Sender<bool>>,
    /// Ends open WatchCapacity streams, which would otherwise hold a graceful shutdown open.
    shutdown: CancellationToken,
    /// The farm loop, when this worker takes jobs from a master: cancel and drain reach
    /// its running jobs through it.
    farm: Option<FarmHandle>,
}

impl ControlService {
    /// A control plane over `pool`, with platform variants from `config`.
    pub fn new(config: Arc<WorkerConfig>, pool: SlotPool) -> Self {
        let (draining, _) = watch::channel(false);
        Self {
            config,
            pool,
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

    /// True once `Drain` was called: the worker takes no new work.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Capacity as the master sees it: per-state counts of every configured platform's
    /// slots; nothing is ready while draining.
    pub fn capacity_message(&self) -> proto::Capacity {
        capacity_message(&self.config, &self.pool.slots(), self.is_draining())
    }
}

/// Builds the `Capacity` message from the slots (pure, for tests).
pub fn capacity_message(
    config: &WorkerConfig,
    slots: &[SlotInfo],
    draining: bool,
) -> proto::Capacity {
    let mut platforms: BTreeMap<&str, proto::PlatformCapacity> = config
        .platforms
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                proto::PlatformCapacity {
                    platform: p.name.clone(),
                    variants: p.variants.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    for slot in slots {
        let Some(entry) = platforms.get_mut(slot.platform.as_str()) else {
            continue;
        };
        entry.total += 1;
        let counter = match slot.state {
            SlotState::Ready => &mut entry.ready,
            SlotState::Preparing => &mut entry.preparing,
            SlotState::Running => &mut entry.running,
            SlotState::Collecting => &mut entry.collecting,
            SlotState::RollingBack => &mut entry.rolling_back,
            SlotState::Broken => &mut entry.broken,
        };
        *counter += 1;
    }
    if draining {
        platforms.values_mut().for_each(|p| p.ready = 0);
    }
    proto::Capacity {
        worker_id: config.worker_id.clone(),
        platforms: platforms.into_values().collect(),
        draining,
        at: Some(pyti::grpc::now_timestamp()),
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
        Ok(Response::new(self.capacity_message()))
    }

    type WatchCapacityStream = CapacityStream;

    async fn watch_capacity(
        &self,
        _request: Request<proto::WatchCapacityRequest>,
    ) -> Result<Response<Self::WatchCapacityStream>, Status> {
        let service = self.clone();
        let slot_changes = WatchStream::new(self.pool.watch()).map(|_| ());
        // The first item of each watch stream is the current value; skip the drain
        // stream's so a watcher gets one initial message.
        let drain_changes = WatchStream::from_changes(self.draining.subscribe()).map(|_| ());
        let stream = futures_util::StreamExt::take_until(
            slot_changes
                .merge(drain_changes)
                .map(move |()| Ok(service.capacity_message())),
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
            .pool
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
        if let Some(farm) = &self.farm {
            let request = request.get_ref();
            let found = farm.cancel(&request.job_id);
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
        self.draining.send_replace(true);
        let farm_running = self.farm.as_ref().map_or(0, FarmHandle::drain);
        tracing::info!(worker_id = %self.config.worker_id, running = farm_running, "Draining: taking no new work");
        let capacity = self.capacity_message();
        let busy: u32 = capacity
            .platforms
            .iter()
            .map(|p| p.preparing + p.running + p.collecting)
            .sum();
        let running = busy.max(farm_running);
        Ok(Response::new(proto::DrainResponse {
            capacity: Some(capacity),
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
