//! `vsync verify`: proves a destination is what vsync wrote there. Reads both sides' metadata
//! (one SCAN per mount on OpenBao; LIST plus GET elsewhere), maps origin paths through the
//! destination's filters and transformers, and compares every reproducible field (and, with
//! `data`, the data of every live version). Keys whose origin changed after the destination's
//! last commit are pending, not drift. It never writes to either Vault; `--repair` leaves a
//! request in the destination's state store that its next cycle consumes, rebuilding those keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use vsync_core::{DeletePolicy, DestPath, DestinationMapper, DestinationSpec, KvVersion, Mapping, PathMapper, SecretPath, VersionsMode};
use vsync_state::StateStore;
use vsync_vault::{DataRead, KvMetadata, VaultClient};

use crate::destination::{load_info, side_name};
use crate::exact::key_meta;
use crate::fault::Fault;
use crate::origin::v2_entry;

/// The name of the repair request document in the destination's side of the state store.
pub const REPAIR_DOC: &str = "repair";

/// A key that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Origin key.
    pub key: SecretPath,
    /// Where it is replicated.
    pub target: DestPath,
    /// What differs (first difference found).
    pub what: String,
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Keys compared.
    pub checked: usize,
    /// Keys that differ from what vsync wrote.
    pub drifted: Vec<Drift>,
    /// Keys changed at the origin since the destination's last commit (replicated by the
    /// next cycle, not drift).
    pub pending: Vec<SecretPath>,
    /// Keys under a mapped destination mount that no origin key maps to and that the
    /// destination's info does not record (drift; with `deletes = "mirror"` only: the other
    /// policies leave removed keys behind on purpose).
    pub extra: Vec<DestPath>,
    /// Destination keys the info records but no origin key maps to any more: the next cycle
    /// removes them (not drift).
    pub pending_removals: Vec<DestPath>,
}

impl VerifyReport {
    /// Whether anything differs (exit 1).
    pub fn has_drift(&self) -> bool {
        !self.drifted.is_empty() || !self.extra.is_empty()
    }
}

/// The request `--repair` leaves for the destination role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    /// Origin keys whose replicas the next cycle rebuilds.
    pub keys: Vec<SecretPath>,
    /// Destination keys that no origin key maps to, which the next cycle removes (under the
    /// `deletes` policy and the mass-delete guard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<DestPath>,
}

async fn metadata_of(client: &VaultClient, mount: &str) -> Result<BTreeMap<String, Option<KvMetadata>>, Fault> {
    let info = client.mount_info(mount).await.map_err(|e| Fault::vault(format!("mount `{mount}`"), e))?;
    let listed = client.list_secrets(&info).await.map_err(|e| Fault::vault(format!("listing `{mount}`"), e))?;
    let mut out = BTreeMap::new();
    for item in listed {
        let meta = match (info.kind, item.metadata) {
            (KvVersion::V2, Some(m)) => Some(m),
            (KvVersion::V2, None) => client
                .read_metadata(mount, &item.path)
                .await
                .map_err(|e| Fault::vault(format!("reading metadata of {mount}{}", item.path), e))?,
            (KvVersion::V1, _) => None,
        };
        out.insert(item.path, meta);
    }
    Ok(out)
}

