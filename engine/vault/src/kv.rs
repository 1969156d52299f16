//! KV operations: mount discovery, recursive listing, KV v2 metadata and versioned data,
//! KV v1 values. Each call maps the server's answers to typed results.
//!
//! "Empty" and "missing" are read strictly, because the origin scan turns them into deletes at
//! every destination. KV says "nothing here" in exactly two ways: a 404 whose body is exactly
//! `{"errors":[]}` (missing key, version or folder; an empty mount's LIST) and, for SCAN, a 200
//! with `data: {}` or `data.keys: []` (a missing prefix). A deleted or destroyed version is a
//! 404 that carries the version's metadata. Every other answer (no `data`, `data: null`, keys
//! that are not strings, a body that is not JSON, a 404 with an error text, a warning or no
//! `errors` array) fails the call with a typed error instead of reading as "no keys".
//!
//! "Complete" is read strictly too: a listing that may have been cut short is never used. On
//! OpenBao an ACL `pagination_limit` cuts a plain KV v2 LIST short without saying so, so the
//! LIST walk pages every KV v2 folder (`limit`/`after`) and fails loudly when the policy
//! refuses the page size ([`VaultError::PaginationLimited`]); SCAN is not limited.

use std::collections::VecDeque;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::debug;
use vsync_core::KvVersion;

use crate::client::{Reply, RequestKind, VaultClient};
use crate::listing;
use crate::error::{Result, VaultError};
use crate::types::{DataRead, KvMetadata, ListedSecret, MountInfo, SecretData, VersionMeta};

fn method(name: &'static str) -> Method {
    // LIST and SCAN are valid method tokens; from_bytes only fails on invalid characters.
    Method::from_bytes(name.as_bytes()).unwrap_or(Method::GET)
}

fn decode<'a, T: Deserialize<'a>>(request: &str, body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| VaultError::Decode {
        request: request.to_owned(),
        message: e.to_string(),
    })
}

/// What a 404 answer means, by KV's conventions (one case per variant).
#[derive(Debug, PartialEq, Eq)]
enum NotFound {
    /// Exactly `{"errors":[]}`: nothing at this path.
    Empty,
    /// `no handler for route`: no mount at this path (it may have vanished mid-scan).
    NoMount(String),
    /// The server routed the request but has no such path or operation there: `unsupported
    /// path`/`unsupported operation`, or KV v2's catch-all warning `Invalid path for a
    /// versioned K/V secrets engine` (a KV v1 path on a KV v2 mount, or an endpoint this KV
    /// plugin does not have).
    Unsupported(String),
    /// Anything else, described for the error.
    Other(String),
}

fn strings(value: Option<&serde_json::Value>) -> Vec<String> {
    value
        .and_then(serde_json::Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn classify_404(body: &[u8]) -> NotFound {
    if body.iter().all(u8::is_ascii_whitespace) {
        return NotFound::Other("empty body".into());
    }
    // The body is not quoted in errors: whatever a middlebox sent could hold anything.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return NotFound::Other(format!("body is not JSON ({} bytes)", body.len()));
    };
    let Some(top) = value.as_object() else {
        return NotFound::Other("body is not a JSON object".into());
    };
    let errors = strings(top.get("errors"));
    let warnings = strings(top.get("warnings"));
    if errors.iter().any(|e| e.contains("no handler for route")) {
        return NotFound::NoMount(errors.join("; "));
    }
    if errors.iter().any(|e| e.contains("unsupported path") || e.contains("unsupported operation"))
        || warnings.iter().any(|w| w.contains("Invalid path for a versioned K/V"))
    {
        let texts: Vec<String> = errors.into_iter().chain(warnings).collect();
        return NotFound::Unsupported(texts.join("; "));
    }
    match top.get("errors") {
        Some(serde_json::Value::Array(list)) if list.is_empty() && top.len() == 1 => NotFound::Empty,
        Some(serde_json::Value::Array(list)) if list.is_empty() => {
            let others: Vec<&str> = top.keys().map(String::as_str).filter(|k| *k != "errors").collect();
            NotFound::Other(format!("`errors` is empty but the body also holds {}", others.join(", ")))
        }
        Some(serde_json::Value::Array(_)) => NotFound::Other(format!("errors: {}", errors.join("; "))),
        Some(_) => NotFound::Other("`errors` is not an array".into()),
        None if warnings.is_empty() => NotFound::Other("no `errors` array".into()),
        None => NotFound::Other(format!("no `errors` array; warnings: {}", warnings.join("; "))),
    }
}

/// The `data` of a 200 LIST or SCAN answer, with the answer's warnings. `data: {}` is SCAN's
/// "nothing under this prefix"; otherwise `data.keys` must be an array of strings.
fn listing_page(request: &str, body: &[u8]) -> Result<ListData> {
    let bad = |message: String| VaultError::Decode {
        request: request.to_owned(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("listing body is not JSON: {e}")))?;
    let serde_json::Value::Object(mut top) = value else {
        return Err(bad("listing body is not a JSON object".into()));
    };
    let data = match top.remove("data") {
        None => return Err(bad("no `data` in the listing".into())),
        Some(serde_json::Value::Null) => return Err(bad("`data` is null in the listing".into())),
        Some(serde_json::Value::Object(data)) => data,
        Some(_) => return Err(bad("`data` is not an object in the listing".into())),
    };
    if !data.contains_key("keys") {
        if data.is_empty() {
            return Ok(ListData::default());
        }
        let fields: Vec<&str> = data.keys().map(String::as_str).collect();
        return Err(bad(format!("no `data.keys` in the listing, but `data` holds {}", fields.join(", "))));
    }
    let mut page: ListData = serde_json::from_value(serde_json::Value::Object(data))
        .map_err(|e| bad(format!("`data` of the listing: {e}")))?;
    page.warnings = strings(top.get("warnings"));
    Ok(page)
}

/// Whether a listing's warnings say the server ignored `limit` or `after`: OpenBao's and
/// Vault's request framework warn `Endpoint ignored these unrecognized parameters: [after
/// limit]` for parameters an endpoint does not have (KV v1 on OpenBao; every KV endpoint on
/// HashiCorp Vault, which has no paginated LIST).
fn ignored_paging(warnings: &[String]) -> bool {
    warnings.iter().any(|w| {
        w.split_once("ignored these unrecognized parameters").is_some_and(|(_, names)| {
            names
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|name| name == "limit" || name == "after")
        })
    })
}

