//! How master and workers reach RabbitMQ: `amqp://` as it is, or `amqps://` over
//! rustls with the build's one crypto provider (ring), trusting only the configured CA
//! and, where configured, presenting a client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::tcp::{RustlsConnector, TcpStream};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The files of a TLS connection to RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpTls {
    /// PEM certificate of the CA that signed RabbitMQ's certificate (only it is trusted).
    pub ca: PathBuf,
    /// PEM client certificate and key to present, if RabbitMQ asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, what)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not PEM: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "the {what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certificates)
}

impl AmqpTls {
    /// The rustls settings: only [`AmqpTls::ca`] is trusted; the identity, if any, is
    /// presented. Errors name the file that is wrong.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates(&self.ca, "RabbitMQ CA certificate")? {
            roots.add(certificate).map_err(|e| {
                format!(
                    "the RabbitMQ CA certificate {} is unusable: {e}",
                    self.ca.display()
                )
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for RabbitMQ: {e}"))?
        .with_root_certificates(roots);
        let Some((cert, key)) = &self.identity else {
            return Ok(builder.with_no_client_auth());
        };
        let chain = certificates(cert, "RabbitMQ client certificate")?;
        let key_pem = read(key, "RabbitMQ client key")?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "the RabbitMQ client key {} holds no PEM private key: {e}",
                key.display()
            )
        })?;
        builder.with_client_auth_cert(chain, key_der).map_err(|e| {
            format!(
                "the RabbitMQ client certificate {} and key {} do not go together: {e}",
                cert.display(),
                key.display()
            )
        })
    }
}

/// A RabbitMQ URL and, for `amqps://`, its TLS settings, read once (cheap to clone).
#[derive(Clone)]
pub struct Amqp {
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp")
            .field("url", &crate::redact::url(&self.url))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Amqp {
    /// `url` with `tls`: an `amqps://` URL needs it, an `amqp://` URL must not have it
    /// (a CA configured for a plaintext connection would protect nothing).
    pub fn new(url: &str, tls: Option<&AmqpTls>) -> Result<Self, String> {
        let secure = url.starts_with("amqps://");
        let tls = match (secure, tls) {
            (true, Some(tls)) => Some(Arc::new(tls.client_config()?)),
            (true, None) => {
                return Err(format!(
                    "{} is amqps:// but no CA is configured to check RabbitMQ's certificate: \
                     set [tls] amqp_ca (or [tls] ca)",
                    crate::redact::url(url)
                ))
            }
            (false, Some(_)) => {
                return Err(format!(
                "[tls] amqp_ca, amqp_cert and amqp_key are for an amqps:// amqp_url, but it is {}",
                crate::redact::url(url)
            ))
            }
            (false, None) => None,
        };
        Ok(Self {
            url: url.to_owned(),
            tls,
        })
    }

    /// The URL (with its password: redact it before showing it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A new connection.
    pub async fn connect(&self, properties: ConnectionProperties) -> lapin::Result<Connection> {
        let Some(config) = &self.tls else {
            return Connection::connect(&self.url, properties).await;
        };
        let uri: AMQPUri = self.url.parse().map_err(|e: String| {
            lapin::Error::IOError(Arc::new(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                e,
            )))
        })?;
        let connector = RustlsConnector::from(Arc::clone(config));
        // What lapin does for amqps://, with our TLS settings instead of its own.
        #[expect(
            clippy::result_large_err,
            reason = "lapin's connector must return tcp-stream's HandshakeResult"
        )]
        let connect = move |uri: &AMQPUri| {
            let address = format!("{}:{}", uri.authority.host, uri.authority.port);
            let stream = match uri.query.connection_timeout {
                Some(ms) => TcpStream::connect_timeout(address, Duration::from_millis(ms)),
                None => TcpStream::connect(address),
            }?;
            let stream = stream.into_rustls(&connector, &uri.authority.host)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        };
        Connection::connector(uri, Box::new(connect), properties).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::ca::{self, Issue, Subject};

    #[test]
    fn tls_settings_come_from_the_farm_ca_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        ca::init(dir.path(), 1).unwrap();
        let (cert, key) = ca::issue(
            dir.path(),
            &Issue {
                subject: Subject::Master,
                dns: vec![],
                ips: vec![],
                days: 1,
            },
        )
        .unwrap();
        let tls = AmqpTls {
            ca: dir.path().join("ca.pem"),
            identity: Some((cert.clone(), key.clone())),
        };
        let url = "amqps://guest:secret@127.0.0.1:5671/%2f";
        let amqp = Amqp::new(url, Some(&tls)).unwrap();
        assert!(amqp.is_tls());
        assert!(!format!("{amqp:?}").contains("secret"));

        let missing = AmqpTls {
            ca: dir.path().join("nope.pem"),
            ..tls.clone()
        };
        let error = Amqp::new(url, Some(&missing)).unwrap_err();
        assert!(error.contains("nope.pem"), "{error}");
        let swapped = AmqpTls {
            identity: Some((key.clone(), key.clone())),
            ..tls.clone()
        };
        let error = Amqp::new(url, Some(&swapped)).unwrap_err();
        assert!(
            error.contains("client certificate") && error.contains(&*key.to_string_lossy()),
            "{error}"
        );
        let keyless = AmqpTls {
            identity: Some((cert.clone(), cert.clone())),
            ..tls.clone()
        };
        let error = Amqp::new(url, Some(&keyless)).unwrap_err();
        assert!(error.contains("client key"), "{error}");

        let error = Amqp::new(url, None).unwrap_err();
        assert!(
            error.contains("amqp_ca") && !error.contains("secret"),
            "{error}"
        );
        let error = Amqp::new("amqp://127.0.0.1:5672/%2f", Some(&tls)).unwrap_err();
        assert!(error.contains("amqps://"), "{error}");
        assert!(!Amqp::new("amqp://127.0.0.1:5672/%2f", None)
            .unwrap()
            .is_tls());
    }
}
