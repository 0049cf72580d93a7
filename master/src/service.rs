//! The master's gRPC services: thin translations between the protocol and [`Farm`].

use std::pin::Pin;
use std::sync::Arc;

use pyti::proto::{self, job_service_server::JobService, worker_registry_server::WorkerRegistry};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::farm::Farm;

/// `JobService` and `WorkerRegistry` of the master (cheap to clone).
#[derive(Clone)]
pub struct MasterService {
    farm: Arc<Farm>,
}

impl MasterService {
    /// The services over `farm`.
    pub fn new(farm: Arc<Farm>) -> Self {
        Self { farm }
    }
}

type JobEvents = Pin<Box<dyn Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for MasterService {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        let job = self.farm.submit(request.into_inner()).await?;
        Ok(Response::new(proto::SubmitJobResponse {
            job: Some(convert::job(&job)),
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let job = self.farm.job(&request.get_ref().job_id).await?;
        Ok(Response::new(convert::job(&job)))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let (jobs, next_page_token) = self.farm.list(request.get_ref()).await?;
        Ok(Response::new(proto::ListJobsResponse {
            jobs: jobs.iter().map(convert::job).collect(),
            next_page_token,
        }))
    }

    type WatchJobStream = JobEvents;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let events = self.farm.watch(&request.get_ref().job_id).await?;
        let stream =
            ReceiverStream::new(events).map(|event| Ok(proto::JobEvent { event: Some(event) }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let request = request.into_inner();
        let job = self.farm.cancel(&request.job_id, &request.reason).await?;
        Ok(Response::new(proto::CancelJobResponse {
            job: Some(convert::job(&job)),
        }))
    }

    async fn get_results(
        &self,
        request: Request<proto::GetResultsRequest>,
    ) -> Result<Response<proto::JobResults>, Status> {
        Ok(Response::new(
            self.farm.results(&request.get_ref().job_id).await?,
        ))
    }
}

#[tonic::async_trait]
impl WorkerRegistry for MasterService {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        Ok(Response::new(
            self.farm.register(request.into_inner()).await?,
        ))
    }

    async fn start_job(
        &self,
        request: Request<proto::StartJobRequest>,
    ) -> Result<Response<proto::StartJobResponse>, Status> {
        Ok(Response::new(self.farm.start_job(request.get_ref()).await?))
    }

    async fn renew_lease(
        &self,
        request: Request<proto::RenewLeaseRequest>,
    ) -> Result<Response<proto::RenewLeaseResponse>, Status> {
        Ok(Response::new(
            self.farm.renew_lease(request.get_ref()).await?,
        ))
    }

    async fn report_results(
        &self,
        request: Request<Streaming<proto::ResultsMessage>>,
    ) -> Result<Response<proto::ResultsAck>, Status> {
        Ok(Response::new(
            self.farm.report_results(request.into_inner()).await?,
        ))
    }

    async fn list_workers(
        &self,
        _request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        Ok(Response::new(proto::ListWorkersResponse {
            workers: self.farm.list_workers(),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<proto::DrainWorkerRequest>,
    ) -> Result<Response<proto::DrainWorkerResponse>, Status> {
        Ok(Response::new(
            self.farm.drain_worker(&request.get_ref().worker_id).await?,
        ))
    }
}

/// Serves `JobService` and `WorkerRegistry` with health and reflection on `listener`
/// until `shutdown`.
pub async fn serve(
    service: MasterService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    use pyti::proto::job_service_server::{self, JobServiceServer};
    use pyti::proto::worker_registry_server::{self, WorkerRegistryServer};
    let router = tonic::transport::Server::builder()
        .add_service(JobServiceServer::new(service.clone()))
        .add_service(WorkerRegistryServer::new(service));
    let (router, _health) = pyti::grpc::add_introspection(
        router,
        &[
            job_service_server::SERVICE_NAME,
            worker_registry_server::SERVICE_NAME,
        ],
    )
    .await?;
    pyti::grpc::serve(router, listener, shutdown).await?;
    Ok(())
}

/// Runs a whole master: opens the store, starts the farm and serves on `listener`
/// until `shutdown`, then stops the farm's tasks.
pub async fn run(
    settings: crate::farm::Settings,
    database: &str,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    let store = crate::store::open(database).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let farm = Farm::start(settings, store, stop.clone()).await?;
    let served = serve(MasterService::new(Arc::clone(&farm)), listener, async {
        shutdown.await;
        stop.cancel();
    })
    .await;
    stop.cancel();
    farm.stopped().await;
    served
}
