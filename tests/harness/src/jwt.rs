//! A JWT issuer for tests of JWT/Kubernetes auth: a fresh ES256 (P-256) key pair per issuer,
//! generated in the test (no key is committed), tokens signed with it, and the set-up of a
//! `jwt` auth method on a [`Bao`] that trusts exactly that public key.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};

use crate::Bao;

/// The issuer (`iss`) every token carries and the auth method is bound to.
pub const ISSUER: &str = "vsync-test-issuer";
/// The audience (`aud`) every token carries and the role is bound to.
pub const AUDIENCE: &str = "vsync-test";

/// Signs tokens with its own key pair.
pub struct JwtIssuer {
    key: EncodingKey,
    public_pem: String,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer").finish_non_exhaustive()
    }
}

impl Default for JwtIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl JwtIssuer {
    /// A new issuer with a freshly generated key pair.
    pub fn new() -> Self {
        let secret = p256::SecretKey::generate();
        let private_pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public_pem = secret.public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
        Self { key, public_pem }
    }

    /// The public key, PEM (SPKI), for `jwt_validation_pubkeys`.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// A token for `sub` that expires `ttl_secs` from now, with a unique `jti`; `extra` claims
    /// are merged in (and override the defaults, e.g. `aud`).
    pub fn sign(&self, sub: &str, ttl_secs: u64, extra: Value) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_secs,
            "jti": format!("{now}-{}", fastrand::u64(..)),
        });
        if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            c.extend(extra);
        }
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key).unwrap()
    }

    /// Enables the `jwt` auth method at `auth/<mount>` on `bao`, trusting this issuer's public
    /// key, with role `role` (audience [`AUDIENCE`], user claim `sub`) granting `policies` with
    /// the given token TTLs. Clock leeways are off, so a token is refused the second its `exp`
    /// passes.
    pub fn configure(&self, bao: &Bao, mount: &str, role: &str, policies: &[&str], token_ttl: &str, token_max_ttl: &str) {
        bao.root("POST", &format!("sys/auth/{mount}"), Some(&json!({"type": "jwt"})));
        bao.root(
            "POST",
            &format!("auth/{mount}/config"),
            Some(&json!({"jwt_validation_pubkeys": [self.public_pem], "bound_issuer": ISSUER})),
        );
        bao.root(
            "POST",
            &format!("auth/{mount}/role/{role}"),
            Some(&json!({
                "role_type": "jwt",
                "bound_audiences": [AUDIENCE],
                "user_claim": "sub",
                "token_policies": policies,
                "token_ttl": token_ttl,
                "token_max_ttl": token_max_ttl,
                "expiration_leeway": -1,
                "clock_skew_leeway": -1,
                "not_before_leeway": -1,
            })),
        );
    }
}