/// What one checked LIST page says about the rest of its folder.
#[derive(Debug, PartialEq, Eq)]
enum PageEnd {
    /// The folder is complete.
    Last,
    /// A full page: the next one starts after this key.
    After(String),
}

/// Checks one page of a LIST asked for with `limit=page_size` (and `after`, past the first
/// page) and says whether the folder goes on. `Err` describes a page that a paginating server
/// cannot have sent; such a folder listing cannot be trusted to be complete.
///
/// Keys are compared as bytes, the order OpenBao pages in (Go string order). Guarding
/// against a server that ignores the parameters:
/// - it says so in a warning (`ignored`): the first answer is the whole folder; on a later
///   page the server contradicts its earlier pages, an error;
/// - silently, with more keys than the limit on the first page: that can only be the whole
///   folder, and is taken as it is;
/// - silently, with a full first page: the next page repeats it (keys not after `after`),
///   an error, so a server that pages nothing never loops.
fn next_page(keys: &[String], after: Option<&str>, page_size: usize, ignored: bool) -> Result<PageEnd, String> {
    let Some(after) = after else {
        // The first page. Fewer keys than asked for is the whole folder; so is the answer of a
        // server that does not page (it says so, or it sends more keys than the limit).
        if ignored || keys.len() != page_size {
            return Ok(PageEnd::Last);
        }
        // A full first page: the next page starts after its last key, which must then be the
        // greatest, or keys between would be skipped.
        if let Some(w) = keys.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!("a full page is not in ascending order (`{}` before `{}`)", w[0], w[1]));
        }
        return Ok(keys.last().map_or(PageEnd::Last, |k| PageEnd::After(k.clone())));
    };
    if ignored {
        return Err(format!("it says it ignored `limit`/`after` on the page after `{after}`, having paged before"));
    }
    if keys.len() > page_size {
        return Err(format!("{} keys after `{after}`, more than the limit of {page_size}", keys.len()));
    }
    if let Some(first) = keys.first().filter(|k| k.as_str() <= after) {
        return Err(format!("the page after `{after}` starts at `{first}`: it repeats or goes backwards"));
    }
    if let Some(w) = keys.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!("the page after `{after}` is not in ascending order (`{}` before `{}`)", w[0], w[1]));
    }
    match keys.last() {
        Some(last) if keys.len() == page_size => Ok(PageEnd::After(last.clone())),
        _ => Ok(PageEnd::Last),
    }
}

/// An error body: `{"errors":[...]}`.
#[derive(Deserialize, Default)]
struct Errors {
    #[serde(default)]
    errors: Vec<String>,
}

fn errors_of(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Errors>(body).map(|e| e.errors).unwrap_or_default()
}

#[derive(Deserialize)]
struct MountBody {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    options: Option<MountOptions>,
    #[serde(default)]
    uuid: String,
}

#[derive(Deserialize)]
struct MountOptions {
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
struct Wrapped<T> {
    data: T,
}

#[derive(Deserialize, Default)]
struct ListData {
    #[serde(default)]
    keys: Vec<String>,
    /// The answer's top-level `warnings` (filled in by [`listing_page`]).
    #[serde(skip)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct DataResponse {
    data: Option<DataInner>,
}

#[derive(Deserialize)]
struct DataInner {
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    metadata: Option<VersionMeta>,
}

#[derive(Serialize)]
struct WriteBody<'a> {
    options: WriteOptions,
    data: &'a RawValue,
}

#[derive(Serialize)]
struct WriteOptions {
    cas: u64,
}

/// Settings of a KV v2 key that a metadata write sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetadataSettings {
    /// Versions to keep (0: mount default).
    pub max_versions: u64,
    /// Require CAS on writes.
    pub cas_required: bool,
    /// Auto soft-delete delay (`"0s"`: off).
    pub delete_version_after: String,
    /// User metadata.
    pub custom_metadata: std::collections::BTreeMap<String, String>,
}

