//! Routing one request to the mount or system endpoint that answers it, and shaping the answer
//! as OpenBao does: the response envelope, 204s, `{"errors":[...]}` bodies, warnings.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use vsync_vault::transport::Request;

use crate::error::ApiError;
use crate::kv2::Kv2;
use crate::listing::{children, folder_of, page, scan};
use crate::time::parse_duration_secs;
use crate::{Inner, Mount, RequestView};

/// KV v1's lease for a value without a `ttl` field (32 days, the system default).
const DEFAULT_LEASE_SECS: u64 = 2_764_800;

const INVALID_V2_PATH: &str = "Invalid path for a versioned K/V secrets engine. See the API docs for the appropriate API \
                               endpoints to use. If using the OpenBao CLI, use 'bao kv get' for this operation.";

/// An answer before it becomes HTTP.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub retry_after: Option<u64>,
}

impl Reply {
    fn no_content() -> Self {
        Self { status: 204, body: None, retry_after: None }
    }

    /// `{"errors":[...]}` with `status`.
    pub(crate) fn error_with(status: u16, errors: Vec<String>, retry_after: Option<u64>) -> Self {
        Self { status, body: Some(json!({ "errors": errors })), retry_after }
    }

    fn error(e: ApiError) -> Self {
        Self::error_with(e.status, e.errors, None)
    }
}

/// What an endpoint produced, wrapped into OpenBao's envelope by [`envelope`].
#[derive(Debug)]
pub(crate) enum Out {
    NoContent,
    Data { status: u16, data: Value, warnings: Vec<String>, lease_duration: u64 },
    /// A whole body, sent as it is.
    Raw(u16, Value),
}

impl Out {
    fn ok(data: Value) -> Self {
        Out::Data { status: 200, data, warnings: Vec::new(), lease_duration: 0 }
    }
}

/// The parsed request.
struct Req {
    /// The effective method: `GET ?list=true` is `LIST`, `GET ?scan=true` is `SCAN`.
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    token: String,
    body: Value,
}

/// The request as a fault hook sees it.
pub(crate) fn view(request: &Request<'_>) -> RequestView {
    let method = request.method.as_str().to_owned();
    let is_write = matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE");
    let api_path = percent_decode_str(request.api_path).decode_utf8_lossy().into_owned();
    RequestView { method, api_path, is_write }
}

/// `secret`, `/secret/`, `secret/` -> `secret/`.
pub(crate) fn normalize_mount(mount: &str) -> String {
    format!("{}/", mount.trim_matches('/'))
}

/// Enables (or replaces) a KV mount with a fresh UUID.
pub(crate) fn enable(inner: &mut Inner, mount: &str, version: u8) {
    let id = inner.next_id();
    let mount_state = Mount {
        version: if version == 1 { 1 } else { 2 },
        uuid: format!("00000000-0000-4000-8000-{id:012x}"),
        accessor: format!("kv_{id:08x}"),
        kv2: Kv2::default(),
        kv1: BTreeMap::new(),
    };
    inner.mounts.insert(normalize_mount(mount), mount_state);
}

fn parse(request: &Request<'_>) -> Result<Req, ApiError> {
    let path = percent_decode_str(request.api_path)
        .decode_utf8()
        .map_err(|_| ApiError::new(500, "string field contains invalid UTF-8"))?
        .into_owned();
    let query: BTreeMap<String, String> = request.query.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    let mut method = request.method.as_str().to_owned();
    if method == "GET" && query.get("list").is_some_and(|v| v == "true") {
        method = "LIST".into();
    } else if method == "GET" && query.get("scan").is_some_and(|v| v == "true") {
        method = "SCAN".into();
    }
    let token = request.token.to_str().unwrap_or_default().to_owned();
    let body = match request.body {
        Some((bytes, _)) if !bytes.iter().all(u8::is_ascii_whitespace) => serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("failed to decode JSON input: {e}")))?,
        _ => Value::Null,
    };
    Ok(Req { method, path, query, token, body })
}

