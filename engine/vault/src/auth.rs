//! Token lifecycle calls: look up and renew the client's own token, and AppRole and JWT logins.
//!
//! The policy (when to renew, when to log in again, when to give up) lives in
//! `vsync-engine` (`engine/engine/src/tokens.rs`); this module only speaks the API. Tokens travel in headers and in login responses only; they are
//! never part of an error.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::client::{RequestKind, Token, VaultClient};
use crate::error::{Result, VaultError};

/// What the server says about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLease {
    /// Time to live from now (zero: never expires, e.g. a root token).
    pub ttl: Duration,
    /// Whether `renew-self` can extend it.
    pub renewable: bool,
}

/// A fresh token from a login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The token (redacted in `Debug`).
    pub token: Token,
    /// Its lease.
    pub lease: TokenLease,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct Wrapped<T> {
    data: Option<T>,
}

#[derive(Deserialize)]
struct AuthBody {
    auth: Option<AuthData>,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

/// `text` with every occurrence of `secret` (and of its dot-separated parts, for a JWT whose
/// header or claims a server might quote) replaced by `<redacted>`.
fn redact(text: &str, secret: &str) -> String {
    let mut out = text.to_owned();
    let parts = std::iter::once(secret).chain(secret.split('.'));
    // Short parts (an empty signature, `e30` for `{}`) are not worth hiding and would garble
    // ordinary words.
    for part in parts.filter(|p| p.len() >= 8) {
        out = out.replace(part, "<redacted>");
    }
    out
}

fn decode<'a, T: Deserialize<'a>>(request: &str, body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| VaultError::Decode {
        request: request.to_owned(),
        message: e.to_string(),
    })
}

impl VaultClient {
    /// `GET auth/token/lookup-self`: the current token's TTL and renewability.
    pub async fn lookup_self(&self) -> Result<TokenLease> {
        let request = "GET auth/token/lookup-self";
        let answer = self
            .call(RequestKind::Other, Method::GET, "auth/token/lookup-self", &[], None)
            .await?;
        let data: Wrapped<LookupData> = decode(request, &answer.body)?;
        let data = data.data.ok_or_else(|| VaultError::Decode {
            request: request.into(),
            message: "no `data`".into(),
        })?;
        Ok(TokenLease {
            ttl: Duration::from_secs(data.ttl),
            renewable: data.renewable,
        })
    }

    /// `POST auth/token/renew-self`, asking for `increment`. The answer's TTL may be shorter
    /// (capped by the token's max TTL): the caller compares.
    pub async fn renew_self(&self, increment: Duration) -> Result<TokenLease> {
        let request = "POST auth/token/renew-self";
        let body = serde_json::to_vec(&json!({ "increment": format!("{}s", increment.as_secs().max(1)) }))
            .map_err(|e| VaultError::Config(e.to_string()))?;
        let answer = self
            .call(
                RequestKind::Other,
                Method::POST,
                "auth/token/renew-self",
                &[],
                Some((body, "application/json")),
            )
            .await?;
        let auth: AuthBody = decode(request, &answer.body)?;
        let auth = auth.auth.ok_or_else(|| VaultError::Decode {
            request: request.into(),
            message: "no `auth` in the renewal".into(),
        })?;
        Ok(TokenLease {
            ttl: Duration::from_secs(auth.lease_duration),
            renewable: auth.renewable,
        })
    }

    /// `POST auth/<mount>/login` with an AppRole role ID and secret ID. Does not change this
    /// client's token: the caller installs it with [`VaultClient::set_token`].
    pub async fn approle_login(&self, mount: &str, role_id: &str, secret_id: &str) -> Result<Login> {
        let mount = mount.trim_matches('/');
        let api = Self::api_path("auth", mount)? + "/login";
        let request = format!("POST {api}");
        let body = serde_json::to_vec(&json!({ "role_id": role_id, "secret_id": secret_id }))
            .map_err(|e| VaultError::Config(e.to_string()))?;
        let answer = self
            .call(RequestKind::Other, Method::POST, &api, &[], Some((body, "application/json")))
            .await?;
        self.login_answer("AppRole", mount, request, &answer)
    }

    /// The token of a login answer; a 404 means nothing is mounted at `auth/<mount>`.
    fn login_answer(&self, method: &str, mount: &str, request: String, answer: &crate::client::Answer) -> Result<Login> {
        if answer.status.as_u16() == 404 {
            return Err(VaultError::Config(format!(
                "{method} login: no auth method mounted at `auth/{mount}` on {}",
                self.address()
            )));
        }
        let auth: AuthBody = decode(&request, &answer.body)?;
        let auth = auth.auth.ok_or_else(|| VaultError::Decode {
            request,
            message: "no `auth` in the login answer".into(),
        })?;
        Ok(Login {
            token: Token::new(auth.client_token),
            lease: TokenLease {
                ttl: Duration::from_secs(auth.lease_duration),
                renewable: auth.renewable,
            },
        })
    }

    /// `POST auth/<mount>/login` with `{role, jwt}`: the JWT/OIDC auth method, and also the
    /// Kubernetes one (same request, the JWT being a service-account token). Does not change
    /// this client's token. The JWT never appears in an error: a refusal (400 or 403) becomes
    /// [`VaultError::LoginFailed`] naming the mount and role, a 404 says that nothing is
    /// mounted there.
    pub async fn jwt_login(&self, mount: &str, role: &str, jwt: &str) -> Result<Login> {
        let mount = mount.trim_matches('/');
        let api = Self::api_path("auth", mount)? + "/login";
        let request = format!("POST {api}");
        let body = serde_json::to_vec(&json!({ "role": role, "jwt": jwt }))
            .map_err(|e| VaultError::Config(e.to_string()))?;
        let refused = |status: u16, message: String| {
            let mut message = redact(&message, jwt);
            if status == 403 {
                // Without a valid token, a path that nothing is mounted at also answers 403.
                message.push_str(&format!(" (also the answer when no auth method is mounted at `auth/{mount}`)"));
            }
            VaultError::LoginFailed { method: "JWT", mount: mount.to_owned(), role: role.to_owned(), status, message }
        };
        let answer = match self
            .call(RequestKind::Other, Method::POST, &api, &[], Some((body, "application/json")))
            .await
        {
            Ok(answer) => answer,
            Err(VaultError::PermissionDenied { message, .. }) => return Err(refused(403, message)),
            Err(VaultError::Rejected { status: 400, message, .. }) => return Err(refused(400, message)),
            Err(VaultError::Rejected { request, status, message }) => {
                return Err(VaultError::Rejected { request, status, message: redact(&message, jwt) });
            }
            Err(VaultError::Server { request, status, message }) => {
                return Err(VaultError::Server { request, status, message: redact(&message, jwt) });
            }
            Err(e) => return Err(e),
        };
        self.login_answer("JWT", mount, request, &answer)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_the_jwt_and_its_parts() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ2c3luYyJ9.c2lnbmF0dXJlLWJ5dGVz";
        let text = format!("bad token {jwt}; claims eyJzdWIiOiJ2c3luYyJ9 rejected");
        let out = redact(&text, jwt);
        assert!(!out.contains("eyJ") && !out.contains("c2lnbmF0dXJl"), "{out}");
        assert_eq!(redact("token is expired", jwt), "token is expired");
    }
}
