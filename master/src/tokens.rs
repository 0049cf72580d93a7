//! Client bearer tokens over the store: made by admins (`pyti token create`), looked
//! up by the auth layer on every call that carries one.

use std::sync::Arc;

use pyti::trust::{token, Role, TokenLookup};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::{Millis, Store, TokenRow};

const DAY_MS: Millis = 86_400_000;

/// Makes a token named `name` with `role`, expiring after `days` (0: never): the
/// secret to hand out (shown once) and what is stored.
pub async fn create(
    store: &dyn Store,
    name: &str,
    role: &str,
    days: u32,
    now_ms: Millis,
) -> Result<(String, TokenRow)> {
    pyti::trust::check_name(name).map_err(Error::BadRequest)?;
    let role = Role::parse(role).map_err(Error::BadRequest)?;
    let new = token::generate();
    let row = TokenRow {
        token_id: new.id,
        name: name.to_owned(),
        role: role.as_str().to_owned(),
        secret_hash: new.hash,
        created_at_ms: now_ms,
        expires_at_ms: (days > 0).then(|| now_ms + Millis::from(days) * DAY_MS),
        revoked_at_ms: None,
    };
    if !store.insert_token(&row).await? {
        return Err(Error::BadRequest(format!(
            "a token named {name:?} exists; revoke it or choose another name"
        )));
    }
    Ok((new.secret, row))
}

/// The name and role of `presented` if it is a live token of `store` at `now_ms`.
pub async fn check(store: &dyn Store, presented: &str, now_ms: Millis) -> Option<(String, Role)> {
    let (id, secret) = token::split(presented)?;
    let row = store.token(id).await.ok()??;
    let live = row.revoked_at_ms.is_none() && row.expires_at_ms.is_none_or(|at| now_ms < at);
    if !(token::matches(secret, &row.secret_hash) && live) {
        return None;
    }
    Some((row.name, Role::parse(&row.role).ok()?))
}

/// The auth layer's token lookup over `store`, by `clock`.
pub fn lookup(store: Arc<dyn Store>, clock: Clock) -> TokenLookup {
    Arc::new(move |presented: String| {
        let store = Arc::clone(&store);
        let now = clock.now_ms();
        Box::pin(async move { check(store.as_ref(), &presented, now).await })
    })
}