/// Serves one request against the state.
pub(crate) fn handle(inner: &mut Inner, request: &Request<'_>) -> Reply {
    let req = match parse(request) {
        Ok(r) => r,
        Err(e) => return Reply::error(e),
    };
    if req.path == "sys/seal-status" {
        return Reply { status: 200, body: Some(seal_status(inner.sealed)), retry_after: None };
    }
    if req.path == "sys/health" {
        let status = if inner.sealed { 503 } else { 200 };
        return Reply { status, body: Some(health(inner.sealed, inner.now())), retry_after: None };
    }
    if inner.sealed {
        return Reply::error(ApiError::new(503, "Vault is sealed"));
    }
    let Some(policy) = inner.tokens.get(&req.token).copied() else {
        return Reply::error(ApiError::bad_token());
    };
    if req.method == "SCAN" && !policy.scan {
        return Reply::error(ApiError::acl_denied());
    }
    let root = req.token == "root";
    match route(inner, &req, policy.pagination_limit, root) {
        Ok(Out::NoContent) => Reply::no_content(),
        Ok(Out::Data { status, data, warnings, lease_duration }) => {
            let id = inner.next_id();
            Reply { status, body: Some(envelope(id, data, &warnings, lease_duration)), retry_after: None }
        }
        Ok(Out::Raw(status, body)) => Reply { status, body: Some(body), retry_after: None },
        Err(e) => Reply::error(e),
    }
}

/// OpenBao's response envelope.
fn envelope(id: u64, data: Value, warnings: &[String], lease_duration: u64) -> Value {
    json!({
        "request_id": request_id(id),
        "lease_id": "",
        "renewable": false,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": null,
        "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
        "auth": null,
    })
}

fn request_id(id: u64) -> String {
    format!("00000000-0000-0000-0000-{id:012x}")
}

fn seal_status(sealed: bool) -> Value {
    json!({
        "type": "shamir", "initialized": true, "sealed": sealed, "t": 1, "n": 1, "progress": 0,
        "nonce": "", "recovery_seal": false, "version": "2.7.2", "migration": false,
        "cluster_name": "vault-fake", "cluster_id": "00000000-0000-0000-0000-000000000000",
        "storage_type": "inmem",
    })
}

/// `sys/health` (unauthenticated; 503 while sealed).
fn health(sealed: bool, now: std::time::SystemTime) -> Value {
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if sealed {
        return json!({
            "initialized": true, "sealed": true, "standby": true, "replication_performance_mode": "unknown",
            "replication_dr_mode": "unknown", "server_time_utc": secs, "version": "2.7.2",
        });
    }
    json!({
        "initialized": true, "sealed": false, "standby": false, "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled", "server_time_utc": secs, "version": "2.7.2",
        "cluster_name": "vault-fake", "cluster_id": "00000000-0000-0000-0000-000000000000",
    })
}

fn route(inner: &mut Inner, req: &Req, limit: Option<usize>, root: bool) -> Result<Out, ApiError> {
    let path = req.path.as_str();
    if let Some(rest) = path.strip_prefix("sys/internal/ui/mounts/") {
        return ui_mount(inner, rest, &req.method);
    }
    if let Some(rest) = path.strip_prefix("sys/mounts/") {
        return sys_mounts(inner, rest, req);
    }
    match (path, req.method.as_str(), root) {
        ("auth/token/lookup-self", "GET", true) => return Ok(Out::ok(lookup_self())),
        ("auth/token/renew-self", "POST" | "PUT", true) => return Err(ApiError::bad_request("lease is not renewable")),
        ("auth/token/lookup-self" | "auth/token/renew-self", _, _) => return Err(ApiError::acl_denied()),
        _ => {}
    }
    let Some(mount_path) = find_mount(inner, path) else {
        if !root {
            return Err(ApiError::acl_denied());
        }
        return Err(ApiError::new(404, format!("no handler for route \"{path}\". route entry not found.")));
    };
    let now = inner.now();
    let rest = path.get(mount_path.len()..).unwrap_or_default();
    let mount = inner.mounts.get_mut(&mount_path).ok_or_else(ApiError::not_found)?;
    if mount.version == 1 {
        return kv1(&mut mount.kv1, rest, req, limit);
    }
    kv2_route(&mut mount.kv2, rest, req, limit, now)
}

