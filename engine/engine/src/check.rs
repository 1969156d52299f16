//! Start-up checks (`vsync check`, and the same checks when a role starts): every problem at
//! once, each naming the side, the mount or store, and the missing capability. They run on the
//! clients and stores the roles use, so nothing logs in twice.
//!
//! - state stores: read, write, update and delete of a probe document under each role's own
//!   side (a destination only reads the origin's side);
//! - origin Vault: the mount exists and is KV (type and UUID reported), list and read work;
//! - destination Vault: create, read, update, list and delete of a probe secret under the
//!   reserved folder `.vsync-check/` of every mapped mount, removed afterwards.

use std::fmt;

use serde_json::json;
use vsync_core::KvVersion;
use vsync_state::StateStore;
use vsync_vault::{DataRead, SecretData, VaultClient, VaultError};

use crate::sides::{ORIGIN_SIDE, side_name};

/// The reserved destination folder for probe secrets.
pub const PROBE_FOLDER: &str = ".vsync-check";

/// One checked item.
#[derive(Debug, Clone)]
pub struct Finding {
    /// `origin`, `destination eu`.
    pub side: String,
    /// What was checked (`vault mount secret/`, `state store ...`).
    pub subject: String,
    /// `None`: fine (with a note); `Some`: the problem.
    pub problem: Option<String>,
    /// Details for a passing check (kind, UUID).
    pub note: String,
    /// The problem is the side's Vault being unreachable or sealed: a transient fault of that
    /// side alone. A role starts without the side and retries it on its own schedule;
    /// `vsync check` still fails on it.
    pub transient: bool,
    /// Works, but at a cost the operator should know of (printed, never a failure).
    pub warning: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.problem, &self.warning) {
            (None, None) => write!(f, "ok    {}: {}{}", self.side, self.subject, self.note),
            (None, Some(w)) => write!(f, "WARN  {}: {}{}: {w}", self.side, self.subject, self.note),
            (Some(p), _) => write!(f, "FAIL  {}: {}: {p}", self.side, self.subject),
        }
    }
}

/// A part a check looks at: built, or the reason it could not be (a failed login, a bad
/// store setting), which is itself a finding.
pub type Part<'a, T> = Result<&'a T, String>;

/// The origin's side of the checks.
#[derive(Debug)]
pub struct OriginParts<'a> {
    /// The origin Vault.
    pub vault: Part<'a, VaultClient>,
    /// The origin's state store.
    pub store: Part<'a, StateStore>,
    /// Origin mounts, normalised.
    pub mounts: &'a [String],
    /// Whether the origin role runs here (probe writes on its side) or only destinations
    /// (read the origin's side only).
    pub writes: bool,
}

/// One destination's side of the checks.
#[derive(Debug)]
pub struct DestinationParts<'a> {
    /// Destination name.
    pub name: &'a str,
    /// Its Vault.
    pub vault: Part<'a, VaultClient>,
    /// Its state store.
    pub store: Part<'a, StateStore>,
    /// Origin mount -> destination mount, normalised.
    pub mounts: std::collections::BTreeMap<String, String>,
    /// `versions = "all"`: the destination mounts' preconditions and matching KV versions are
    /// checked too.
    pub exact: bool,
    /// The login (AppRole, JWT) could not reach the server yet: why. The side is unavailable
    /// until a later login succeeds.
    pub login_pending: Option<String>,
}

#[derive(Debug, Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn push(&mut self, side: &str, subject: impl Into<String>, result: Result<String, String>) {
        let (problem, note) = match result {
            Ok(note) => (None, note),
            Err(p) => (Some(p), String::new()),
        };
        self.0.push(Finding {
            side: side.to_owned(),
            subject: subject.into(),
            problem,
            note,
            transient: false,
            warning: None,
        });
    }

    /// A side whose Vault is unreachable or sealed (see [`Finding::transient`]).
    fn push_unavailable(&mut self, side: &str, subject: impl Into<String>, why: String) {
        self.push(side, subject, Err(why));
        if let Some(last) = self.0.last_mut() {
            last.transient = true;
        }
    }

    /// A passing check with a warning.
    fn push_warning(&mut self, side: &str, subject: impl Into<String>, note: String, warning: String) {
        self.push(side, subject, Ok(note));
        if let Some(last) = self.0.last_mut() {
            last.warning = Some(warning);
        }
    }
}

