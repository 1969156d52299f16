//! Keeps each Vault client's token valid: renews renewable tokens before they expire, logs in
//! again (AppRole, or JWT/Kubernetes) when renewal no longer extends the token (max TTL reached,
//! or not renewable), and declares a fatal error when a token can be neither renewed nor
//! re-obtained.

use std::path::PathBuf;
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
    /// JWT login (`auth/<mount>/login {role, jwt}`): the JWT/OIDC auth method, or Kubernetes
    /// auth with the service-account token.
    Jwt {
        /// Auth mount (`jwt`, `kubernetes`).
        mount: String,
        /// The auth method's role.
        role: String,
        /// Where the JWT is read from, at every login.
        jwt: JwtSource,
    },
}

impl TokenSource {
    /// The login method's name in logs and errors; `None` for a static token.
    fn method(&self) -> Option<&'static str> {
        match self {
            TokenSource::Static => None,
            TokenSource::AppRole { .. } => Some("AppRole"),
            TokenSource::Jwt { .. } => Some("JWT"),
        }
    }
}

/// Where a JWT comes from. It is read again at every login: projected service-account tokens
/// are rotated on disk by the kubelet, and a JWT read once would expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtSource {
    /// A file holding the JWT (`jwt_file`).
    File(PathBuf),
    /// An environment variable holding it (`jwt_env`).
    Env(String),
}

impl JwtSource {
    /// The current JWT, trimmed; an error names the file or variable, never the content.
    pub fn read(&self) -> Result<Secret, String> {
        let value = match self {
            JwtSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read jwt_file {}: {e}", path.display()))?,
            JwtSource::Env(var) => std::env::var(var)
                .map_err(|_| format!("environment variable `{var}` (jwt_env) is not set or not UTF-8"))?,
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(match self {
                JwtSource::File(path) => format!("jwt_file {} is empty", path.display()),
                JwtSource::Env(var) => format!("environment variable `{var}` (jwt_env) is empty"),
            });
        }
        Ok(Secret(value.to_owned()))
    }
}

/// A credential that never prints.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Logs in (AppRole or JWT) and installs the token in `client`; `None` for a static token.
/// A JWT file is read again at each call.
pub async fn login(client: &VaultClient, side: &str, source: &TokenSource) -> Result<Option<TokenLease>, Fault> {
    let (method, login) = match source {
        TokenSource::Static => return Ok(None),
        TokenSource::AppRole { mount, role_id, secret_id } => (
            "AppRole",
            client
                .approle_login(mount, role_id, &secret_id.0)
                .await
                .map_err(|e| Fault::vault(format!("{side} vault: AppRole login at auth/{mount}"), e))?,
        ),
        TokenSource::Jwt { mount, role, jwt } => {
            let value = jwt.read().map_err(|e| {
                Fault::fatal(FatalCause::Config, format!("{side} vault: JWT login at auth/{mount} as role `{role}`: {e}"))
            })?;
            // The error already names the mount and the role.
            let login = client.jwt_login(mount, role, &value.0).await.map_err(|e| Fault::vault(format!("{side} vault"), e))?;
            ("JWT", login)
        }
    };
    client
        .set_token(&login.token)
        .map_err(|e| Fault::vault(format!("{side} vault: {method} login"), e))?;
    info!(side, ttl = ?login.lease.ttl, renewable = login.lease.renewable, "logged in with {method}");
    Ok(Some(login.lease))
}

/// Spawns the keeper of one client's token. On a token that can no longer be renewed or
/// re-obtained, it trips `tripwire` with a fatal fault naming the side.
pub fn spawn_keeper(side: String, client: VaultClient, source: TokenSource, first: Option<TokenLease>, tripwire: Tripwire) {
    tokio::spawn(keep(side, client, source, first, tripwire));
}

/// The keeper: renews the token at half its TTL, or logs in again when it cannot.
async fn keep(side: String, client: VaultClient, source: TokenSource, first: Option<TokenLease>, tripwire: Tripwire) {
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
    let mut full = lease.ttl;
    loop {
        if lease.ttl.is_zero() {
            return; // never expires (root or periodic-free service token without TTL)
        }
        // Act at half the TTL: servers report TTLs in whole seconds and cap renewals by the
        // max TTL loosely, so leave room for a renewal that turns out shorter than reported.
        tokio::time::sleep(lease.ttl / 2).await;
        let remaining = lease.ttl / 2;
        if lease.renewable
            && let Some(new) = renew(&client, &side, &source, full, remaining).await
        {
            lease = new;
            continue;
        }
        let Some(new) = relogin(&client, &side, &source, remaining, &tripwire).await else {
            return;
        };
        lease = new;
        // What a full renewal grants from now on: the new token's TTL.
        full = lease.ttl;
    }
}

