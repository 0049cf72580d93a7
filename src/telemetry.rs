//! Logging for every PyTI binary: `tracing` with `RUST_LOG` filters, human-readable by
//! default and JSON lines when asked (for log shippers on a farm).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `json` selects JSON lines. `RUST_LOG` overrides the
/// default level `info`.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
