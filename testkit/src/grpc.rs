//! Checks of a gRPC server as clients without our protos see it: the master and the
//! worker both serve health and reflection, and their tests ask the same questions.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1;

/// A channel to `address` (`http://host:port`).
pub async fn channel(address: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(address.to_owned())
        .expect("a URL")
        .connect()
        .await
        .expect("the server accepts connections")
}

/// Asserts that health says SERVING for each of `services` (`""` is the server).
pub async fn assert_serving(channel: &Channel, services: &[&str]) {
    let mut health = HealthClient::new(channel.clone());
    for service in services {
        let status = health
            .check(HealthCheckRequest {
                service: (*service).into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health check of {service:?}: {e}"))
            .into_inner()
            .status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }
}

/// Waits until the server at `address` answers health checks with SERVING, or panics
/// after `limit`. A port that accepts connections is not yet a server that serves (nor
/// one that handles signals): the kernel accepts as soon as the socket listens.
pub async fn wait_serving(address: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if serving(address).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{address} did not serve within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serving(address: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(address.to_owned()) else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let request = HealthCheckRequest {
        service: String::new(),
    };
    HealthClient::new(channel)
        .check(request)
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

/// The services reflection (v1) lists, sorted.
pub async fn reflected_services(channel: &Channel) -> Vec<String> {
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = answers
        .next()
        .await
        .expect("one answer")
        .expect("a good answer")
        .message_response
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}