/// Compares the destination of `spec` with the origin.
pub async fn verify<'a>(
    origin_vault: &VaultClient,
    origin_mounts: &[String],
    spec: &'a DestinationSpec,
    dest_vault: &VaultClient,
    store: &StateStore,
    paths: Option<&'a mut dyn PathMapper>,
    data: bool,
) -> Result<VerifyReport, Fault> {
    let now = SystemTime::now();
    let mut report = VerifyReport::default();
    let recorded = load_info(store, &spec.name, 1).await?;
    let mut mapper = DestinationMapper::new(&spec.name, &spec.labels, &spec.mounts, paths);
    let mut dest_side: HashMap<String, BTreeMap<String, Option<KvMetadata>>> = HashMap::new();
    for m in spec.mounts.values() {
        if !dest_side.contains_key(m) {
            dest_side.insert(m.clone(), metadata_of(dest_vault, m).await?);
        }
    }
    let mut mapped: HashSet<DestPath> = HashSet::new();
    for mount in origin_mounts.iter().filter(|m| spec.mounts.contains_key(*m)) {
        let kind = origin_vault.mount_info(mount).await.map_err(|e| Fault::vault(format!("origin mount `{mount}`"), e))?.kind;
        for (path, om) in metadata_of(origin_vault, mount).await? {
            let key = SecretPath::new(mount.clone(), path);
            let Mapping::To(target) = mapper.map(&key, kind) else { continue };
            mapped.insert(target.clone());
            report.checked += 1;
            let known = recorded.entries.get(&key);
            let pending = match (&om, known) {
                (Some(m), Some(k)) => v2_entry(m, now) != k.origin || k.target != target,
                (None, Some(k)) => k.target != target,
                (_, None) => true,
            };
            if pending {
                report.pending.push(key);
                continue;
            }
            let dm = dest_side.get(&target.mount).and_then(|d| d.get(&target.path));
            if let Some(what) = compare(origin_vault, dest_vault, &key, &target, om.as_ref(), dm, spec.versions, data, now).await? {
                report.drifted.push(Drift { key, target, what });
            }
        }
    }
    if spec.deletes == DeletePolicy::Mirror {
        destination_only(&mut report, &dest_side, &mapped, &recorded);
    }
    Ok(report)
}

/// Reports the keys of the destination's mounts that no origin key maps to: removals the next
/// cycle makes (the info records them) or drift (nothing does). The probe folder of `vsync
/// check` is not vsync's data.
fn destination_only(
    report: &mut VerifyReport,
    dest_side: &HashMap<String, BTreeMap<String, Option<KvMetadata>>>,
    mapped: &HashSet<DestPath>,
    recorded: &vsync_core::DestInfo,
) {
    let recorded: HashSet<&DestPath> = recorded.entries.iter().map(|(_, e)| &e.target).collect();
    let probes = format!("{}/", crate::check::PROBE_FOLDER);
    let mut mounts: Vec<&String> = dest_side.keys().collect();
    mounts.sort();
    for mount in mounts {
        for path in dest_side[mount].keys().filter(|p| !p.starts_with(&probes)) {
            let target = DestPath { mount: mount.clone(), path: path.clone() };
            if mapped.contains(&target) {
                continue;
            }
            if recorded.contains(&target) {
                report.pending_removals.push(target);
            } else {
                report.extra.push(target);
            }
        }
    }
}