/// The longest mount path that `path` lies under (`kv/` for `kv/data/x` and for `kv`).
fn find_mount(inner: &Inner, path: &str) -> Option<String> {
    inner
        .mounts
        .keys()
        .filter(|m| path.starts_with(m.as_str()) || format!("{path}/") == **m)
        .max_by_key(|m| m.len())
        .cloned()
}

fn mount_json(path: &str, mount: &Mount, with_path: bool) -> Value {
    let mut info = json!({
        "accessor": mount.accessor,
        "config": {"default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0},
        "deprecation_status": "supported",
        "description": "",
        "external_entropy_access": false,
        "local": false,
        "options": {"version": mount.version.to_string()},
        "plugin_version": "",
        "running_plugin_version": "v2.7.2+builtin.bao",
        "running_sha256": "",
        "seal_wrap": false,
        "type": "kv",
        "uuid": mount.uuid,
    });
    if let (true, Some(obj)) = (with_path, info.as_object_mut()) {
        obj.insert("path".into(), json!(path));
    }
    info
}

/// `GET sys/internal/ui/mounts/<path>`: the mount holding `path`.
fn ui_mount(inner: &Inner, rest: &str, method: &str) -> Result<Out, ApiError> {
    if method != "GET" {
        return Err(ApiError::unsupported_operation());
    }
    let denied = || {
        ApiError::new(
            403,
            format!("preflight capability check returned 403, please ensure client's policies grant access to path \"{}\"", normalize_mount(rest)),
        )
    };
    let mount_path = find_mount(inner, rest).ok_or_else(denied)?;
    let mount = inner.mounts.get(&mount_path).ok_or_else(denied)?;
    Ok(Out::ok(mount_json(&mount_path, mount, true)))
}

/// `GET|POST|DELETE sys/mounts/<path>`.
fn sys_mounts(inner: &mut Inner, rest: &str, req: &Req) -> Result<Out, ApiError> {
    let path = normalize_mount(rest);
    match req.method.as_str() {
        "GET" => {
            let mount = inner
                .mounts
                .get(&path)
                .ok_or_else(|| ApiError::bad_request(format!("No secret engine mount at {path}")))?;
            let info = mount_json(&path, mount, false);
            let id = inner.next_id();
            // The same fields at top level and under `data`: build the envelope here.
            let mut body = envelope(id, info.clone(), &[], 0);
            if let (Some(top), Some(fields)) = (body.as_object_mut(), info.as_object()) {
                for (k, v) in fields {
                    top.insert(k.clone(), v.clone());
                }
            }
            Ok(Out::Raw(200, body))
        }
        "POST" | "PUT" => {
            if inner.mounts.contains_key(&path) {
                return Err(ApiError::bad_request(format!("path is already in use at {path}")));
            }
            let kind = req.body.get("type").and_then(Value::as_str).unwrap_or_default();
            let version = req.body.pointer("/options/version").and_then(Value::as_str).unwrap_or("1");
            match kind {
                "kv-v2" => enable(inner, &path, 2),
                "kv" => enable(inner, &path, if version == "2" { 2 } else { 1 }),
                other => return Err(ApiError::bad_request(format!("plugin not found in the catalog: {other}"))),
            }
            Ok(Out::NoContent)
        }
        "DELETE" => {
            inner.mounts.remove(&path);
            Ok(Out::NoContent)
        }
        _ => Err(ApiError::unsupported_operation()),
    }
}

fn lookup_self() -> Value {
    json!({
        "accessor": "fakeaccessor", "creation_time": 0, "creation_ttl": 0, "display_name": "token",
        "entity_id": "", "expire_time": null, "explicit_max_ttl": 0, "id": "root",
        "issue_time": "1970-01-01T00:00:00Z", "meta": null,
        "num_uses": 0, "orphan": true, "path": "auth/token/create", "policies": ["root"],
        "renewable": false, "ttl": 0, "type": "service",
    })
}

/// The `limit` a KV v2 LIST pages with: the query's, refused (403) above the token's policy
/// `pagination_limit`, which also applies when the query sets none. 0: no limit.
fn page_limit(query: &BTreeMap<String, String>, policy: Option<usize>) -> Result<usize, ApiError> {
    let asked = match query.get("limit") {
        Some(text) => text.trim().parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "Field validation failed: error converting input for field \"limit\": '' cannot parse value as 'int': strconv.ParseInt: parsing \"{text}\": invalid syntax"
            ))
        })?,
        None => 0,
    };
    let asked = usize::try_from(asked).unwrap_or(0);
    match policy {
        Some(max) if asked > max => Err(ApiError::acl_denied()),
        Some(max) if asked == 0 => Ok(max),
        _ => Ok(asked),
    }
}

