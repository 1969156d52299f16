//! `vsync verify`: proves a destination is what vsync wrote there. Reads both sides' metadata
//! (one SCAN per mount on OpenBao; LIST plus GET elsewhere), maps origin paths through the
//! destination's filters and transformers, and compares every reproducible field (and, with
//! `data`, the data of every live version). Keys whose origin changed after the destination's
//! last commit are pending, not drift. It never writes to either Vault; `--repair` leaves a
//! request in the destination's state store that its next cycle consumes, rebuilding those keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use serde::Serialize;
use vsync_core::{DeletePolicy, DestPath, DestinationMapper, DestinationSpec, KvVersion, Mapping, PathMapper, SecretPath, VersionsMode};
use vsync_state::StateStore;
use vsync_vault::{DataRead, KvMetadata, VaultClient, VaultError};

use crate::destination::load_info;
use crate::exact::{Vaults, key_meta};
use crate::fault::Fault;
use crate::entries::v2_entry;

// The repair request's layout lives with the other documents of a side; `vsync verify
// --repair` writes it, the destination's next cycle consumes it.
pub use crate::sides::{REPAIR_DOC, RepairRequest, pending_repair, request_repair};

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

/// Compares the destination of `spec` with the origin, dating versions by `vaults.clock`.
pub async fn verify<'a>(
    vaults: &Vaults,
    origin_mounts: &[String],
    spec: &'a DestinationSpec,
    store: &StateStore,
    paths: Option<&'a mut dyn PathMapper>,
    data: bool,
) -> Result<VerifyReport, Fault> {
    let now = vaults.clock.now();
    let mut report = VerifyReport::default();
    let recorded = load_info(store, &spec.name, 1).await?;
    let mut mapper = DestinationMapper::new(&spec.name, &spec.labels, &spec.mounts, paths);
    let mut dest_side: HashMap<String, BTreeMap<String, Option<KvMetadata>>> = HashMap::new();
    for m in spec.mounts.values() {
        if !dest_side.contains_key(m) {
            dest_side.insert(m.clone(), metadata_of(&vaults.dest, m).await?);
        }
    }
    let mut mapped: HashSet<DestPath> = HashSet::new();
    let check = Check { vaults, versions: spec.versions, data, now };
    for mount in origin_mounts.iter().filter(|m| spec.mounts.contains_key(*m)) {
        let kind = vaults.origin.mount_info(mount).await.map_err(|e| Fault::vault(format!("origin mount `{mount}`"), e))?.kind;
        for (path, om) in metadata_of(&vaults.origin, mount).await? {
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
            if let Some(what) = check.compare(&key, &target, om.as_ref(), dm).await? {
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

/// How keys are compared: the Vaults, the destination's `versions` mode, whether data is
/// read too, and the time versions are dated at.
struct Check<'v> {
    vaults: &'v Vaults,
    versions: VersionsMode,
    data: bool,
    now: SystemTime,
}

impl Check<'_> {
    /// The first difference of one key, or `None`.
    async fn compare(&self, key: &SecretPath, target: &DestPath, om: Option<&KvMetadata>, dm: Option<&Option<KvMetadata>>) -> Result<Option<String>, Fault> {
        let Some(dm) = dm else {
            // Gone at the destination. A `latest` copy of a key with no live version is absent
            // on purpose.
            let live = om.is_some_and(|m| m.current_is_live_at(self.now));
            return Ok((om.is_none() || self.versions == VersionsMode::All || live).then(|| "missing at the destination".to_owned()));
        };
        match (om, dm) {
            (Some(om), Some(dm)) if self.versions == VersionsMode::All => self.compare_exact(key, target, om, dm).await,
            (Some(om), Some(dm)) => self.compare_latest(key, target, om, dm).await,
            _ => {
                // KV v1 on either side: compare values (always: there is no metadata).
                let a = self.origin_data(key, om.map_or(0, |m| m.current_version)).await?;
                let b = self.dest_data(target, dm.as_ref().map_or(0, |m| m.current_version)).await?;
                Ok((!same_data(&a, &b)).then(|| "the value differs".to_owned()))
            }
        }
    }

    /// `versions = "all"`: every reproducible field, and with `data` every live version's data.
    async fn compare_exact(&self, key: &SecretPath, target: &DestPath, om: &KvMetadata, dm: &KvMetadata) -> Result<Option<String>, Fault> {
        let (o, d) = (key_meta(om, self.now), key_meta(dm, self.now));
        if !o.same_replica(&d) {
            return Ok(Some(describe(&o, &d)));
        }
        if self.data {
            for (v, f) in &o.versions {
                if !f.live() {
                    continue;
                }
                let a = self.origin_data(key, *v).await?;
                let b = self.dest_data(target, *v).await?;
                if !same_data(&a, &b) {
                    return Ok(Some(format!("data of version {v} differs")));
                }
            }
        }
        Ok(None)
    }

    /// `latest`: the destination's current version holds the origin's current data.
    async fn compare_latest(&self, key: &SecretPath, target: &DestPath, om: &KvMetadata, dm: &KvMetadata) -> Result<Option<String>, Fault> {
        if !om.current_is_live_at(self.now) {
            return Ok(None);
        }
        if !dm.current_is_live_at(self.now) {
            return Ok(Some("the current version is not readable at the destination".into()));
        }
        if self.data {
            let a = self.origin_data(key, om.current_version).await?;
            let b = self.dest_data(target, dm.current_version).await?;
            if !same_data(&a, &b) {
                return Ok(Some("the current data differs".into()));
            }
        }
        Ok(None)
    }

    async fn origin_data(&self, key: &SecretPath, version: u64) -> Result<Option<String>, Fault> {
        read_data(&self.vaults.origin, &key.mount, &key.path, version)
            .await
            .map_err(|e| Fault::vault("verify: reading origin", e))
    }

    async fn dest_data(&self, target: &DestPath, version: u64) -> Result<Option<String>, Fault> {
        read_data(&self.vaults.dest, &target.mount, &target.path, version)
            .await
            .map_err(|e| Fault::vault("verify: reading destination", e))
    }
}

/// The data of `version` (0: a KV v1 value), if live.
async fn read_data(c: &VaultClient, mount: &str, path: &str, version: u64) -> Result<Option<String>, VaultError> {
    if version == 0 {
        return c.read_v1(mount, path).await.map(|d| d.map(|d| d.as_json().to_owned()));
    }
    c.read_version(mount, path, version).await.map(|r| match r {
        DataRead::Live(d, _) => Some(d.as_json().to_owned()),
        _ => None,
    })
}

/// Whether two values are the same JSON (key order and spacing aside).
fn same_data(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => serde_json::from_str::<serde_json::Value>(a).ok() == serde_json::from_str::<serde_json::Value>(b).ok(),
        (None, None) => true,
        _ => false,
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