/// The first difference of one key, or `None`.
#[allow(clippy::too_many_arguments)] // each is a distinct input of one comparison
async fn compare(
    origin: &VaultClient,
    dest: &VaultClient,
    key: &SecretPath,
    target: &DestPath,
    om: Option<&KvMetadata>,
    dm: Option<&Option<KvMetadata>>,
    versions: VersionsMode,
    data: bool,
    now: SystemTime,
) -> Result<Option<String>, Fault> {
    let Some(dm) = dm else {
        // Gone at the destination. A `latest` copy of a key with no live version is absent
        // on purpose.
        let live = om.is_some_and(|m| m.current_is_live_at(now));
        return Ok((om.is_none() || versions == VersionsMode::All || live).then(|| "missing at the destination".to_owned()));
    };
    let read = |c: &VaultClient, mount: &str, path: &str, v: u64| {
        let (c, mount, path) = (c.clone(), mount.to_owned(), path.to_owned());
        async move {
            if v == 0 {
                return c.read_v1(&mount, &path).await.map(|d| d.map(|d| d.as_json().to_owned()));
            }
            c.read_version(&mount, &path, v).await.map(|r| match r {
                DataRead::Live(d, _) => Some(d.as_json().to_owned()),
                _ => None,
            })
        }
    };
    let same_data = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => serde_json::from_str::<serde_json::Value>(a).ok() == serde_json::from_str::<serde_json::Value>(b).ok(),
        (None, None) => true,
        _ => false,
    };
    let fault = |side: &str, e| Fault::vault(format!("verify: reading {side}"), e);
    match (om, dm) {
        (Some(om), Some(dm)) if versions == VersionsMode::All => {
            let (o, d) = (key_meta(om, now), key_meta(dm, now));
            if !o.same_replica(&d) {
                return Ok(Some(describe(&o, &d)));
            }
            if data {
                for (v, f) in &o.versions {
                    if !f.live() {
                        continue;
                    }
                    let a = read(origin, &key.mount, &key.path, *v).await.map_err(|e| fault("origin", e))?;
                    let b = read(dest, &target.mount, &target.path, *v).await.map_err(|e| fault("destination", e))?;
                    if !same_data(&a, &b) {
                        return Ok(Some(format!("data of version {v} differs")));
                    }
                }
            }
            Ok(None)
        }
        (Some(om), Some(dm)) => {
            // `latest`: the destination's current version holds the origin's current data.
            if !om.current_is_live_at(now) {
                return Ok(None);
            }
            if !dm.current_is_live_at(now) {
                return Ok(Some("the current version is not readable at the destination".into()));
            }
            if data {
                let a = read(origin, &key.mount, &key.path, om.current_version).await.map_err(|e| fault("origin", e))?;
                let b = read(dest, &target.mount, &target.path, dm.current_version).await.map_err(|e| fault("destination", e))?;
                if !same_data(&a, &b) {
                    return Ok(Some("the current data differs".into()));
                }
            }
            Ok(None)
        }
        _ => {
            // KV v1 on either side: compare values (always: there is no metadata).
            let a = read(origin, &key.mount, &key.path, om.map_or(0, |m| m.current_version)).await.map_err(|e| fault("origin", e))?;
            let b = read(dest, &target.mount, &target.path, dm.as_ref().map_or(0, |m| m.current_version))
                .await
                .map_err(|e| fault("destination", e))?;
            Ok((!same_data(&a, &b)).then(|| "the value differs".to_owned()))
        }
    }
}

fn describe(o: &vsync_core::exact::KeyMeta, d: &vsync_core::exact::KeyMeta) -> String {
    if o.current_version != d.current_version {
        return format!("current_version {} at the origin, {} here", o.current_version, d.current_version);
    }
    if o.oldest_version != d.oldest_version {
        return format!("oldest_version {} at the origin, {} here", o.oldest_version, d.oldest_version);
    }
    if o.settings != d.settings {
        return format!("settings differ: origin {:?}, here {:?}", o.settings, d.settings);
    }
    for (v, f) in &o.versions {
        match d.versions.get(v) {
            None => return format!("version {v} is missing here"),
            Some(g) if g != f => return format!("version {v}: origin {f:?}, here {g:?}"),
            _ => {}
        }
    }
    let extra: Vec<&u64> = d.versions.keys().filter(|v| !o.versions.contains_key(v)).collect();
    format!("versions {extra:?} exist here only")
}

/// Leaves a repair request for the destination's next cycle: `keys` to rebuild, destination-only
/// targets to `remove`.
pub async fn request_repair(store: &StateStore, destination: &str, keys: Vec<SecretPath>, remove: Vec<DestPath>) -> Result<(), Fault> {
    let bytes = serde_json::to_vec(&RepairRequest { keys, remove }).map_err(|e| Fault::transient(format!("encoding the repair request: {e}")))?;
    store
        .write_doc(&side_name(destination), REPAIR_DOC, &bytes)
        .await
        .map_err(|e| Fault::state(format!("writing the repair request of destination `{destination}`"), e))
}

/// The pending repair request of a destination, if any.
pub async fn pending_repair(store: &StateStore, destination: &str) -> Result<Option<RepairRequest>, Fault> {
    let Some(bytes) = store
        .read_doc(&side_name(destination), REPAIR_DOC)
        .await
        .map_err(|e| Fault::state(format!("reading the repair request of destination `{destination}`"), e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Fault::fatal(crate::fault::FatalCause::StateCorrupt, format!("the repair request of destination `{destination}` is corrupt: {e}"))
    })
}