fn kv2_route(kv: &mut Kv2, rest: &str, req: &Req, limit: Option<usize>, now: std::time::SystemTime) -> Result<Out, ApiError> {
    let (endpoint, path) = rest.split_once('/').unwrap_or((rest, ""));
    let method = req.method.as_str();
    match (endpoint, method) {
        ("config", "GET") if path.is_empty() => Ok(Out::ok(kv.config.to_json())),
        ("config", "POST" | "PUT") if path.is_empty() => kv.config.update(&req.body).map(|()| Out::NoContent),
        ("data", "GET") => {
            let version = version_query(&req.query)?;
            let (status, data) = kv.read(path, version, now)?;
            Ok(Out::Data { status, data, warnings: Vec::new(), lease_duration: 0 })
        }
        ("data", "POST" | "PUT") => kv.write(path, &req.body, now).map(Out::ok),
        ("data", "DELETE") => {
            kv.delete_latest(path, now);
            Ok(Out::NoContent)
        }
        ("metadata", "GET") => {
            let key = kv.keys.get(path).ok_or_else(ApiError::not_found)?;
            Ok(Out::ok(key.metadata_json()))
        }
        ("metadata", "POST" | "PUT") => kv.write_metadata(path, &req.body, now).map(|()| Out::NoContent),
        ("metadata", "DELETE") => {
            kv.keys.remove(path);
            Ok(Out::NoContent)
        }
        ("metadata" | "detailed-metadata", "LIST") => list_v2(kv, path, req, limit, endpoint == "detailed-metadata"),
        ("metadata" | "detailed-metadata", "SCAN") => Ok(scan_v2(kv, path, endpoint == "detailed-metadata")),
        ("delete" | "undelete" | "destroy", "POST" | "PUT") => {
            kv.versions_op(endpoint, path, &req.body, now).map(|()| Out::NoContent)
        }
        ("config" | "data" | "metadata" | "detailed-metadata" | "delete" | "undelete" | "destroy", _) => {
            Err(ApiError::unsupported_operation())
        }
        _ => Ok(Out::Data { status: 404, data: Value::Null, warnings: vec![INVALID_V2_PATH.into()], lease_duration: 0 }),
    }
}

fn version_query(query: &BTreeMap<String, String>) -> Result<i64, ApiError> {
    match query.get("version") {
        None => Ok(0),
        Some(text) => text.trim().parse::<i64>().map_err(|_| {
            ApiError::bad_request(
                "Field validation failed: error converting input for field \"version\": '' cannot parse value as 'int': strconv.ParseInt: invalid syntax",
            )
        }),
    }
}

/// `LIST metadata|detailed-metadata/<folder>/[?limit=N&after=K]`.
fn list_v2(kv: &Kv2, path: &str, req: &Req, policy: Option<usize>, detailed: bool) -> Result<Out, ApiError> {
    let folder = folder_of(path);
    let limit = page_limit(&req.query, policy)?;
    let entries = page(children(&kv.keys, &folder), req.query.get("after").map(String::as_str), limit);
    if entries.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Out::ok(listing_data(kv, &folder, entries, detailed)))
}

