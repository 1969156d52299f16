//! Keeps each Vault client's token valid: renews renewable tokens before they expire, logs in
//! again with AppRole when renewal no longer extends the token (max TTL reached), and declares
//! a fatal error when a token can be neither renewed nor re-obtained.

use std::time::Duration;

use tracing::{debug, info, warn};
use vsync_vault::{TokenLease, VaultClient, VaultError};

use crate::fault::{FatalCause, Fault};
use crate::tripwire::Tripwire;

/// How a side obtains its token.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A token given by the operator (inline, file or environment).
    Static,
    /// AppRole login credentials.
    AppRole {
        /// Auth mount (`approle`).
        mount: String,
        /// Role ID.
        role_id: String,
        /// Secret ID (never logged).
        secret_id: Secret,
    },
}

/// A credential that never prints.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Logs in with AppRole and installs the token in `client`.
pub async fn login(client: &VaultClient, side: &str, source: &TokenSource) -> Result<Option<TokenLease>, Fault> {
    let TokenSource::AppRole { mount, role_id, secret_id } = source else {
        return Ok(None);
    };
    let login = client
        .approle_login(mount, role_id, &secret_id.0)
        .await
        .map_err(|e| Fault::vault(format!("{side} vault: AppRole login at auth/{mount}"), e))?;
    client
        .set_token(&login.token)
        .map_err(|e| Fault::vault(format!("{side} vault: AppRole login"), e))?;
    info!(side, ttl = ?login.lease.ttl, "logged in with AppRole");
    Ok(Some(login.lease))
}

/// Spawns the keeper of one client's token. On a token that can no longer be renewed or
/// re-obtained, it trips `tripwire` with a fatal fault naming the side.
pub fn spawn_keeper(side: String, client: VaultClient, source: TokenSource, first: Option<TokenLease>, tripwire: Tripwire) {
    tokio::spawn(async move {
        let mut lease = match first {
            Some(l) => l,
            None => match client.lookup_self().await {
                Ok(l) => l,
                Err(e) => {
                    // Not fatal by itself: a token without lookup-self permission still works;
                    // if it expires, requests fail with 403 and that is fatal then.
                    warn!(side, error = %e, "cannot look up the token's TTL; it will not be renewed");
                    return;
                }
            },
        };
        // What a full renewal grants: the TTL the token started with.
        let full = lease.ttl;
        loop {
            if lease.ttl.is_zero() {
                return; // never expires (root or periodic-free service token without TTL)
            }
            // Act at half the TTL: servers report TTLs in whole seconds and cap renewals by the
            // max TTL loosely, so leave room for a renewal that turns out shorter than reported.
            tokio::time::sleep(lease.ttl / 2).await;
            let remaining = lease.ttl / 2;
            if lease.renewable {
                match client.renew_self(full).await {
                    Ok(new) if new.ttl >= full => {
                        debug!(side = %side, ttl = ?new.ttl, "token renewed");
                        lease = new;
                        continue;
                    }
                    // Capped by the max TTL: a static token lives on until it ends; an AppRole
                    // one is replaced by a fresh login now, while it is still valid.
                    Ok(new) if matches!(source, TokenSource::Static) && !new.ttl.is_zero() => {
                        warn!(side = %side, ttl = ?new.ttl, "the token is near its max TTL and cannot be extended further");
                        lease = new;
                        continue;
                    }
                    Ok(new) => debug!(side = %side, ttl = ?new.ttl, "renewal capped by the max TTL"),
                    // A static token has half its TTL left: one failed renewal (a Vault that
                    // is briefly unreachable) is retried with backoff until it is close to
                    // expiry. A revoked token is not retried.
                    Err(e) if matches!(source, TokenSource::Static) && !matches!(e, VaultError::PermissionDenied { .. }) => {
                        warn!(side = %side, error = %e, "token renewal failed; retrying until the token is close to expiry");
                        if let Some(new) = retry_renewal(&client, &side, full, remaining).await {
                            lease = new;
                            continue;
                        }
                    }
                    Err(e) => warn!(side = %side, error = %e, "token renewal failed"),
                }
            }
            match &source {
                TokenSource::AppRole { .. } => {
                    let mut tries = 0;
                    loop {
                        match login(&client, &side, &source).await {
                            Ok(Some(new)) => {
                                info!(side = %side, "token renewed by a new AppRole login");
                                lease = new;
                                break;
                            }
                            Ok(None) => return,
                            Err(e) => {
                                tries += 1;
                                if tries >= 3 {
                                    tripwire.trip(Fault::fatal(
                                        FatalCause::Token,
                                        format!("{side} vault: the token expires and AppRole login failed 3 times: {e}"),
                                    ));
                                    return;
                                }
                                tokio::time::sleep((remaining / 4).max(Duration::from_millis(200))).await;
                            }
                        }
                    }
                }
                TokenSource::Static => {
                    tripwire.trip(Fault::fatal(
                        FatalCause::Token,
                        format!(
                            "{side} vault: the token expires in about {remaining:?} and cannot be renewed; \
                             give vsync a renewable token or use AppRole"
                        ),
                    ));
                    return;
                }
            }
        }
    });
}

/// Retries a failed renewal with backoff (1 s, doubling, at most 30 s) while more than a tenth
/// of `remaining` (at least 1 s) is left; the renewed lease, or `None` when the token is about
/// to expire or was revoked.
async fn retry_renewal(client: &VaultClient, side: &str, full: Duration, remaining: Duration) -> Option<TokenLease> {
    let deadline = tokio::time::Instant::now() + remaining;
    let margin = (remaining / 10).max(Duration::from_secs(1));
    let mut wait = Duration::from_secs(1);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left <= margin {
            return None;
        }
        tokio::time::sleep(wait.min(left - margin)).await;
        match client.renew_self(full).await {
            Ok(new) if !new.ttl.is_zero() => {
                info!(side, ttl = ?new.ttl, "token renewed after a failed attempt");
                return Some(new);
            }
            Ok(_) => return None,
            Err(VaultError::PermissionDenied { .. }) => return None,
            Err(e) => warn!(side, error = %e, "token renewal failed again"),
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}
