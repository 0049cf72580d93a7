//! The master's gRPC services: protocol messages in, plain types to [`Master`]'s
//! parts, protocol messages out (through `convert`); errors become statuses in
//! `error`.

use std::pin::Pin;
use std::sync::Arc;

use pyti::proto::{self, job_service_server::JobService, worker_registry_server::WorkerRegistry};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::master::Master;

/// `JobService` and `WorkerRegistry` of the master (cheap to clone).
#[derive(Clone)]
pub struct MasterService {
    master: Arc<Master>,
}

impl MasterService {
    /// The services over `master`.
    pub fn new(master: Arc<Master>) -> Self {
        Self { master }
    }
}

type JobEvents = Pin<Box<dyn Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for MasterService {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        let submission = convert::submission(request.into_inner())?;
        let job = self.master.jobs().submit(submission).await?;
        Ok(Response::new(proto::SubmitJobResponse {
            job: Some(convert::job(&job)),
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::Job>, Status> {
        let job = self.master.jobs().job(&request.get_ref().job_id).await?;
        Ok(Response::new(convert::job(&job)))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let query = convert::list_query(request.get_ref())?;
        let page = self.master.jobs().list(&query).await?;
        Ok(Response::new(convert::job_page(&page)))
    }

    type WatchJobStream = JobEvents;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let events = self.master.jobs().watch(&request.get_ref().job_id).await?;
        let stream = ReceiverStream::new(events).map(|event| Ok(convert::event(&event)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let request = request.into_inner();
        let job = self
            .master
            .jobs()
            .cancel(&request.job_id, &request.reason)
            .await?;
        Ok(Response::new(proto::CancelJobResponse {
            job: Some(convert::job(&job)),
        }))
    }

    async fn get_results(
        &self,
        request: Request<proto::GetResultsRequest>,
    ) -> Result<Response<proto::JobResults>, Status> {
        let results = self
            .master
            .jobs()
            .results(&request.get_ref().job_id)
            .await?;
        Ok(Response::new(convert::results(&results)))
    }
}

#[tonic::async_trait]
impl WorkerRegistry for MasterService {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterResponse>, Status> {
        let registration = convert::registration(request.into_inner());
        let registered = self.master.workers().register(registration).await?;
        Ok(Response::new(convert::registered(registered)))
    }

    async fn start_job(
        &self,
        request: Request<proto::StartJobRequest>,
    ) -> Result<Response<proto::StartJobResponse>, Status> {
        let key = convert::start_key(request.get_ref());
        let start = self.master.jobs().start(&key).await?;
        Ok(Response::new(convert::start_response(start)))
    }

    async fn renew_lease(
        &self,
        request: Request<proto::RenewLeaseRequest>,
    ) -> Result<Response<proto::RenewLeaseResponse>, Status> {
        let key = convert::renew_key(request.get_ref());
        let renewal = self.master.jobs().renew(&key).await?;
        Ok(Response::new(convert::renew_response(&renewal)))
    }

    async fn report_results(
        &self,
        request: Request<Streaming<proto::ResultsMessage>>,
    ) -> Result<Response<proto::ResultsAck>, Status> {
        let report = convert::gather_results(request.into_inner()).await?;
        let (job_id, attempt) = (report.job_id.clone(), report.attempt);
        let stored = self.master.jobs().record_results(report).await?;
        Ok(Response::new(convert::results_ack(job_id, attempt, stored)))
    }

    async fn list_workers(
        &self,
        _request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        let workers = self.master.workers().list();
        Ok(Response::new(proto::ListWorkersResponse {
            workers: workers.iter().map(convert::worker_info).collect(),
        }))
    }

    async fn drain_worker(
        &self,
        request: Request<proto::DrainWorkerRequest>,
    ) -> Result<Response<proto::DrainWorkerResponse>, Status> {
        let capacity = self
            .master
            .workers()
            .drain(&request.get_ref().worker_id)
            .await?;
        Ok(Response::new(proto::DrainWorkerResponse {
            capacity: capacity.as_ref().map(convert::capacity_message),
        }))
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

/// Runs a whole master: opens the store, starts the master and serves on `listener`
/// until `shutdown`, then stops the master's tasks.
pub async fn run(
    settings: crate::master::Settings,
    database: &str,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    let store = crate::store::open(database).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let master = Master::start(settings, store, stop.clone()).await?;
    let served = serve(MasterService::new(Arc::clone(&master)), listener, async {
        shutdown.await;
        stop.cancel();
    })
    .await;
    stop.cancel();
    master.stopped().await;
    served
}