/// `SCAN metadata|detailed-metadata/<prefix>/`: every key under the prefix; `data: {}` when
/// there is none. Not limited by `pagination_limit`; `limit`/`after` are ignored.
fn scan_v2(kv: &Kv2, path: &str, detailed: bool) -> Out {
    let prefix = folder_of(path);
    let entries = scan(&kv.keys, &prefix);
    if entries.is_empty() {
        return Out::ok(json!({}));
    }
    Out::ok(listing_data(kv, &prefix, entries, detailed))
}

fn listing_data(kv: &Kv2, prefix: &str, entries: Vec<String>, detailed: bool) -> Value {
    if !detailed {
        return json!({ "keys": entries });
    }
    let info: serde_json::Map<String, Value> = entries
        .iter()
        .map(|e| {
            let meta = match kv.keys.get(&format!("{prefix}{e}")) {
                Some(key) if !e.ends_with('/') => key.metadata_json(),
                _ => json!({}),
            };
            (e.clone(), meta)
        })
        .collect();
    json!({ "key_info": info, "keys": entries })
}

/// A KV v1 mount: values read, written, deleted and listed whole.
fn kv1(values: &mut BTreeMap<String, Value>, path: &str, req: &Req, policy: Option<usize>) -> Result<Out, ApiError> {
    match req.method.as_str() {
        "GET" => {
            let value = values.get(path).ok_or_else(ApiError::not_found)?;
            let lease = value
                .get("ttl")
                .and_then(|t| parse_duration_secs("ttl", t).ok())
                .map_or(DEFAULT_LEASE_SECS, |s| s.max(0).unsigned_abs());
            Ok(Out::Data { status: 200, data: value.clone(), warnings: Vec::new(), lease_duration: lease })
        }
        "POST" | "PUT" => {
            if path.is_empty() || path.ends_with('/') {
                return Err(ApiError::bad_request("cannot write to a path ending in '/'"));
            }
            match &req.body {
                Value::Object(map) if !map.is_empty() => {
                    values.insert(path.to_owned(), req.body.clone());
                    Ok(Out::NoContent)
                }
                _ => Err(ApiError::bad_request("missing data fields")),
            }
        }
        "DELETE" => {
            values.remove(path);
            Ok(Out::NoContent)
        }
        "LIST" => list_v1(values, path, req, policy),
        "SCAN" => {
            let entries = scan(values, &folder_of(path));
            Ok(Out::ok(if entries.is_empty() { json!({}) } else { json!({ "keys": entries }) }))
        }
        _ => Err(ApiError::unsupported_operation()),
    }
}

/// KV v1 LIST: the whole folder; `limit`/`after` (and a policy's `pagination_limit`, which
/// reaches it as `limit`) are ignored with a warning. A `limit` above the policy's is refused.
fn list_v1(values: &BTreeMap<String, Value>, path: &str, req: &Req, policy: Option<usize>) -> Result<Out, ApiError> {
    if let (Some(max), Some(asked)) = (policy, req.query.get("limit")) {
        let asked = usize::try_from(asked.trim().parse::<i64>().unwrap_or(0)).unwrap_or(0);
        if asked > max {
            return Err(ApiError::acl_denied());
        }
    }
    let mut ignored = Vec::new();
    if req.query.contains_key("after") {
        ignored.push("after");
    }
    if req.query.contains_key("limit") || policy.is_some() {
        ignored.push("limit");
    }
    let entries = children(values, &folder_of(path));
    if entries.is_empty() {
        return Err(ApiError::not_found());
    }
    let warnings = if ignored.is_empty() {
        Vec::new()
    } else {
        vec![format!("Endpoint ignored these unrecognized parameters: [{}]", ignored.join(" "))]
    };
    Ok(Out::Data { status: 200, data: json!({ "keys": entries }), warnings, lease_duration: 0 })
}
