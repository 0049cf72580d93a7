//! Checks of a gRPC server as clients without our protos see it: the master and the
//! worker both serve health and reflection, and their tests ask the same questions.

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
