//! Ports for servers a test starts as processes.

use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding 127.0.0.1:0")
        .local_addr()
        .expect("the bound address")
        .port()
}

/// Blocks until something accepts connections on 127.0.0.1:`port`, or panics saying
/// that `what` did not start listening within `limit`.
pub fn wait_listening(port: u16, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on port {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
