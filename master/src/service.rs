//! The master's gRPC services. Job storage, queueing and scheduling are not built
//! yet, so every call says so with UNIMPLEMENTED rather than pretending to work.

use std::pin::Pin;

use pyti::proto::{self, job_service_server::JobService, worker_registry_server::WorkerRegistry};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// `JobService` and `WorkerRegistry` of the master.
#[derive(Debug, Clone, Default)]
pub struct MasterService;

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc}: this master does not store or schedule jobs yet; use pyti-vm-run to test a distribution on one machine"
    ))
}

type JobEvents = Pin<Box<dyn Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for MasterService {
    async fn submit_job(
        &self,
        _r: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        Err(not_yet("SubmitJob"))
    }
    async fn get_job(
        &self,
        _r: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        Err(not_yet("GetJob"))
    }
    async fn list_jobs(
        &self,
        _r: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        Err(not_yet("ListJobs"))
    }
    type WatchJobStream = JobEvents;
    async fn watch_job(
        &self,
        _r: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        Err(not_yet("WatchJob"))
    }
    async fn cancel_job(
        &self,
        _r: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        Err(not_yet("CancelJob"))
    }
    async fn get_results(
        &self,
        _r: Request<proto::GetResultsRequest>,
    ) -> Result<Response<proto::JobResults>, Status> {
        Err(not_yet("GetResults"))
    }
}

#[tonic::async_trait]
impl WorkerRegistry for MasterService {
    async fn register(
        &self,
        _r: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        Err(not_yet("Register"))
    }
    async fn start_job(
        &self,
        _r: Request<proto::StartJobRequest>,
    ) -> Result<Response<proto::StartJobResponse>, Status> {
        Err(not_yet("StartJob"))
    }
    async fn renew_lease(
        &self,
        _r: Request<proto::RenewLeaseRequest>,
    ) -> Result<Response<proto::RenewLeaseResponse>, Status> {
        Err(not_yet("RenewLease"))
    }
    async fn report_results(
        &self,
        _r: Request<Streaming<proto::ResultsMessage>>,
    ) -> Result<Response<proto::ResultsAck>, Status> {
        Err(not_yet("ReportResults"))
    }
    async fn list_workers(
        &self,
        _r: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        Err(not_yet("ListWorkers"))
    }
    async fn drain_worker(
        &self,
        _r: Request<proto::DrainWorkerRequest>,
    ) -> Result<Response<proto::DrainWorkerResponse>, Status> {
        Err(not_yet("DrainWorker"))
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
