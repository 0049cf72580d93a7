//! Bearer tokens: `pyti_<id>_<secret>`. Only the SHA-256 of the secret is stored; a
//! presented token is found by its id and its secret compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A token as its holder sees it, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Public id (what is stored, listed and revoked).
    pub id: String,
    /// The whole token to give the client.
    pub secret: String,
    /// SHA-256 of the secret part, hex: what the store keeps.
    pub hash: String,
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

/// SHA-256 of `secret`, hex.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random token.
pub fn generate() -> NewToken {
    let id = random_hex(8);
    let secret = random_hex(32);
    NewToken {
        hash: hash(&secret),
        secret: format!("pyti_{id}_{secret}"),
        id,
    }
}

/// The id and secret of a presented token, if it has the shape.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("pyti_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Whether `secret` hashes to `stored_hash`, compared in constant time.
pub fn matches(secret: &str, stored_hash: &str) -> bool {
    hash(secret).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_its_hash_only() {
        let token = generate();
        let (id, secret) = split(&token.secret).unwrap();
        assert_eq!(id, token.id);
        assert!(matches(secret, &token.hash));
        assert!(!matches("guess", &token.hash));
        assert_ne!(generate().secret, token.secret);
        assert!(split("nope").is_none());
        assert!(!token.hash.contains(secret));
    }
}

/// The client side of a token: adds `authorization: Bearer <token>` to every call when
/// there is one (the CLI and the test farms share it).
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// The interceptor for `token`, or an error when it is not ASCII.
    pub fn new(token: Option<&str>) -> Result<Self, tonic::metadata::errors::InvalidMetadataValue> {
        token
            .map(|token| format!("Bearer {}", token.trim()).parse())
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
