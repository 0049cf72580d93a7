//! What every PyTI gRPC server offers besides its own services: `grpc.health.v1.Health`
//! and server reflection (v1 and v1alpha, since grpcurl and other tools speak either),
//! so `grpcurl -plaintext HOST:PORT list` works with no proto files at hand.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Adds health and reflection to `router`; each name in `serving` is reported as
/// SERVING (as is the empty name, the whole server).
pub async fn add_introspection(
    router: Router,
    serving: &[&str],
) -> Result<(Router, HealthReporter), tonic_reflection::server::Error> {
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
    router: Router,
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
