//! TLS files from configurations, made into tonic's server and client settings.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A process's farm identity: its certificate and key (from `pyti ca issue`) and the
/// farm CA it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM certificate of the farm CA.
    pub ca: PathBuf,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// The TLS settings of a client that trusts the CA in `ca` and, given `identity`
/// (certificate and key), presents it; it checks the server's certificate names
/// `domain` (e.g. `master.pyti`).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    domain: &str,
) -> Result<ClientTlsConfig, String> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca, "farm CA certificate")?))
        .domain_name(domain);
    if let Some((cert, key)) = identity {
        config = config.identity(Identity::from_pem(
            read(cert, "certificate")?,
            read(key, "private key")?,
        ));
    }
    Ok(config)
}

impl TlsFiles {
    /// Server settings: this identity; clients verified against the farm CA. With
    /// `client_certificate_optional` a client may come without a certificate (and
    /// then needs a token for anything but health).
    pub fn server_config(
        &self,
        client_certificate_optional: bool,
    ) -> Result<ServerTlsConfig, String> {
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read(&self.cert, "certificate")?,
                read(&self.key, "private key")?,
            ))
            .client_ca_root(Certificate::from_pem(read(
                &self.ca,
                "farm CA certificate",
            )?))
            .client_auth_optional(client_certificate_optional))
    }

    /// Client settings presenting this identity to a server whose certificate must name
    /// `domain`.
    pub fn client_config(&self, domain: &str) -> Result<ClientTlsConfig, String> {
        client_config(&self.ca, Some((&self.cert, &self.key)), domain)
    }
}

/// An endpoint for `address`; with `tls`, over TLS (an `http://` address is taken as
/// `https://`, so configurations need not change when TLS is turned on).
pub fn endpoint(address: &str, tls: Option<ClientTlsConfig>) -> Result<Endpoint, String> {
    let address = match (&tls, address.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => address.to_owned(),
    };
    let endpoint = Endpoint::from_shared(address.clone())
        .map_err(|e| format!("{address:?} is not a URL: {e}"))?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS for {address}: {e}")),
        None => Ok(endpoint),
    }
}