/// Whether a Vault can serve at all: `Err` says why not (it cannot be reached, or it is
/// sealed). Any other answer, a refusal included, is left to the checks that follow.
pub async fn availability(client: &VaultClient) -> Result<(), String> {
    match client.sys("GET", "sys/seal-status", None).await {
        Ok((_, Some(body))) if body.get("sealed").and_then(serde_json::Value::as_bool) == Some(true) => {
            Err(format!("the server at {} is sealed", client.address()))
        }
        Ok(_) => Ok(()),
        Err(e @ (VaultError::Connection { .. } | VaultError::Sealed { .. } | VaultError::Server { .. })) => {
            Err(format!("cannot reach the server: {e}"))
        }
        Err(_) => Ok(()),
    }
}

/// Runs the checks; returns every finding (problems and passes).
pub async fn run(origin: &OriginParts<'_>, destinations: &[DestinationParts<'_>]) -> Vec<Finding> {
    let origin_kinds = match &origin.vault {
        Ok(client) => origin_kinds(client, origin.mounts).await,
        Err(_) => std::collections::BTreeMap::new(),
    };
    // The origin's checks and the destinations' run at once: between regions each is a few
    // round trips, and the sides are independent.
    let destinations_checked = async {
        let mut out = Findings::default();
        for d in destinations {
            check_destination(&mut out, d, &origin_kinds).await;
        }
        out
    };
    let (mut out, theirs) = tokio::join!(check_origin(origin), destinations_checked);
    out.0.extend(theirs.0);
    out.0
}

/// The origin's side: its client, its state store, and each mount (list, read, SCAN).
async fn check_origin(origin: &OriginParts<'_>) -> Findings {
    let mut out = Findings::default();
    if let Err(e) = &origin.vault {
        out.push("origin", "vault client", Err(e.clone()));
    }
    match &origin.store {
        Err(e) => out.push("origin", "state store", Err(e.clone())),
        Ok(store) if origin.writes => {
            let r = probe_store(store, ORIGIN_SIDE).await;
            out.push("origin", format!("state {}", store.describe()), r);
        }
        Ok(store) => {
            let r = store
                .read_root(ORIGIN_SIDE)
                .await
                .map(|root| if root.is_some() { " (origin info present)".into() } else { " (no origin info yet)".into() })
                .map_err(|e| format!("cannot read the origin's sync info: {e}"));
            out.push("origin", format!("state {} (read)", store.describe()), r);
        }
    }
    // Every role reads the origin (a destination reads the versions it copies).
    if let Ok(client) = &origin.vault {
        for m in origin.mounts {
            let subject = format!("vault {} mount {m}", client.address());
            match tokio::join!(origin_mount(client, m), scan_warning(client, m)) {
                (Ok(note), Some(warning)) => out.push_warning("origin", subject, note, warning),
                (r, _) => out.push("origin", subject, r),
            }
        }
    }
    out
}

/// The KV version of each origin mount that can be read (for the `versions = "all"` checks).
pub async fn origin_kinds(client: &VaultClient, mounts: &[String]) -> std::collections::BTreeMap<String, KvVersion> {
    let mut kinds = std::collections::BTreeMap::new();
    for m in mounts {
        if let Ok(info) = client.mount_info(m).await {
            kinds.insert(m.clone(), info.kind);
        }
    }
    kinds
}

/// The checks of one destination alone: what a destination that was unavailable at start-up
/// runs before its first cycle.
pub async fn destination(d: &DestinationParts<'_>, origin_kinds: &std::collections::BTreeMap<String, KvVersion>) -> Vec<Finding> {
    let mut out = Findings::default();
    check_destination(&mut out, d, origin_kinds).await;
    out.0
}

