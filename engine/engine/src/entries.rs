//! The origin entry of a key: what a scan records of its metadata, and what later reads are
//! compared with. One function shared by the origin scan, exact inspection and `verify`, kept
//! apart so none of them imports another for it.

use std::time::SystemTime;

use vsync_core::digest::MetadataDigest;
use vsync_core::{KvVersion, OriginEntry};

/// The origin entry of a KV v2 key's metadata, as of `now`.
pub(crate) fn v2_entry(meta: &vsync_vault::KvMetadata, now: SystemTime) -> OriginEntry {
    let digest = MetadataDigest {
        current_version: meta.current_version,
        oldest_version: meta.oldest_version,
        created_time: &meta.created_time,
        max_versions: meta.max_versions,
        cas_required: meta.cas_required,
        delete_version_after: &meta.delete_version_after,
        custom_metadata: meta
            .custom_metadata
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        versions: meta
            .versions
            .iter()
            // The deletion as of now: a version that `delete_version_after` expires changes the
            // digest when it expires, so the change reaches the destinations.
            .map(|(n, v)| (*n, v.created_time.as_str(), v.effective_deletion_time(now), v.destroyed))
            .collect(),
    }
    .digest();
    OriginEntry {
        kind: KvVersion::V2,
        current_version: meta.current_version,
        created_time: meta.created_time.clone(),
        current_live: meta.current_is_live_at(now),
        digest: Some(digest),
    }
}
