//! Writing and removing one secret (`versions = "latest"` KV v2, and KV v1): the work of one
//! task of the execute stage. `versions = "all"` keys are replicated by `crate::exact`.

use std::collections::HashMap;

use tracing::{info, warn};
use vsync_core::digest::value_hmac;
use vsync_core::{Action, DestPath, ExactState, KvVersion, WriteOutcome};
use vsync_vault::{DataRead, SecretData, VaultClient, VaultError};

use crate::fault::{FatalCause, Fault};
use crate::origin::canonical_json;

/// The KV version of the mount `target` is in.
fn kind_of(kinds: &HashMap<String, KvVersion>, target: &DestPath) -> Result<KvVersion, Fault> {
    kinds
        .get(&target.mount)
        .copied()
        .ok_or_else(|| Fault::fatal(FatalCause::Mount, format!("unknown destination mount `{}`", target.mount)))
}

/// Removes one target under the `deletes` policy its action carries.
pub(super) async fn remove(dest: &VaultClient, kinds: &HashMap<String, KvVersion>, action: &Action) -> Result<(), Fault> {
    let result = match action {
        Action::Delete { target, .. } => match kind_of(kinds, target)? {
            KvVersion::V2 => dest.delete_metadata(&target.mount, &target.path).await,
            KvVersion::V1 => dest.delete_v1(&target.mount, &target.path).await,
        },
        Action::SoftDelete { target, .. } => match kind_of(kinds, target)? {
            KvVersion::V2 => dest.soft_delete_latest(&target.mount, &target.path).await,
            KvVersion::V1 => Ok(()), // KV v1 has no soft delete: leave it
        },
        _ => Ok(()),
    };
    result.map_err(|e| Fault::vault(format!("removing {}", action.key()), e))
}

/// What one write task produced.
pub(super) struct Written {
    /// What happened.
    pub outcome: WriteOutcome,
    /// `versions = "all"`: the key's recorded state.
    pub exact: Option<ExactState>,
    /// A KV v1 value copied without the digest key to check it against the scan.
    pub unverified: bool,
    /// KV v2 `latest` copies: the destination version now holding the value.
    pub dest_version: Option<u64>,
}

impl From<WriteOutcome> for Written {
    fn from(outcome: WriteOutcome) -> Self {
        Self { outcome, exact: None, unverified: false, dest_version: None }
    }
}

/// Copies one secret (`latest` KV v2, or KV v1). `scanned` is the keyed digest the scan
/// recorded for a KV v1 value; with the key, a value that changed since the scan is skipped
/// (recording the scan's digest for another value would hide the change for good).
pub(super) async fn write(
    origin: &VaultClient,
    dest: &VaultClient,
    kinds: &HashMap<String, KvVersion>,
    action: &Action,
    scanned: Option<vsync_core::Digest>,
    digest_key: Option<&[u8]>,
    known_version: Option<u64>,
) -> Result<Written, Fault> {
    let read_fault = |e: VaultError| Fault::vault(format!("reading origin {}", action.key()), e);
    let mut unverified = false;
    let (key, target, data) = match action {
        Action::Record { .. } => return Ok(WriteOutcome::Recorded.into()),
        Action::CopyV2 { key, version, target, .. } => match origin.read_version(&key.mount, &key.path, *version).await.map_err(read_fault)? {
            DataRead::Live(data, _) => (key, target, data),
            // Deleted, destroyed or gone since the scan: the next scan sees it.
            other => {
                warn!(secret = %key, version, state = ?other, "origin version changed during the cycle; skipped");
                return Ok(WriteOutcome::Skipped.into());
            }
        },
        Action::SyncV1 { key, target } => match origin.read_v1(&key.mount, &key.path).await.map_err(read_fault)? {
            Some(data) => {
                match (scanned, digest_key) {
                    (Some(d), Some(k)) if value_hmac(k, &canonical_json(&data)) != d => {
                        warn!(secret = %key, "origin value changed since the scan; skipped until the next scan");
                        return Ok(WriteOutcome::Skipped.into());
                    }
                    (Some(_), None) => unverified = true,
                    _ => {}
                }
                (key, target, data)
            }
            None => return Ok(WriteOutcome::Skipped.into()),
        },
        _ => return Err(Fault::transient("not a write action")),
    };
    let kind = kind_of(kinds, target)?;
    // Optimistic writes (KV v2): when the destination info says this key was never copied,
    // write with cas = 0 (create only); when it recorded the destination version vsync left,
    // write with cas = that version. Neither reads first. A key that exists after all, or
    // that someone else changed, fails the CAS and falls back to read-and-compare.
    let optimistic = match action {
        Action::CopyV2 { reason: vsync_core::CopyReason::Add, .. } => Some(0),
        Action::CopyV2 { .. } => known_version,
        _ => None,
    };
    if kind == KvVersion::V2
        && let Some(cas) = optimistic
    {
        match dest.write_version(&target.mount, &target.path, &data, cas).await {
            Ok(meta) => {
                info!(secret = %key, target = %target, wrote = true, cas, "synced");
                return Ok(Written { dest_version: Some(meta.version), ..WriteOutcome::Written.into() });
            }
            Err(VaultError::CasMismatch { .. }) => {}
            Err(e) => return Err(Fault::vault(format!("writing {target}"), e)),
        }
    }
    let (wrote, dest_version) = write_if_different(dest, kind, target, &data)
        .await
        .map_err(|e| Fault::vault(format!("writing {target}"), e))?;
    info!(secret = %key, target = %target, wrote, "synced");
    Ok(Written { outcome: if wrote { WriteOutcome::Written } else { WriteOutcome::Equal }, exact: None, unverified, dest_version })
}

/// Writes `data` unless the destination already holds it: whether it wrote, and for KV v2 the
/// destination version that holds the value now.
async fn write_if_different(dest: &VaultClient, kind: KvVersion, target: &DestPath, data: &SecretData) -> Result<(bool, Option<u64>), VaultError> {
    let (mount, path) = (target.mount.as_str(), target.path.as_str());
    match kind {
        KvVersion::V1 => {
            if dest.read_v1(mount, path).await?.is_some_and(|cur| cur.same_value(data)) {
                return Ok((false, None));
            }
            dest.write_v1(mount, path, data).await?;
            Ok((true, None))
        }
        KvVersion::V2 => {
            let cas = match dest.read_latest(mount, path).await? {
                DataRead::Live(cur, m) if cur.same_value(data) => return Ok((false, Some(m.version))),
                DataRead::Live(_, m) | DataRead::Deleted(m) | DataRead::Destroyed(m) => m.version,
                DataRead::Missing => 0,
            };
            let written = match dest.write_version(mount, path, data, cas).await {
                Ok(meta) => meta,
                // Metadata without a readable latest version (e.g. metadata-only key): ask
                // the metadata for the current version and try once more.
                Err(VaultError::CasMismatch { .. }) => {
                    let current = dest.read_metadata(mount, path).await?.map_or(0, |m| m.current_version);
                    dest.write_version(mount, path, data, current).await?
                }
                Err(e) => return Err(e),
            };
            Ok((true, Some(written.version)))
        }
    }
}
