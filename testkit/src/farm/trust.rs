//! The identities of a farm in mutual-TLS mode: a farm CA in the farm's directory that
//! issues the master's, the workers' and clients' certificates, and clients that call
//! with a certificate, a token or nothing.

use std::path::{Path, PathBuf};

use pyti::trust::ca::{self, Issue, Subject};
use pyti::trust::{Role, TlsFiles};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A farm CA made by `pyti ca init` (the library behind it) in a directory.
#[derive(Debug, Clone)]
pub struct FarmCa {
    dir: PathBuf,
}

impl FarmCa {
    /// A new CA in `dir`.
    pub fn init(dir: &Path) -> Self {
        ca::init(dir, 30).expect("the farm CA is made");
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The CA made in `dir` before.
    pub fn open(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Where the CA keeps its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The identity of `subject`, issued now or earlier.
    fn issue(&self, subject: Subject) -> TlsFiles {
        let stem = subject.file_stem();
        let (cert, key) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        if cert.exists() {
            return TlsFiles {
                cert,
                key,
                ca: self.ca(),
            };
        }
        let (cert, key) = ca::issue(
            &self.dir,
            &Issue {
                subject,
                dns: vec!["localhost".to_owned()],
                ips: vec![[127, 0, 0, 1].into()],
                days: 1,
            },
        )
        .expect("the farm CA issues a certificate");
        TlsFiles {
            cert,
            key,
            ca: self.ca(),
        }
    }

    /// The master's identity.
    pub fn master(&self) -> TlsFiles {
        self.issue(Subject::Master)
    }

    /// Worker `name`'s identity.
    pub fn worker(&self, name: &str) -> TlsFiles {
        self.issue(Subject::Worker(name.to_owned()))
    }

    /// Client `name`'s identity with `role`.
    pub fn client(&self, name: &str, role: Role) -> TlsFiles {
        self.issue(Subject::Client(name.to_owned(), role))
    }
}

/// How a test client calls the master.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Plaintext, as on an open farm.
    Plain,
    /// TLS that trusts the farm CA, but no certificate and no token.
    Nothing(PathBuf),
    /// A farm certificate.
    Certificate(TlsFiles),
    /// TLS without a certificate, and a bearer token.
    Token(PathBuf, String),
}

pub use pyti::trust::token::Bearer;

pub type Authed = InterceptedService<Channel, Bearer>;

/// A channel to `address` (`http://...`, made `https://` when TLS) as `credentials`
/// say, checking the server's certificate names `domain`.
pub async fn connect(address: &str, credentials: &Credentials, domain: &str) -> Authed {
    use pyti::trust::tls::{client_config, endpoint};
    let (tls, bearer) = match credentials {
        Credentials::Plain => (None, Bearer::default()),
        Credentials::Nothing(ca) => (Some(client_config(ca, None, domain)), Bearer::default()),
        Credentials::Certificate(files) => (Some(files.client_config(domain)), Bearer::default()),
        Credentials::Token(ca, token) => (
            Some(client_config(ca, None, domain)),
            Bearer::new(Some(token)).expect("a token is ASCII"),
        ),
    };
    let tls = tls.transpose().expect("the client's TLS files");
    let channel = endpoint(address, tls)
        .expect("a URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    InterceptedService::new(channel, bearer)
}