async fn check_destination(
    out: &mut Findings,
    d: &DestinationParts<'_>,
    origin_kinds: &std::collections::BTreeMap<String, KvVersion>,
) {
    let side = format!("destination {}", d.name);
    match &d.store {
        Ok(store) => {
            let r = probe_store(store, &side_name(d.name)).await;
            out.push(&side, format!("state {}", store.describe()), r);
        }
        Err(e) => out.push(&side, "state store", Err(e.clone())),
    }
    let client = match &d.vault {
        Ok(c) => c,
        Err(e) => {
            out.push(&side, "vault client", Err(e.clone()));
            return;
        }
    };
    if let Some(why) = &d.login_pending {
        out.push_unavailable(&side, format!("vault {} login", client.address()), why.clone());
        return;
    }
    if let Err(why) = availability(client).await {
        out.push_unavailable(&side, format!("vault {}", client.address()), why);
        return;
    }
    // The write probes and the `versions = "all"` checks are independent: run them at once.
    let (probes, exact) = tokio::join!(probe_mounts(client, d), exact_checks(client, d, origin_kinds));
    for (subject, r) in probes.into_iter().chain(exact) {
        out.push(&side, subject, r);
    }
}

/// The write probe of every mapped destination mount.
async fn probe_mounts(client: &VaultClient, d: &DestinationParts<'_>) -> Vec<(String, Result<String, String>)> {
    let mut mounts: Vec<&String> = d.mounts.values().collect();
    mounts.sort();
    mounts.dedup();
    let mut found = Vec::new();
    for m in mounts {
        found.push((format!("vault {} mount {m}", client.address()), destination_mount(client, m).await));
    }
    found
}

/// `versions = "all"`: each mapping joins mounts of one KV version, and KV v2 destination
/// mounts meet the preconditions.
async fn exact_checks(
    client: &VaultClient,
    d: &DestinationParts<'_>,
    origin_kinds: &std::collections::BTreeMap<String, KvVersion>,
) -> Vec<(String, Result<String, String>)> {
    let mut found = Vec::new();
    if !d.exact {
        return found;
    }
    for (from, to) in &d.mounts {
        let Ok(info) = client.mount_info(to).await else { continue };
        let subject = format!("versions = \"all\" on {from} -> {to}");
        let r = match origin_kinds.get(from) {
            Some(kind) if *kind != info.kind => Err(format!(
                "origin mount {from} is {kind} and destination mount {to} is {}; versions = \"all\" needs the \
                 same KV version on both sides (use versions = \"latest\")",
                info.kind
            )),
            _ if info.kind == KvVersion::V2 => crate::exact::check_mount(client, to).await.map(|()| " (max_versions 0, delete_version_after <= 0)".into()),
            _ => Ok(" (kv v1 to kv v1)".into()),
        };
        found.push((subject, r));
    }
    found
}

/// Write, read, update, delete of a probe document on the store, under `side`.
async fn probe_store(store: &StateStore, side: &str) -> Result<String, String> {
    store
        .probe(side)
        .await
        .map(|()| " (read, write, update, delete)".into())
        .map_err(|e| format!("{e}"))
}

fn mount_note(kind: KvVersion, uuid: &str) -> String {
    let kind = match kind {
        KvVersion::V1 => "kv v1",
        KvVersion::V2 => "kv v2",
    };
    format!(" ({kind}, uuid {uuid})")
}

/// On OpenBao, a token without the `scan` capability makes the origin walk each mount with
/// paged LIST requests instead of one SCAN: say what that costs. The probe scans the reserved
/// folder only (an empty answer), never the mount; a server without SCAN (HashiCorp Vault)
/// answers 405 or 400 and gets no warning.
async fn scan_warning(client: &VaultClient, mount: &str) -> Option<String> {
    let m = vsync_core::normalize_mount(mount).ok()?;
    let info = client.mount_info(&m).await.ok()?;
    let path = match info.kind {
        KvVersion::V2 => format!("{m}detailed-metadata/{PROBE_FOLDER}/"),
        KvVersion::V1 => format!("{m}{PROBE_FOLDER}/"),
    };
    match client.sys("SCAN", &path, None).await {
        Err(VaultError::PermissionDenied { .. }) => Some(format!(
            "this OpenBao token lacks the `scan` capability on {m}: each scan walks the mount with paged LIST \
             requests (one per folder and page){}, instead of one SCAN; grant `scan` (see `vsync policy origin`)",
            if info.kind == KvVersion::V2 { " plus one metadata read per key" } else { "" }
        )),
        _ => None,
    }
}

