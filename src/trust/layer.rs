//! The one tower layer that decides every call: it reads the method from the path,
//! the principal from the peer certificate or the bearer token, checks [`METHODS`]
//! and either refuses with a status or passes the request on with the principal in its
//! extensions (handlers read it there, e.g. the worker a certificate names).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{allowed, principal_from_names, Principal, Role};

/// Looks up a bearer token: its name and role, or `None` when it is unknown, expired or
/// revoked.
pub type TokenLookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<(String, Role)>> + Send>> + Send + Sync,
>;

/// How a server establishes principals.
#[derive(Clone)]
pub struct Authenticator {
    open: bool,
    tokens: Option<TokenLookup>,
}

impl Authenticator {
    /// Everyone may do everything (loopback without TLS, or an explicit insecure flag).
    pub fn open() -> Self {
        Self {
            open: true,
            tokens: None,
        }
    }

    /// Principals from peer certificates (checked by TLS against the farm CA) and,
    /// with `tokens`, bearer tokens.
    pub fn enforcing(tokens: Option<TokenLookup>) -> Self {
        Self {
            open: false,
            tokens,
        }
    }

    /// Whether it lets everyone in.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The principal of a request with these peer certificates and `authorization`
    /// header value.
    pub async fn principal(
        &self,
        certificates: Option<&[rustls_pki_types::CertificateDer<'static>]>,
        authorization: Option<&str>,
    ) -> Principal {
        if self.open {
            return Principal::Open;
        }
        if let Some(leaf) = certificates.and_then(<[_]>::first) {
            if let Ok(cert) = webpki::EndEntityCert::try_from(leaf) {
                let principal = principal_from_names(cert.valid_dns_names());
                if principal != Principal::Anonymous {
                    return principal;
                }
            }
        }
        let token = authorization.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        match (token, &self.tokens) {
            (Some(token), Some(lookup)) => match lookup(token.trim().to_owned()).await {
                Some((name, role)) => Principal::Client { name, role },
                None => Principal::Anonymous,
            },
            _ => Principal::Anonymous,
        }
    }
}

/// The layer for `Server::builder().layer(..)`.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    /// Decides by `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around a server's routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Authenticator,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let certificates = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs);
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let principal = auth
                .principal(
                    certificates.as_deref().map(Vec::as_slice),
                    authorization.as_deref(),
                )
                .await;
            let method = request.uri().path().to_owned();
            if !allowed(&method, &principal) {
                let status = if principal == Principal::Anonymous {
                    tonic::Status::unauthenticated(format!(
                        "{method} needs credentials: a farm certificate (--ca/--cert/--key) or a token (PYTI_TOKEN, `authorization: Bearer ...`)"
                    ))
                } else {
                    tonic::Status::permission_denied(format!("{principal} may not call {method}"))
                };
                tracing::info!(%method, %principal, "Call refused");
                return Ok(status.into_http());
            }
            request.extensions_mut().insert(principal);
            inner.call(request).await
        })
    }
}