impl VaultClient {
    /// Looks up a mount: its KV version and UUID.
    ///
    /// Uses `sys/internal/ui/mounts/<mount>`, which any token with a capability under the
    /// mount may read, and falls back to `sys/mounts/<mount>` (needs `read` on it).
    pub async fn mount_info(&self, mount: &str) -> Result<MountInfo> {
        let normalized = vsync_core::normalize_mount(mount)?;
        let prefix = Self::mount_prefix(&normalized)?;
        let ui = self
            .call(RequestKind::Other, Method::GET, &format!("sys/internal/ui/mounts/{prefix}"), &[], None)
            .await;
        let answer = match ui {
            Ok(a) if a.status.is_success() => a,
            Ok(a) => return Err(self.mount_not_found(&normalized, &a.body)),
            Err(VaultError::PermissionDenied { .. }) | Err(VaultError::Rejected { .. }) => {
                let a = self
                    .call(RequestKind::Other, Method::GET, &format!("sys/mounts/{prefix}"), &[], None)
                    .await
                    .map_err(|e| match e {
                        VaultError::Rejected { message, .. } if message.contains("No secret engine mount") => {
                            VaultError::MountNotFound {
                                mount: normalized.clone(),
                                address: self.address.clone(),
                                message,
                            }
                        }
                        other => other,
                    })?;
                if !a.status.is_success() {
                    return Err(self.mount_not_found(&normalized, &a.body));
                }
                a
            }
            Err(e) => return Err(e),
        };
        let request = format!("GET sys/internal/ui/mounts/{prefix}");
        // The same fields appear at top level and under `data`; prefer `data`.
        let value: serde_json::Value = decode(&request, &answer.body)?;
        let body = value.get("data").filter(|d| d.get("type").is_some()).unwrap_or(&value);
        let body: MountBody = serde_json::from_value(body.clone()).map_err(|e| VaultError::Decode {
            request: request.clone(),
            message: e.to_string(),
        })?;
        let kind = match (body.kind.as_str(), body.options.and_then(|o| o.version).as_deref()) {
            ("kv", Some("2")) => KvVersion::V2,
            // A kv mount without a version option is KV v1; `generic` is KV v1's old name.
            ("kv", _) | ("generic", _) => KvVersion::V1,
            ("kv-v2", _) => KvVersion::V2,
            (other, _) => {
                return Err(VaultError::NotKv {
                    mount: normalized,
                    kind: other.to_owned(),
                });
            }
        };
        Ok(MountInfo {
            path: normalized,
            kind,
            uuid: body.uuid,
        })
    }

    /// Accepts a 404 only when it is KV's "nothing here"; anything else fails `request`.
    fn expect_empty_404(&self, request: &str, mount: &str, body: &[u8]) -> Result<()> {
        match classify_404(body) {
            NotFound::Empty => Ok(()),
            NotFound::NoMount(message) => Err(VaultError::MountNotFound {
                mount: mount.to_owned(),
                address: self.address.clone(),
                message,
            }),
            NotFound::Unsupported(message) | NotFound::Other(message) => Err(VaultError::UnexpectedNotFound {
                request: request.to_owned(),
                message,
            }),
        }
    }

    fn mount_not_found(&self, mount: &str, body: &[u8]) -> VaultError {
        VaultError::MountNotFound {
            mount: mount.to_owned(),
            address: self.address.clone(),
            message: errors_of(body).join("; "),
        }
    }

