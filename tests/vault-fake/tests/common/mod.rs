//! One backend of the contract suite: the fake (in-process transport) or a real OpenBao dev
//! server (through `ReqwestTransport`), driven through the same `VaultClient` and raw requests.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use vsync_test_harness::Bao;
use vsync_vault::transport::{ReqwestTransport, Request, Transport};
use vsync_vault::{RetryPolicy, Token, VaultClient, VaultConfig};
use vsync_vault_fake::{FakeVault, Injected, TokenPolicy};

pub struct Backend {
    pub fake: Option<FakeVault>,
    pub bao: Option<Bao>,
    transport: Arc<dyn Transport>,
    address: String,
    /// The fake's clock runs this far ahead of the wall clock (`advance`).
    offset: Arc<Mutex<Duration>>,
}

/// A client config that fails at once instead of retrying (429, 503 and 5xx included).
pub fn config(address: &str, token: &str) -> VaultConfig {
    let mut c = VaultConfig::new(address, Token::new(token));
    c.retry = RetryPolicy { max_attempts: 1, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(1) };
    c.backpressure_budget = Duration::ZERO;
    c
}

impl Backend {
    pub fn fake() -> Self {
        let offset = Arc::new(Mutex::new(Duration::ZERO));
        let at = offset.clone();
        let fake = FakeVault::new(Arc::new(move || SystemTime::now() + *at.lock().unwrap()));
        Self { transport: fake.transport(), fake: Some(fake), bao: None, address: "http://fake.invalid".into(), offset }
    }

    pub fn bao() -> Self {
        let bao = Bao::dev();
        let address = bao.addr();
        let transport = Arc::new(ReqwestTransport::new(reqwest::Client::new(), address.clone()));
        Self { fake: None, bao: Some(bao), transport, address, offset: Arc::new(Mutex::new(Duration::ZERO)) }
    }

