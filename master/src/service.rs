//! The master's gRPC services: protocol messages in, plain types to [`Master`]'s
//! parts, protocol messages out (through `convert`); errors become statuses in
//! `error`.

use std::pin::Pin;
use std::sync::Arc;

use pyti::proto::{
    self, job_service_server::JobService, token_service_server::TokenService,
    worker_registry_server::WorkerRegistry,
};
use pyti::trust::{Authenticator, Principal};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::error::Error;
use crate::jobs::LeaseKey;
use crate::master::Master;

/// Who the auth layer says is calling (anonymous if no layer ran).
fn principal<T>(request: &Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Anonymous)
}

/// The worker a call comes from: the one its certificate names (the request's field
/// must agree), or on an open server the request's field.
fn caller_worker<T>(request: &Request<T>, claimed: &str) -> Result<String, Error> {
    match principal(request).worker_name().map_err(Error::Denied)? {
        None => Ok(claimed.to_owned()),
        Some(name) if claimed.is_empty() || claimed == name => Ok(name.to_owned()),
        Some(name) => Err(Error::Denied(format!(
            "the certificate of worker {name} cannot speak for worker {claimed}"
        ))),
    }
}

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
        let caller = principal(&request);
        let mut submission = convert::submission(request.into_inner())?;
        submission.submitted_by = caller.owner();
        if !submission.idempotency_key.is_empty() {
            // Keys are the caller's: another caller's key never answers with its job.
            submission.idempotency_key = format!("{caller}\n{}", submission.idempotency_key);
        }
        let admin = matches!(
            caller,
            Principal::Open
                | Principal::Client {
                    role: pyti::trust::Role::Admin,
                    ..
                }
        );
        let platform = &submission.spec.platform_identifier;
        // Queueing anyway declares a queue for the platform: for a platform no worker
        // ever offered, only an admin may make one.
        if submission.queue_without_capacity
            && !admin
            && !self.master.workers().knows_platform(platform)
        {
            return Err(Error::Denied(format!(
                "no registered worker offers platform {platform}; only an admin may queue a job for it anyway"
            ))
            .into());
        }
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
        let caller = principal(&request);
        let request = request.into_inner();
        // Who submitted a job never changes, so checking before cancelling is enough.
        let job = self.master.jobs().job(&request.job_id).await?;
        if !caller.may_cancel(&job.submitted_by) {
            let by = if job.submitted_by.is_empty() {
                "before submitters were recorded".to_owned()
            } else {
                format!("by {}", job.submitted_by)
            };
            return Err(Error::Denied(format!(
                "{caller} may cancel only the jobs it submitted; job {} was submitted {by}: \
                 ask its submitter or an admin to cancel it",
                job.job_id
            ))
            .into());
        }
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
        let worker_id = caller_worker(&request, &request.get_ref().worker_id)?;
        let mut registration = convert::registration(request.into_inner());
        registration.worker_id = worker_id;
        let registered = self.master.workers().register(registration).await?;
        Ok(Response::new(convert::registered(registered)))
    }

    async fn start_job(
        &self,
        request: Request<proto::StartJobRequest>,
    ) -> Result<Response<proto::StartJobResponse>, Status> {
        let mut key = convert::start_key(request.get_ref());
        key.worker_id = caller_worker(&request, &key.worker_id)?;
        self.master.jobs().check_holder(&key, true).await?;
        let start = self.master.jobs().start(&key).await?;
        Ok(Response::new(convert::start_response(start)))
    }

    async fn renew_lease(
        &self,
        request: Request<proto::RenewLeaseRequest>,
    ) -> Result<Response<proto::RenewLeaseResponse>, Status> {
        let mut key = convert::renew_key(request.get_ref());
        key.worker_id = caller_worker(&request, &key.worker_id)?;
        self.master.jobs().check_holder(&key, false).await?;
        let renewal = self.master.jobs().renew(&key).await?;
        Ok(Response::new(convert::renew_response(&renewal)))
    }

    async fn report_results(
        &self,
        request: Request<Streaming<proto::ResultsMessage>>,
    ) -> Result<Response<proto::ResultsAck>, Status> {
        let claimed = principal(&request);
        let mut stream = request.into_inner();
        // Whose results these are is settled by the header, before anything else is read.
        let header = convert::results_header(&mut stream).await?;
        let worker_id = match claimed.worker_name().map_err(Error::Denied)? {
            Some(name) if header.worker_id != name => {
                return Err(Error::Denied(format!(
                    "the certificate of worker {name} cannot report for worker {}",
                    header.worker_id
                ))
                .into())
            }
            _ => header.worker_id.clone(),
        };
        let key = LeaseKey {
            worker_id,
            job_id: header.job_id.clone(),
            attempt: header.attempt,
            lease_id: header.lease_id.clone(),
        };
        self.master.jobs().check_holder(&key, false).await?;
        let report = convert::gather_results(header, stream).await?;
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

#[tonic::async_trait]
impl TokenService for MasterService {
    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let request = request.into_inner();
        let now = self.master.clock().now_ms();
        let (secret, row) = crate::tokens::create(
            self.master.store().as_ref(),
            &request.name,
            &request.role,
            request.days,
            now,
        )
        .await?;
        tracing::info!(name = %row.name, role = %row.role, "Token created");
        Ok(Response::new(proto::CreateTokenResponse {
            token: secret,
            info: Some(convert::token_info(&row)),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let name = &request.get_ref().name;
        let now = self.master.clock().now_ms();
        let revoked = self
            .master
            .store()
            .revoke_token(name, now)
            .await
            .map_err(Error::from)?;
        tracing::info!(%name, revoked, "Token revoked");
        Ok(Response::new(proto::RevokeTokenResponse { revoked }))
    }

    async fn list_tokens(
        &self,
        _request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        let tokens = self.master.store().tokens().await.map_err(Error::from)?;
        Ok(Response::new(proto::ListTokensResponse {
            tokens: tokens.iter().map(convert::token_info).collect(),
        }))
    }
}

/// How the master lets callers in: with `tls`, mutual TLS against the farm CA and
/// bearer tokens from the store; without, open (the caller checked the address
/// first, see [`pyti::trust::check_listen`]).
pub fn security(
    tls: Option<&pyti::trust::TlsFiles>,
    master: &Master,
) -> crate::Result<pyti::grpc::Security> {
    let Some(files) = tls else {
        return Ok(pyti::grpc::Security::open());
    };
    let lookup = crate::tokens::lookup(Arc::clone(master.store()), master.clock().clone());
    Ok(pyti::grpc::Security {
        // A client may come with a token instead of a certificate.
        tls: Some(files.server_config(true).map_err(Error::Trust)?),
        auth: Authenticator::enforcing(Some(lookup)),
    })
}

/// Serves `JobService`, `WorkerRegistry` and `TokenService` with health and reflection
/// on `listener`, as `security` says, until `shutdown`.
pub async fn serve(
    service: MasterService,
    listener: tokio::net::TcpListener,
    security: &pyti::grpc::Security,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::Result<()> {
    use pyti::grpc::{MAX_DECODE_BYTES, MAX_ENCODE_BYTES};
    use pyti::proto::job_service_server::{self, JobServiceServer};
    use pyti::proto::token_service_server::{self, TokenServiceServer};
    use pyti::proto::worker_registry_server::{self, WorkerRegistryServer};
    let router = pyti::grpc::server(security)?
        .add_service(
            JobServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_DECODE_BYTES)
                .max_encoding_message_size(MAX_ENCODE_BYTES),
        )
        .add_service(
            WorkerRegistryServer::new(service.clone())
                .max_decoding_message_size(MAX_DECODE_BYTES)
                .max_encoding_message_size(MAX_ENCODE_BYTES),
        )
        .add_service(
            TokenServiceServer::new(service)
                .max_decoding_message_size(MAX_DECODE_BYTES)
                .max_encoding_message_size(MAX_ENCODE_BYTES),
        );
    let (router, _health) = pyti::grpc::add_introspection(
        router,
        &[
            job_service_server::SERVICE_NAME,
            worker_registry_server::SERVICE_NAME,
            token_service_server::SERVICE_NAME,
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
    let tls = settings.tls.clone();
    let master = Master::start(settings, store, stop.clone()).await?;
    let security = match security(tls.as_ref(), &master) {
        Ok(security) => security,
        Err(error) => {
            stop.cancel();
            master.stopped().await;
            return Err(error);
        }
    };
    let served = serve(
        MasterService::new(Arc::clone(&master)),
        listener,
        &security,
        async {
            shutdown.await;
            stop.cancel();
        },
    )
    .await;
    stop.cancel();
    master.stopped().await;
    served
}