    /// Lists every secret under a mount, recursively, sorted by path (see
    /// [`Self::scan_secrets`], which hands secrets on as they arrive instead of collecting them).
    pub async fn list_secrets(&self, mount: &MountInfo) -> Result<Vec<ListedSecret>> {
        let mut out = Vec::new();
        self.scan_secrets(mount, |s| {
            out.push(s);
            Ok(())
        })
        .await?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Hands every secret under a mount to `each`, recursively, in the order the server sends
    /// them (unsorted), without holding the listing: memory stays flat however large the mount.
    ///
    /// On OpenBao a KV v2 mount is read with one `SCAN <mount>/detailed-metadata/`, which also
    /// returns every key's metadata; KV v1 with one `SCAN <mount>/`. The answer is decoded as it
    /// arrives ([`crate::listing`]). Servers without SCAN (Vault) or tokens without the `scan`
    /// capability fall back to a LIST walk (remembered per mount), which pages every KV v2
    /// folder and fails with [`VaultError::PaginationLimited`] when the token's policy refuses
    /// the page size. An empty mount (SCAN 200
    /// `data: {}`, LIST 404 `{"errors":[]}`) hands nothing on; any answer that is not one of
    /// KV's "empty" answers fails (see the module docs), possibly after some secrets were
    /// handed on: the caller discards a failed listing whole. An error from `each` stops the
    /// listing and is returned.
    pub async fn scan_secrets<F>(&self, mount: &MountInfo, mut each: F) -> Result<()>
    where
        F: FnMut(ListedSecret) -> Result<()> + Send,
    {
        let prefix = Self::mount_prefix(&mount.path)?;
        let scan_known_bad = self
            .scan_unsupported
            .lock()
            .map(|s| s.contains(&mount.path))
            .unwrap_or(false);
        if !scan_known_bad {
            if self.scan(mount, &prefix, &mut each).await? {
                return Ok(());
            }
            debug!(mount = %mount.path, "SCAN not available, falling back to LIST walk");
            if let Ok(mut s) = self.scan_unsupported.lock() {
                s.insert(mount.path.clone());
            }
        }
        self.list_walk(mount, &prefix, &mut each).await
    }

    /// `Ok(false)` when SCAN is not supported or not permitted, so the caller walks instead
    /// (nothing was handed on then).
    ///
    /// "Not supported" is what real servers answer then: 405 or 400 for an unknown method
    /// (Vault, older OpenBao), 403 without the `scan` capability, and a 404 that says the path
    /// or operation is unsupported (see [`NotFound::Unsupported`]). A 404 naming a missing mount
    /// or any other odd answer is an error, not a reason to walk: the walk would be remembered
    /// for the mount, and the answer says nothing about SCAN support.
    async fn scan<F>(&self, mount: &MountInfo, prefix: &str, each: &mut F) -> Result<bool>
    where
        F: FnMut(ListedSecret) -> Result<()> + Send,
    {
        let api = match mount.kind {
            KvVersion::V2 => format!("{prefix}/detailed-metadata/"),
            KvVersion::V1 => format!("{prefix}/"),
        };
        let request = format!("SCAN {api}");
        let resp = match self.call_streamed(RequestKind::List, method("SCAN"), &api).await {
            Ok(Reply::Streamed(resp)) => resp,
            Ok(Reply::Whole(answer)) => {
                // Only a 404 is read whole.
                return match classify_404(&answer.body) {
                    NotFound::Empty => Ok(true),
                    NotFound::Unsupported(message) => {
                        debug!(%request, %message, "SCAN path unsupported by the server");
                        Ok(false)
                    }
                    NotFound::NoMount(message) => Err(VaultError::MountNotFound {
                        mount: mount.path.clone(),
                        address: self.address.clone(),
                        message,
                    }),
                    NotFound::Other(message) => Err(VaultError::UnexpectedNotFound { request, message }),
                };
            }
            // 405/400 (method unknown), 403 (no scan capability): walk instead. A dead token
            // fails the walk with the same 403, so nothing is hidden.
            Err(VaultError::PermissionDenied { .. }) | Err(VaultError::Rejected { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.decode_streamed(&request, mount.kind, resp, each).await?;
        Ok(true)
    }

    /// Pumps a listing body to a decoding thread and hands its secrets to `each` in batches;
    /// bounded channels keep at most a few chunks and batches in flight.
    async fn decode_streamed<F>(&self, request: &str, kind: KvVersion, mut resp: crate::transport::Response, each: &mut F) -> Result<()>
    where
        F: FnMut(ListedSecret) -> Result<()> + Send,
    {
        let (chunk_tx, chunk_rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(8);
        let (batch_tx, mut batch_rx) = tokio::sync::mpsc::channel::<Vec<ListedSecret>>(4);
        let decoder = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(listing::BATCH);
            let mut emit = |s: ListedSecret| {
                batch.push(s);
                if batch.len() >= listing::BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(listing::BATCH));
                    batch_tx.blocking_send(full).map_err(|_| "the listing's reader stopped".to_owned())?;
                }
                Ok(())
            };
            listing::decode(listing::ChunkReader::new(chunk_rx), kind, &mut emit)?;
            if !batch.is_empty() {
                batch_tx.blocking_send(batch).map_err(|_| "the listing's reader stopped".to_owned())?;
            }
            Ok::<(), String>(())
        });
        let pump = async move {
            loop {
                match resp.body.chunk().await {
                    Ok(Some(chunk)) => {
                        if chunk_tx.send(Ok(chunk)).await.is_err() {
                            return Ok(()); // the decoder stopped; it says why
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(source) => {
                        let _ = chunk_tx.send(Err(std::io::Error::other("body cut off"))).await;
                        return Err(VaultError::Connection {
                            request: request.to_owned(),
                            address: self.address.clone(),
                            source,
                        });
                    }
                }
            }
        };
        let drain = async move {
            while let Some(batch) = batch_rx.recv().await {
                for secret in batch {
                    each(secret)?;
                }
            }
            Ok::<(), VaultError>(())
        };
        let (pumped, drained) = tokio::join!(pump, drain);
        let decoded = decoder.await.map_err(|e| VaultError::Decode {
            request: request.to_owned(),
            message: format!("listing decoder failed: {e}"),
        })?;
        // The consumer's own error first, then a cut-off body, then what the decoder saw.
        drained?;
        pumped?;
        decoded.map_err(|message| VaultError::Decode { request: request.to_owned(), message })
    }

    /// Walks a mount folder by folder with LIST (used when SCAN is unavailable or refused).
    /// KV v2 folders are paged ([`Self::list_folder_paged`]); KV v1 folders are listed whole
    /// ([`Self::list_folder_whole`]).
    async fn list_walk<F>(&self, mount: &MountInfo, prefix: &str, each: &mut F) -> Result<()>
    where
        F: FnMut(ListedSecret) -> Result<()> + Send,
    {
        let base = match mount.kind {
            KvVersion::V2 => format!("{prefix}/metadata"),
            KvVersion::V1 => prefix.to_owned(),
        };
        let mut folders = VecDeque::from([String::new()]);
        while let Some(folder) = folders.pop_front() {
            let api = format!("{}/", Self::api_path(&base, folder.trim_end_matches('/'))?);
            let mut hand_on = |key: String| {
                let full = format!("{folder}{key}");
                if key.ends_with('/') {
                    folders.push_back(full);
                    Ok(())
                } else {
                    each(ListedSecret { path: full, metadata: None })
                }
            };
            match mount.kind {
                KvVersion::V2 => self.list_folder_paged(mount, &folder, &api, &mut hand_on).await?,
                KvVersion::V1 => self.list_folder_whole(mount, &api, &mut hand_on).await?,
            }
        }
        Ok(())
    }

    /// Lists one KV v1 folder with a single plain LIST.
    ///
    /// KV v1 has no pagination, and an ACL `pagination_limit` does not cut its listing short:
    /// the policy's limit reaches the KV v1 handler as a `limit` parameter it does not know, so
    /// it answers with every key and the warning `Endpoint ignored these unrecognized
    /// parameters: [limit]` (observed on OpenBao 2.7.2). Asking
    /// for pages would gain nothing and would be refused (403) for a `limit` above the policy's.
    async fn list_folder_whole<H>(&self, mount: &MountInfo, api: &str, hand_on: &mut H) -> Result<()>
    where
        H: FnMut(String) -> Result<()> + Send,
    {
        let request = format!("LIST {api}");
        let answer = self.call(RequestKind::List, method("LIST"), api, &[], None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            // Only `{"errors":[]}` is an empty mount or a folder that vanished since its
            // parent was listed; anything else would silently drop the folder's keys.
            return self.expect_empty_404(&request, &mount.path, &answer.body);
        }
        for key in listing_page(&request, &answer.body)?.keys {
            hand_on(key)?;
        }
        Ok(())
    }

    /// Lists one KV v2 folder in pages of `list_page_size` keys (`LIST ?limit=N&after=<last
    /// key of the previous page>`) until a shorter page.
    ///
    /// A plain LIST cannot be trusted on OpenBao: under an ACL `pagination_limit` it answers
    /// with the first keys only, with no error or warning, and the keys it leaves out would read
    /// as deleted. With an explicit `limit` the server either pages correctly or refuses the
    /// page size (403, see [`Self::refused_page`]). A server without pagination (HashiCorp
    /// Vault) says it ignored `limit`/`after`, and its answer is then the whole folder; one
    /// that ignores them silently is caught by [`next_page`]. Each page is checked before its
    /// keys are handed on.
    async fn list_folder_paged<H>(&self, mount: &MountInfo, folder: &str, api: &str, hand_on: &mut H) -> Result<()>
    where
        H: FnMut(String) -> Result<()> + Send,
    {
        let request = format!("LIST {api}");
        let page_size = self.list_page_size;
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", page_size.to_string())];
            if let Some(key) = &after {
                query.push(("after", key.clone()));
            }
            let answer = match self.call(RequestKind::List, method("LIST"), api, &query, None).await {
                Ok(answer) => answer,
                Err(denied @ VaultError::PermissionDenied { .. }) => {
                    return Err(self.refused_page(mount, folder, api, denied).await);
                }
                Err(e) => return Err(e),
            };
            if answer.status == StatusCode::NOT_FOUND {
                // `{"errors":[]}`: on the first page an empty or vanished folder; after a full
                // page, the end of the folder (OpenBao answers an `after` past the last key so).
                return self.expect_empty_404(&request, &mount.path, &answer.body);
            }
            let page = listing_page(&request, &answer.body)?;
            let end = next_page(&page.keys, after.as_deref(), page_size, ignored_paging(&page.warnings))
                .map_err(|message| VaultError::PagingBroken { request: request.clone(), message })?;
            for key in page.keys {
                hand_on(key)?;
            }
            match end {
                PageEnd::Last => return Ok(()),
                PageEnd::After(key) => after = Some(key),
            }
        }
    }

    /// Explains a 403 on a LIST page. OpenBao refuses a `limit` above the token's ACL
    /// `pagination_limit` with a plain 403, so the same folder is asked for once more without
    /// `limit`: if that is allowed, the page size is what was refused
    /// ([`VaultError::PaginationLimited`]). The plain answer is only a probe: it is never used
    /// as the folder's listing, since under the limit it holds only the first keys. If it is
    /// refused too, the token may not list the folder at all: the original 403 stands.
    async fn refused_page(&self, mount: &MountInfo, folder: &str, api: &str, denied: VaultError) -> VaultError {
        match self.call(RequestKind::List, method("LIST"), api, &[], None).await {
            // A 200 or a 404 `{"errors":[]}`: LIST itself is allowed.
            Ok(_) => VaultError::PaginationLimited {
                request: format!("LIST {api}"),
                mount: mount.path.clone(),
                folder: folder.to_owned(),
                page_size: self.list_page_size,
            },
            Err(VaultError::PermissionDenied { .. }) => denied,
            Err(other) => other,
        }
    }

    /// Reads KV v2 metadata; `None` if the key does not exist (404 `{"errors":[]}` only: a 404
    /// with an error text, e.g. the mount vanished, is an error, not a deleted key).
    pub async fn read_metadata(&self, mount: &str, path: &str) -> Result<Option<KvMetadata>> {
        let api = Self::api_path(&format!("{}/metadata", Self::mount_prefix(mount)?), path)?;
        let request = format!("GET {api}");
        let answer = self.call(RequestKind::MetadataRead, Method::GET, &api, &[], None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            self.expect_empty_404(&request, mount, &answer.body)?;
            return Ok(None);
        }
        // The key is named: metadata without `current_version` or `versions` is refused (see
        // `KvMetadata`), and the operator needs to know which key the server described so.
        let w: Wrapped<KvMetadata> = serde_json::from_slice(&answer.body).map_err(|e| VaultError::Decode {
            request,
            message: format!("metadata of `{path}`: {e}"),
        })?;
        Ok(Some(w.data))
    }

    /// Writes KV v2 key settings (creates the metadata if missing).
    pub async fn write_metadata(&self, mount: &str, path: &str, settings: &MetadataSettings) -> Result<()> {
        let api = Self::api_path(&format!("{}/metadata", Self::mount_prefix(mount)?), path)?;
        let body = serde_json::to_vec(settings).map_err(|e| VaultError::Config(e.to_string()))?;
        self.call(RequestKind::MetadataWrite, Method::POST, &api, &[], Some((body, "application/json")))
            .await?;
        Ok(())
    }

    /// Removes a KV v2 key entirely (all versions and metadata). Succeeds if it is missing.
    pub async fn delete_metadata(&self, mount: &str, path: &str) -> Result<()> {
        let api = Self::api_path(&format!("{}/metadata", Self::mount_prefix(mount)?), path)?;
        self.call(RequestKind::MetadataWrite, Method::DELETE, &api, &[], None).await?;
        Ok(())
    }

    /// Reads KV v2 data at exactly `version` (never "latest": 0 would mean latest).
    pub async fn read_version(&self, mount: &str, path: &str, version: u64) -> Result<DataRead> {
        if version == 0 {
            return Err(VaultError::Config(format!(
                "refusing to read `{path}` at version 0, which the server reads as latest"
            )));
        }
        let api = Self::api_path(&format!("{}/data", Self::mount_prefix(mount)?), path)?;
        self.read_data(mount, &api, &[("version", version.to_string())]).await
    }

    /// Reads the latest KV v2 version (used on destinations and in tests).
    pub async fn read_latest(&self, mount: &str, path: &str) -> Result<DataRead> {
        let api = Self::api_path(&format!("{}/data", Self::mount_prefix(mount)?), path)?;
        self.read_data(mount, &api, &[]).await
    }

    async fn read_data(&self, mount: &str, api: &str, query: &[(&str, String)]) -> Result<DataRead> {
        let request = format!("GET {api}");
        let answer = self.call(RequestKind::DataRead, Method::GET, api, query, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            // A 404 with the version's metadata is a deleted or destroyed version (reference
            // 1.4); a missing key or version is exactly `{"errors":[]}`; anything else is not
            // "missing" (a missing version would let the caller skip or overwrite it).
            if let Ok(DataResponse {
                data: Some(DataInner { metadata: Some(meta), .. }),
            }) = serde_json::from_slice::<DataResponse>(&answer.body)
            {
                return Ok(if meta.destroyed { DataRead::Destroyed(meta) } else { DataRead::Deleted(meta) });
            }
            self.expect_empty_404(&request, mount, &answer.body)?;
            return Ok(DataRead::Missing);
        }
        let inner = decode::<DataResponse>(&request, &answer.body)?.data.ok_or_else(|| VaultError::Decode {
            request: request.clone(),
            message: "no `data` in a successful read".into(),
        })?;
        let meta = inner.metadata.ok_or_else(|| VaultError::Decode {
            request: request.clone(),
            message: "no `data.metadata` in a successful read".into(),
        })?;
        // `data: null` is a valid stored value; keep it as the JSON text `null`.
        let data = match inner.data {
            Some(raw) => SecretData::from_raw(raw),
            None => SecretData::from_json("null").map_err(|e| VaultError::Decode {
                request,
                message: e.to_string(),
            })?,
        };
        Ok(DataRead::Live(data, meta))
    }

    /// Writes a new KV v2 version with `options.cas = cas` (the version the caller believes is
    /// current, 0 for a new key) and checks the server wrote `cas + 1`.
    pub async fn write_version(&self, mount: &str, path: &str, data: &SecretData, cas: u64) -> Result<VersionMeta> {
        let api = Self::api_path(&format!("{}/data", Self::mount_prefix(mount)?), path)?;
        let request = format!("POST {api}");
        let body = serde_json::to_vec(&WriteBody {
            options: WriteOptions { cas },
            data: data.raw(),
        })
        .map_err(|e| VaultError::Config(e.to_string()))?;
        let answer = self
            .call(RequestKind::DataWrite, Method::POST, &api, &[], Some((body, "application/json")))
            .await?;
        let meta: Wrapped<VersionMeta> = decode(&request, &answer.body)?;
        if meta.data.version != cas + 1 {
            return Err(VaultError::UnexpectedVersion {
                request,
                expected: cas + 1,
                got: meta.data.version,
            });
        }
        Ok(meta.data)
    }

    /// Soft-deletes the latest KV v2 version (no-op if already deleted or missing).
    pub async fn soft_delete_latest(&self, mount: &str, path: &str) -> Result<()> {
        let api = Self::api_path(&format!("{}/data", Self::mount_prefix(mount)?), path)?;
        self.call(RequestKind::MetadataWrite, Method::DELETE, &api, &[], None).await?;
        Ok(())
    }

    async fn versions_op(&self, op: &str, mount: &str, path: &str, versions: &[u64]) -> Result<()> {
        let api = Self::api_path(&format!("{}/{op}", Self::mount_prefix(mount)?), path)?;
        let body = serde_json::to_vec(&serde_json::json!({ "versions": versions }))
            .map_err(|e| VaultError::Config(e.to_string()))?;
        self.call(RequestKind::MetadataWrite, Method::POST, &api, &[], Some((body, "application/json")))
            .await?;
        Ok(())
    }

    /// Soft-deletes the given KV v2 versions.
    pub async fn delete_versions(&self, mount: &str, path: &str, versions: &[u64]) -> Result<()> {
        self.versions_op("delete", mount, path, versions).await
    }

    /// Undeletes the given KV v2 versions.
    pub async fn undelete_versions(&self, mount: &str, path: &str, versions: &[u64]) -> Result<()> {
        self.versions_op("undelete", mount, path, versions).await
    }

    /// Destroys the given KV v2 versions (their data is gone for good).
    pub async fn destroy_versions(&self, mount: &str, path: &str, versions: &[u64]) -> Result<()> {
        self.versions_op("destroy", mount, path, versions).await
    }

    /// Reads a KV v1 value; `None` if missing (404 `{"errors":[]}` only; a KV v2 mount answers
    /// a KV v1 read with a 404 and a warning, which is an error).
    pub async fn read_v1(&self, mount: &str, path: &str) -> Result<Option<SecretData>> {
        let api = Self::api_path(&Self::mount_prefix(mount)?, path)?;
        let request = format!("GET {api}");
        let answer = self.call(RequestKind::DataRead, Method::GET, &api, &[], None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            self.expect_empty_404(&request, mount, &answer.body)?;
            return Ok(None);
        }
        let inner: Wrapped<Box<RawValue>> = decode(&request, &answer.body)?;
        Ok(Some(SecretData::from_raw(inner.data)))
    }

    /// Writes a KV v1 value (replaces it whole).
    pub async fn write_v1(&self, mount: &str, path: &str, data: &SecretData) -> Result<()> {
        let api = Self::api_path(&Self::mount_prefix(mount)?, path)?;
        self.call(
            RequestKind::DataWrite,
            Method::POST,
            &api,
            &[],
            Some((data.as_json().as_bytes().to_vec(), "application/json")),
        )
        .await?;
        Ok(())
    }

    /// Deletes a KV v1 value (succeeds if missing).
    pub async fn delete_v1(&self, mount: &str, path: &str) -> Result<()> {
        let api = Self::api_path(&Self::mount_prefix(mount)?, path)?;
        self.call(RequestKind::MetadataWrite, Method::DELETE, &api, &[], None).await?;
        Ok(())
    }

    /// Sends an administrative request to a trusted API path (`sys/...`, `auth/...`) and returns
    /// the status and the parsed body (if any). Used by checks and test set-up.
    pub async fn sys(
        &self,
        method_name: &'static str,
        api_path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Option<serde_json::Value>)> {
        let body = body
            .map(|b| serde_json::to_vec(&b).map(|v| (v, "application/json")))
            .transpose()
            .map_err(|e| VaultError::Config(e.to_string()))?;
        let answer = self
            .call(RequestKind::Other, method(method_name), api_path, &[], body)
            .await?;
        let parsed = if answer.body.is_empty() {
            None
        } else {
            Some(decode(&format!("{method_name} {api_path}"), &answer.body)?)
        };
        Ok((answer.status.as_u16(), parsed))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_an_empty_errors_array_is_an_empty_404() {
        assert_eq!(classify_404(br#"{"errors":[]}"#), NotFound::Empty);
        assert_eq!(classify_404(b" { \"errors\" : [ ] }\n"), NotFound::Empty);
        for body in [&b""[..], b"{}", b"[]", b"null", b"<html>", br#"{"errors":["x"]}"#,
            br#"{"errors":[],"data":null}"#, br#"{"errors":{}}"#, br#"{"data":null}"#]
        {
            assert!(matches!(classify_404(body), NotFound::Other(_)), "{}", String::from_utf8_lossy(body));
        }
        assert!(matches!(
            classify_404(br#"{"errors":["no handler for route \"m/x\". route entry not found."]}"#),
            NotFound::NoMount(m) if m.contains("m/x")
        ));
        assert!(matches!(classify_404(br#"{"errors":["1 error occurred:\n\t* unsupported path\n\n"]}"#), NotFound::Unsupported(_)));
        assert!(matches!(
            classify_404(br#"{"data":null,"warnings":["Invalid path for a versioned K/V secrets engine."]}"#),
            NotFound::Unsupported(m) if m.contains("Invalid path")
        ));
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn pages_go_on_only_after_a_full_ascending_page() {
        assert_eq!(next_page(&keys(&["a", "b"]), None, 3, false), Ok(PageEnd::Last));
        assert_eq!(next_page(&keys(&[]), None, 3, false), Ok(PageEnd::Last));
        assert_eq!(next_page(&keys(&["a", "b", "c/"]), None, 3, false), Ok(PageEnd::After("c/".into())));
        assert_eq!(next_page(&keys(&["d", "e", "f"]), Some("c/"), 3, false), Ok(PageEnd::After("f".into())));
        assert_eq!(next_page(&keys(&["d"]), Some("c/"), 3, false), Ok(PageEnd::Last));
        assert_eq!(next_page(&keys(&[]), Some("c/"), 3, false), Ok(PageEnd::Last));
        // Byte order, as Go compares strings: "both" < "both/" < "bz" < "ключ".
        assert_eq!(next_page(&keys(&["both", "both/", "bz"]), None, 3, false), Ok(PageEnd::After("bz".into())));
        assert_eq!(next_page(&keys(&["ключ"]), Some("bz"), 3, false), Ok(PageEnd::Last));
    }

    #[test]
    fn a_server_that_does_not_page_is_whole_or_an_error_never_a_loop() {
        // It says it ignored the parameters: its first answer is the whole folder, any size.
        for n in [1, 3, 5] {
            let ks: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
            assert_eq!(next_page(&ks, None, 3, true), Ok(PageEnd::Last), "{n}");
        }
        assert!(next_page(&keys(&["x"]), Some("c"), 3, true).unwrap_err().contains("ignored"));
        // Silently: more than the limit on the first page is the whole folder (even unsorted).
        assert_eq!(next_page(&keys(&["z", "a", "b", "c"]), None, 3, false), Ok(PageEnd::Last));
        // A repeated, backward or overlapping page after `after` is an error.
        for (page, after) in [(&["a", "b", "c"][..], "c"), (&["a"][..], "c"), (&["c", "d"][..], "c"), (&["b", "d"][..], "c")] {
            let e = next_page(&keys(page), Some(after), 3, false).unwrap_err();
            assert!(e.contains("repeats or goes backwards"), "{page:?}: {e}");
        }
        assert!(next_page(&keys(&["d", "e", "f", "g"]), Some("c"), 3, false).unwrap_err().contains("more than the limit"));
        assert!(next_page(&keys(&["e", "d"]), Some("c"), 3, false).unwrap_err().contains("ascending"));
        // A full first page out of order would make `after` skip keys.
        assert!(next_page(&keys(&["b", "a", "c"]), None, 3, false).unwrap_err().contains("ascending"));
        assert!(next_page(&keys(&["a", "a", "c"]), None, 3, false).unwrap_err().contains("ascending"));
    }

    #[test]
    fn ignored_paging_is_read_from_the_framework_warning() {
        let w = |t: &str| vec![t.to_owned()];
        assert!(ignored_paging(&w("Endpoint ignored these unrecognized parameters: [after limit]")));
        assert!(ignored_paging(&w("Endpoint ignored these unrecognized parameters: [limit]")));
        assert!(ignored_paging(&w("Endpoint ignored these unrecognized parameters: [after]")));
        assert!(!ignored_paging(&w("Endpoint ignored these unrecognized parameters: [list]")));
        assert!(!ignored_paging(&w("Endpoint ignored these unrecognized parameters: [limits afterwards]")));
        assert!(!ignored_paging(&w("limit and after were fine")));
        assert!(!ignored_paging(&[]));
    }

    #[test]
    fn listings_need_data_with_string_keys() {
        let keys = |body: &str| listing_page("SCAN m/", body.as_bytes()).map(|d| d.keys);
        assert_eq!(keys(r#"{"data":{}}"#).ok(), Some(vec![]));
        assert_eq!(keys(r#"{"data":{"keys":[]}}"#).ok(), Some(vec![]));
        assert_eq!(keys(r#"{"request_id":"r","data":{"keys":["a","b/"]},"warnings":null}"#).ok(), Some(vec!["a".to_owned(), "b/".to_owned()]));
        let page = listing_page("LIST m/", br#"{"data":{"keys":["a"]},"warnings":["w1","w2"]}"#).ok().map(|d| d.warnings);
        assert_eq!(page, Some(vec!["w1".to_owned(), "w2".to_owned()]));
        for body in ["", "{}", "[]", "x", r#"{"data":null}"#, r#"{"data":[]}"#, r#"{"data":{"keys":null}}"#,
            r#"{"data":{"keys":"a"}}"#, r#"{"data":{"keys":["a",1]}}"#, r#"{"data":{"key_info":{}}}"#]
        {
            assert!(matches!(keys(body), Err(VaultError::Decode { .. })), "{body}");
        }
    }
}
