//! An upgrade changes every destination's `config_hash` (it used to hash a `Debug` print; it
//! now hashes a canonical JSON encoding). A changed hash makes the next cycle re-plan every key
//! (`recheck_all`): this test pins that, with the same mount map and stack, that re-plan
//! writes nothing and removes nothing, in `latest` and in `all` mode.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest as _, Sha256};
use vsync_config::Config;
use vsync_core::cycle::plan_cycle;
use vsync_core::types::{DestEntry, DestPath, ExactState, KvVersion, OriginEntry};
use vsync_core::{Buckets, CycleFlags, DestInfo, DestinationMapper, OriginInfo, SecretPath, SyncInfo};

const CONFIG: &str = r#"
[origin]
vault = { address = "http://127.0.0.1:8200", token_env = "T" }
mounts = ["secret/"]
state = { backend = "file", path = "state" }

[[destination]]
name = "eu"
vault = { address = "http://127.0.0.1:8300", token_env = "T" }
mounts = { "secret/" = "secret/" }
state = { backend = "file", path = "state" }
versions = "VERSIONS"
"#;

/// The hash as releases before the canonical encoding computed it.
fn legacy_hash(c: &Config) -> String {
    let d = &c.destinations[0];
    let mut text = format!("{:?}|{:?}|{:?}", d.mounts, d.transforms, d.filters);
    if d.versions == vsync_core::VersionsMode::All {
        text.push_str("|versions=all");
    }
    vsync_core::Digest(Sha256::digest(text.as_bytes()).into()).to_hex()
}

fn entry(version: u64) -> OriginEntry {
    OriginEntry {
        kind: KvVersion::V2,
        current_version: version,
        created_time: "t".into(),
        current_live: true,
        digest: Some(vsync_core::Digest([version as u8; 32])),
    }
}

#[test]
fn a_new_config_hash_replans_without_writing_or_removing() {
    for versions in ["latest", "all"] {
        let c = Config::parse(&CONFIG.replace("VERSIONS", versions), Path::new("vsync.toml")).unwrap();
        let rt = c.runtime().unwrap();
        let spec = &rt.destinations[0].spec;
        let old = legacy_hash(&c);
        assert_ne!(old, spec.config_hash, "the encoding changed, so the hash does");
        let keys: Vec<(SecretPath, OriginEntry)> = (1..=40).map(|i| (SecretPath::new("secret/", format!("app/k{i}")), entry(i))).collect();
        let origin = OriginInfo::new(SyncInfo::from_entries(4, keys.clone()), [("secret/".to_owned(), "uuid-1".to_owned())].into());
        let copies = Buckets::from_entries(
            4,
            keys.into_iter().map(|(k, e)| {
                let mut copy = DestEntry::new(e, DestPath { mount: "secret/".into(), path: k.path.clone() });
                if versions == "all" {
                    copy.exact = Some(ExactState::default());
                }
                (k, copy)
            }),
        );
        let dest = DestInfo {
            digests: copies.digests(),
            entries: copies,
            origin_mounts: origin.mounts.clone(),
            config_hash: Some(old),
        };
        let labels = BTreeMap::new();
        let mut mapper = DestinationMapper::new("eu", &labels, &spec.mounts, None);
        let planned = plan_cycle(&origin, &dest, spec.rules(), CycleFlags::default(), &mut mapper).unwrap();
        assert!(planned.plan.writes.is_empty(), "{versions}: {:?}", planned.plan.writes);
        assert!(planned.plan.removals.is_empty(), "{versions}: {:?}", planned.plan.removals);
        assert_eq!(planned.plan.unchanged, 40, "{versions}");
    }
}