/// Renews the token; the lease to keep going with, or `None` when only a new login helps
/// (the renewal was capped by the max TTL, or failed).
async fn renew(client: &VaultClient, side: &str, source: &TokenSource, full: Duration, remaining: Duration) -> Option<TokenLease> {
    match client.renew_self(full).await {
        Ok(new) if new.ttl >= full => {
            debug!(side = %side, ttl = ?new.ttl, "token renewed");
            Some(new)
        }
        // Capped by the max TTL: a static token lives on until it ends; a logged-in
        // one (AppRole, JWT) is replaced by a fresh login now, while it is still valid.
        Ok(new) if matches!(source, TokenSource::Static) && !new.ttl.is_zero() => {
            warn!(side = %side, ttl = ?new.ttl, "the token is near its max TTL and cannot be extended further");
            Some(new)
        }
        Ok(new) => {
            debug!(side = %side, ttl = ?new.ttl, "renewal capped by the max TTL");
            None
        }
        // A static token has half its TTL left: one failed renewal (a Vault that
        // is briefly unreachable) is retried with backoff until it is close to
        // expiry. A revoked token is not retried.
        Err(e) if matches!(source, TokenSource::Static) && !matches!(e, VaultError::PermissionDenied { .. }) => {
            warn!(side = %side, error = %e, "token renewal failed; retrying until the token is close to expiry");
            retry_renewal(client, side, full, remaining).await
        }
        Err(e) => {
            warn!(side = %side, error = %e, "token renewal failed");
            None
        }
    }
}

/// Replaces an expiring token by a new login (3 tries); `None` when the keeper stops: a static
/// token that cannot be renewed, or logins that keep failing, trip `tripwire`.
async fn relogin(client: &VaultClient, side: &str, source: &TokenSource, remaining: Duration, tripwire: &Tripwire) -> Option<TokenLease> {
    let Some(method) = source.method() else {
        tripwire.trip(Fault::fatal(
            FatalCause::Token,
            format!(
                "{side} vault: the token expires in about {remaining:?} and cannot be renewed; \
                 give vsync a renewable token or use AppRole or JWT login"
            ),
        ));
        return None;
    };
    let mut tries = 0;
    loop {
        match login(client, side, source).await {
            Ok(Some(new)) => {
                info!(side = %side, ttl = ?new.ttl, "token renewed by a new {method} login");
                return Some(new);
            }
            Ok(None) => return None,
            Err(e) => {
                tries += 1;
                warn!(side = %side, error = %e.message, tries, "{method} login failed");
                if tries >= 3 {
                    tripwire.trip(Fault::fatal(
                        FatalCause::Token,
                        format!(
                            "{side} vault: the token expires and {method} login failed 3 times: {}",
                            // The login's error already starts with the side.
                            e.message.strip_prefix(&format!("{side} vault: ")).unwrap_or(&e.message)
                        ),
                    ));
                    return None;
                }
                tokio::time::sleep((remaining / 4).max(Duration::from_millis(200))).await;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_jwt_file_is_read_again_each_time_and_errors_never_hold_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = JwtSource::File(path.clone());
        let err = source.read().unwrap_err();
        assert!(err.contains("cannot read jwt_file") && err.contains("token"), "{err}");
        std::fs::write(&path, "first.jwt.value\n").unwrap();
        assert_eq!(source.read().unwrap().0, "first.jwt.value");
        // Rotated on disk (as the kubelet does): the next read sees the new token.
        std::fs::write(&path, "second.jwt.value").unwrap();
        assert_eq!(source.read().unwrap().0, "second.jwt.value");
        std::fs::write(&path, " \n").unwrap();
        assert!(source.read().unwrap_err().contains("is empty"));
        assert_eq!(format!("{:?}", source.read().ok()), "None");
        assert_eq!(format!("{:?}", Secret("second.jwt.value".into())), "<redacted>");

        let err = JwtSource::Env("VSYNC_TEST_SURELY_UNSET_JWT".into()).read().unwrap_err();
        assert!(err.contains("VSYNC_TEST_SURELY_UNSET_JWT") && err.contains("jwt_env"), "{err}");
    }
}
