//! What every PyTI gRPC server offers besides its own services: `grpc.health.v1.Health`
//! and server reflection (v1 and v1alpha, since grpcurl and other tools speak either),
//! so `grpcurl -plaintext HOST:PORT list` works with no proto files at hand.

use std::future::Future;
use std::net::SocketAddr;

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::Router;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::trust::{AuthLayer, Authenticator};

/// Every PyTI server's stack: the auth layer in front of the routes.
pub type Layered = tower_layer::Stack<AuthLayer, tower_layer::Identity>;

/// The largest message a PyTI server or client decodes. Results come in chunks far
/// smaller; this only stops one message from taking the memory of many.
pub const MAX_DECODE_BYTES: usize = 4 * 1024 * 1024;
/// The largest message a PyTI server or client encodes (and a client decodes): a whole
/// `JobResults`, whose results dict the guest caps at 8 MiB.
pub const MAX_ENCODE_BYTES: usize = 16 * 1024 * 1024;
/// Calls one connection may run at once.
pub const STREAMS_PER_CONNECTION: u32 = 128;
/// How long a unary call (or the upload of a client stream) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How a server lets callers in: TLS (when configured) and who may call what.
#[derive(Clone)]
pub struct Security {
    /// The server's TLS settings; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// How principals are established.
    pub auth: Authenticator,
}

impl Security {
    /// No TLS, everyone allowed: a server on loopback with nothing configured.
    pub fn open() -> Self {
        Self {
            tls: None,
            auth: Authenticator::open(),
        }
    }
}

/// A server builder with `security` and the limits every PyTI server has.
pub fn server(security: &Security) -> Result<Server<Layered>, tonic::transport::Error> {
    let mut builder = Server::builder()
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(STREAMS_PER_CONNECTION as usize)
        .timeout(REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(tls.clone())?;
    }
    Ok(builder.layer(AuthLayer::new(security.auth.clone())))
}

/// Adds health and reflection to `router`; each name in `serving` is reported as
/// SERVING (as is the empty name, the whole server).
pub async fn add_introspection(
    router: Router<Layered>,
    serving: &[&str],
) -> Result<(Router<Layered>, HealthReporter), tonic_reflection::server::Error> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for name in serving {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    // Only what this server really serves is listed: the descriptor set also holds the
    // services of the other processes.
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            );
        for name in serving.iter().chain(&[
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]) {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = builder().build_v1()?;
    let reflection_v1alpha = builder().build_v1alpha()?;
    let router = router
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, reporter))
}

/// Binds `addr` (port 0 picks a free port) and says where it listens.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight calls end.
pub async fn serve(
    router: Router<Layered>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let which = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "Shutting down");
}

/// A `prost_types::Timestamp` for now.
pub fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}
