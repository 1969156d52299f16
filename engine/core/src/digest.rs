//! Digests: the 32-byte [`Digest`] type, the KV v2 metadata digest and the keyed KV v1 value
//! digest. None of them reveals a secret value: metadata digests cover metadata only, and
//! value digests are HMACs under a key that is never stored with the sync info.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};


/// A 32-byte digest, shown and stored as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Hex form.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses the hex form.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..12])
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).ok_or_else(|| serde::de::Error::custom("digest is not 64 hex digits"))
    }
}

/// The inputs of a KV v2 metadata digest: everything replication cares about, including the
/// whole versions map (delete, undelete and destroy do not change `updated_time`).
#[derive(Debug, Clone, Default)]
pub struct MetadataDigest<'a> {
    /// `current_version`.
    pub current_version: u64,
    /// `oldest_version`.
    pub oldest_version: u64,
    /// `created_time`.
    pub created_time: &'a str,
    /// `max_versions`.
    pub max_versions: u64,
    /// `cas_required`.
    pub cas_required: bool,
    /// `delete_version_after`.
    pub delete_version_after: &'a str,
    /// `custom_metadata` (sorted by key).
    pub custom_metadata: Vec<(&'a str, &'a str)>,
    /// `(version, created_time, deletion_time, destroyed)`, ascending by version.
    pub versions: Vec<(u64, &'a str, &'a str, bool)>,
}

impl MetadataDigest<'_> {
    /// SHA-256 over a length-prefixed encoding of every field.
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"vsync-metadata-v1\n");
        h.update(self.current_version.to_be_bytes());
        h.update(self.oldest_version.to_be_bytes());
        field(&mut h, self.created_time.as_bytes());
        h.update(self.max_versions.to_be_bytes());
        h.update([u8::from(self.cas_required)]);
        field(&mut h, self.delete_version_after.as_bytes());
        let mut custom = self.custom_metadata.clone();
        custom.sort();
        h.update((custom.len() as u64).to_be_bytes());
        for (k, v) in custom {
            field(&mut h, k.as_bytes());
            field(&mut h, v.as_bytes());
        }
        let mut versions = self.versions.clone();
        versions.sort_by_key(|v| v.0);
        h.update((versions.len() as u64).to_be_bytes());
        for (n, created, deleted, destroyed) in versions {
            h.update(n.to_be_bytes());
            field(&mut h, created.as_bytes());
            field(&mut h, deleted.as_bytes());
            h.update([u8::from(destroyed)]);
        }
        Digest(h.finalize().into())
    }
}

/// HMAC-SHA-256 of a KV v1 value's canonical JSON under `key`. Without the key the digest
/// cannot be recomputed, so it does not reveal the value.
pub fn value_hmac(key: &[u8], canonical_json: &str) -> Digest {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Digest([0; 32]),
    };
    mac.update(b"vsync-kv1-value-v1\n");
    mac.update(canonical_json.as_bytes());
    Digest(mac.finalize().into_bytes().into())
}

pub(crate) fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_depends_on_key_and_value() {
        let a = value_hmac(b"k1", r#"{"a":1}"#);
        assert_ne!(a, value_hmac(b"k2", r#"{"a":1}"#));
        assert_ne!(a, value_hmac(b"k1", r#"{"a":2}"#));
        assert_eq!(a, value_hmac(b"k1", r#"{"a":1}"#));
    }

    #[test]
    fn metadata_digest_sees_flags_and_settings() {
        let base = MetadataDigest {
            current_version: 2,
            created_time: "t",
            versions: vec![(1, "t1", "", false), (2, "t2", "", false)],
            ..Default::default()
        };
        let d = base.digest();
        let mut deleted = base.clone();
        deleted.versions[0].2 = "t3";
        assert_ne!(d, deleted.digest());
        let mut destroyed = base.clone();
        destroyed.versions[1].3 = true;
        assert_ne!(d, destroyed.digest());
        let mut custom = base.clone();
        custom.custom_metadata = vec![("owner", "x")];
        assert_ne!(d, custom.digest());
        let mut max = base.clone();
        max.max_versions = 3;
        assert_ne!(d, max.digest());
    }
}