async fn origin_mount(client: &VaultClient, mount: &str) -> Result<String, String> {
    let m = vsync_core::normalize_mount(mount).map_err(|e| e.to_string())?;
    let info = client.mount_info(&m).await.map_err(|e| format!("mount: {e}"))?;
    let mut problems = Vec::new();
    let list_path = match info.kind {
        KvVersion::V2 => format!("{m}metadata/"),
        KvVersion::V1 => m.clone(),
    };
    if let Err(e) = client.sys("LIST", &list_path, None).await {
        problems.push(format!("list: {e}"));
    }
    let read = match info.kind {
        KvVersion::V2 => client.read_metadata(&m, &format!("{PROBE_FOLDER}/read-probe")).await.map(|_| ()),
        KvVersion::V1 => client.read_v1(&m, &format!("{PROBE_FOLDER}/read-probe")).await.map(|_| ()),
    };
    if let Err(e) = read {
        problems.push(format!("read: {e}"));
    }
    if problems.is_empty() {
        Ok(format!("{} list, read", mount_note(info.kind, &info.uuid)))
    } else {
        Err(problems.join("; "))
    }
}

async fn destination_mount(client: &VaultClient, mount: &str) -> Result<String, String> {
    let m = vsync_core::normalize_mount(mount).map_err(|e| e.to_string())?;
    let info = client.mount_info(&m).await.map_err(|e| format!("mount: {e}"))?;
    let path = format!("{PROBE_FOLDER}/probe-{}-{}", std::process::id(), fastrand::u32(..));
    let first = SecretData::from_json(&json!({"probe": 1}).to_string()).map_err(|e| e.to_string())?;
    let second = SecretData::from_json(&json!({"probe": 2}).to_string()).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    match info.kind {
        KvVersion::V2 => {
            if let Err(e) = client.write_version(&m, &path, &first, 0).await {
                problems.push(format!("create: {e}"));
            } else {
                match client.read_latest(&m, &path).await {
                    Ok(DataRead::Live(..)) => {}
                    Ok(other) => problems.push(format!("read: probe not readable back ({other:?})")),
                    Err(e) => problems.push(format!("read: {e}")),
                }
                if let Err(e) = client.write_version(&m, &path, &second, 1).await {
                    problems.push(format!("update: {e}"));
                }
            }
            if let Err(e) = client.sys("LIST", &format!("{m}metadata/{PROBE_FOLDER}/"), None).await {
                problems.push(format!("list: {e}"));
            }
            if let Err(e) = client.delete_metadata(&m, &path).await {
                problems.push(format!("delete: {e} (probe {m}{path} may be left behind)"));
            }
        }
        KvVersion::V1 => {
            if let Err(e) = client.write_v1(&m, &path, &first).await {
                problems.push(format!("create: {e}"));
            } else {
                if let Err(e) = client.read_v1(&m, &path).await {
                    problems.push(format!("read: {e}"));
                }
                if let Err(e) = client.write_v1(&m, &path, &second).await {
                    problems.push(format!("update: {e}"));
                }
            }
            if let Err(e) = client.sys("LIST", &format!("{m}{PROBE_FOLDER}/"), None).await {
                problems.push(format!("list: {e}"));
            }
            if let Err(e) = client.delete_v1(&m, &path).await {
                problems.push(format!("delete: {e} (probe {m}{path} may be left behind)"));
            }
        }
    }
    if problems.is_empty() {
        Ok(format!("{} create, read, update, list, delete", mount_note(info.kind, &info.uuid)))
    } else {
        Err(problems.join("; "))
    }
}