    /// The address clients are configured with.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    pub fn is_fake(&self) -> bool {
        self.fake.is_some()
    }

    /// A root client.
    pub fn client(&self) -> VaultClient {
        self.client_with(config(&self.address, "root"))
    }

    pub fn client_as(&self, token: &str) -> VaultClient {
        self.client_with(config(&self.address, token))
    }

    pub fn client_with(&self, config: VaultConfig) -> VaultClient {
        match &self.fake {
            Some(fake) => VaultClient::with_transport(config, fake.transport()).unwrap(),
            None => VaultClient::new(config).unwrap(),
        }
    }

    pub fn enable_kv(&self, mount: &str, version: u8) {
        match (&self.fake, &self.bao) {
            (Some(fake), _) => fake.enable_kv(mount, version),
            (None, Some(bao)) => bao.enable_kv(mount.trim_end_matches('/'), version),
            _ => unreachable!(),
        }
    }

    /// Lets time pass: the fake's clock moves on; a real server is waited for.
    pub async fn advance(&self, by: Duration) {
        if self.is_fake() {
            *self.offset.lock().unwrap() += by;
        } else {
            tokio::time::sleep(by).await;
        }
    }

    /// A token whose policy sets `pagination_limit = limit` (with read, list and scan on
    /// `kv2/` and `kv1/`, no default policy).
    pub fn limited_token(&self, limit: usize) -> String {
        self.policy_token(limit, true)
    }

    /// A token with `pagination_limit = limit` on `kv2/` and `kv1/`, read and list, and `scan`
    /// if asked for.
    pub fn policy_token(&self, limit: usize, scan: bool) -> String {
        let name = if scan { "limited" } else { "limited-noscan" };
        match (&self.fake, &self.bao) {
            (Some(fake), _) => {
                fake.set_token_policy(name, TokenPolicy { pagination_limit: Some(limit), scan });
                name.into()
            }
            (None, Some(bao)) => {
                let caps = if scan { r#"["read", "list", "scan"]"# } else { r#"["read", "list"]"# };
                let hcl = format!(
                    "path \"kv2/*\" {{\n capabilities = {caps}\n pagination_limit = {limit}\n}}\n\
                     path \"kv1/*\" {{\n capabilities = {caps}\n pagination_limit = {limit}\n}}\n"
                );
                bao.token_with_policy(name, &hcl)
            }
            _ => unreachable!(),
        }
    }

    pub fn seal(&self) {
        match (&self.fake, &self.bao) {
            (Some(fake), _) => fake.set_sealed(true),
            (None, Some(bao)) => bao.seal(),
            _ => unreachable!(),
        }
    }

    /// A rate-limit quota on `kv2/` of one request per minute, with `Retry-After` headers on
    /// (real server); the same answers from a fault hook (fake).
    pub fn throttle(&self) {
        match (&self.fake, &self.bao) {
            (Some(fake), _) => {
                let seen = Arc::new(AtomicU64::new(0));
                fake.set_fault_hook(Some(Arc::new(move |view| {
                    if !view.api_path.starts_with("kv2/") || seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        return None;
                    }
                    Some(Injected::Status {
                        status: 429,
                        retry_after: Some(60),
                        message: format!("request path \"{}\": rate limit quota exceeded", view.api_path),
                    })
                })));
            }
            (None, Some(bao)) => {
                bao.root("POST", "sys/quotas/config", Some(&json!({"enable_rate_limit_response_headers": true})));
                bao.root("POST", "sys/quotas/rate-limit/q", Some(&json!({"path": "kv2/", "rate": 1, "interval": "60s"})));
            }
            _ => unreachable!(),
        }
    }

    /// One request through the transport, as root.
    pub async fn raw(&self, method: &str, path: &str, query: &[(&str, &str)], body: Option<Value>) -> (u16, HeaderMap, Value) {
        self.raw_as("root", method, path, query, body).await
    }

    /// One request through the transport with `token`: status, headers and JSON body (`Null`
    /// when empty).
    pub async fn raw_as(&self, token: &str, method: &str, path: &str, query: &[(&str, &str)], body: Option<Value>) -> (u16, HeaderMap, Value) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let query: Vec<(&str, String)> = query.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        let token = HeaderValue::from_str(token).unwrap();
        let body = body.map(|b| (serde_json::to_vec(&b).unwrap(), "application/json"));
        let request = Request { method: &method, api_path: path, query: &query, token: &token, body: body.as_ref(), timeout: None };
        let response = self.transport.send(request).await.unwrap();
        let status = response.status.as_u16();
        let headers = response.headers.clone();
        let bytes = response.body.bytes().await.unwrap();
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, headers, value)
    }
}

/// Secret data from a JSON value.
pub fn data(value: Value) -> vsync_vault::SecretData {
    vsync_vault::SecretData::from_json(&value.to_string()).unwrap()
}

/// The `errors` texts of a body.
pub fn errors(body: &Value) -> Vec<String> {
    body["errors"].as_array().map(|a| a.iter().map(|e| e.as_str().unwrap_or_default().to_owned()).collect()).unwrap_or_default()
}

/// The keys of a listing body, sorted.
pub fn keys(body: &Value) -> Vec<String> {
    let mut k: Vec<String> = body["data"]["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect();
    k.sort();
    k
}

/// A body with what differs between servers and runs replaced: ids, UUIDs, accessors, cluster
/// names and every non-empty `*_time` (`<time>`), so the rest compares exactly.
pub fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let placeholder = match (k.as_str(), v) {
                        ("request_id" | "uuid" | "accessor" | "cluster_id" | "cluster_name" | "id", Value::String(_)) => Some(format!("<{k}>")),
                        (k, Value::String(s)) if k.ends_with("_time") && !s.is_empty() => Some("<time>".into()),
                        (k, Value::Number(_)) if k.ends_with("_time") || k == "server_time_utc" => Some("<time>".into()),
                        _ => None,
                    };
                    (k.clone(), placeholder.map_or_else(|| shape(v), Value::String))
                })
                .collect(),
        ),
        Value::Array(list) => Value::Array(list.iter().map(shape).collect()),
        other => other.clone(),
    }
}
