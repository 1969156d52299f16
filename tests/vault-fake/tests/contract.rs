//! The contract suite: every behaviour of the fake as a scenario that runs against both the
//! fake (`fake::*`) and a real OpenBao dev server (`bao::*`), asserting the same observable
//! answers (status, JSON fields, version numbers, flags; timestamps by presence and order).
//! A behaviour the fake gains is pinned here first.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Backend, data, errors, keys};
use serde_json::{Value, json};
use vsync_core::KvVersion;
use vsync_vault::{DataRead, MetadataSettings, VaultError};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod fake {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::fake()).await } )*
        }
        mod bao {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::bao()).await } )*
        }
    };
}

contract!(
    mount_discovery,
    mount_config,
    version_numbering_and_default_pruning,
    max_versions_of_key_and_mount,
    metadata_fields,
    check_and_set,
    data_write_shapes,
    read_404_shapes,
    delete_undelete_destroy,
    delete_latest,
    delete_metadata,
    delete_version_after,
    scan_detailed_metadata,
    paged_list,
    pagination_limit,
    list_walk_without_scan,
    kv1_values,
    wrong_flavour_and_missing_mount,
    tokens,
    sealed,
    rate_limited,
    response_shapes,
);

fn settings(max: u64, cas: bool, dva: &str, custom: &[(&str, &str)]) -> MetadataSettings {
    MetadataSettings {
        max_versions: max,
        cas_required: cas,
        delete_version_after: dva.into(),
        custom_metadata: custom.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

/// Writes `n` versions of `path` (`{"n": i}`), each with the right CAS.
async fn write_n(b: &Backend, mount: &str, path: &str, n: u64) {
    let c = b.client();
    let start = c.read_metadata(mount, path).await.unwrap().map_or(0, |m| m.current_version);
    for i in start..start + n {
        let meta = c.write_version(mount, path, &data(json!({ "n": i + 1 })), i).await.unwrap();
        assert_eq!(meta.version, i + 1);
    }
}

fn version_set(meta: &vsync_vault::KvMetadata) -> Vec<u64> {
    meta.versions.keys().copied().collect()
}

async fn mount_discovery(b: Backend) {
    b.enable_kv("kv2/", 2);
    b.enable_kv("kv1/", 1);
    let c = b.client();
    let v2 = c.mount_info("kv2/").await.unwrap();
    assert_eq!((v2.path.as_str(), v2.kind), ("kv2/", KvVersion::V2));
    assert!(!v2.uuid.is_empty());
    assert_eq!(c.mount_info("kv1").await.unwrap().kind, KvVersion::V1);
    assert!(matches!(c.mount_info("nomount/").await, Err(VaultError::MountNotFound { .. })));
    let (status, _, body) = b.raw("GET", "sys/mounts/kv2", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!((body["type"].as_str(), body["data"]["type"].as_str()), (Some("kv"), Some("kv")));
    assert_eq!(body["data"]["options"]["version"], "2");
    assert_eq!(body["uuid"], body["data"]["uuid"]);
    let (status, _, body) = b.raw("GET", "sys/internal/ui/mounts/kv2/some/secret", &[], None).await;
    assert_eq!((status, body["data"]["path"].as_str()), (200, Some("kv2/")));
    let (status, _, body) = b.raw("GET", "sys/internal/ui/mounts/nomount", &[], None).await;
    assert_eq!(status, 403);
    assert!(errors(&body)[0].contains("preflight capability check returned 403"), "{body}");
    let (status, _, body) = b.raw("GET", "sys/mounts/nomount", &[], None).await;
    assert_eq!((status, errors(&body)), (400, vec!["No secret engine mount at nomount/".to_owned()]));
    // Disable and enable: a new uuid.
    assert_eq!(b.raw("DELETE", "sys/mounts/kv2", &[], None).await.0, 204);
    let enable = json!({"type": "kv", "options": {"version": "2"}});
    assert_eq!(b.raw("POST", "sys/mounts/kv2", &[], Some(enable)).await.0, 204);
    let again = c.mount_info("kv2/").await.unwrap();
    assert_ne!(again.uuid, v2.uuid);
    let (status, _, body) = b.raw("GET", "sys/seal-status", &[], None).await;
    assert_eq!((status, body["sealed"].as_bool()), (200, Some(false)));
}

async fn mount_config(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    let (status, body) = c.sys("GET", "kv2/config", None).await.unwrap();
    assert_eq!(status, 200);
    let d = &body.unwrap()["data"];
    assert_eq!(d, &json!({"cas_required": false, "delete_version_after": "0s", "max_versions": 0, "metadata_cas_required": false}));
    let (status, body) = c.sys("POST", "kv2/config", Some(json!({"max_versions": "3", "delete_version_after": 90}))).await.unwrap();
    assert_eq!((status, body), (204, None));
    let (_, body) = c.sys("GET", "kv2/config", None).await.unwrap();
    let d = &body.unwrap()["data"];
    assert_eq!((d["max_versions"].as_u64(), d["delete_version_after"].as_str()), (Some(3), Some("1m30s")));
    c.sys("POST", "kv2/config", Some(json!({"delete_version_after": "-5s"}))).await.unwrap();
    let (_, body) = c.sys("GET", "kv2/config", None).await.unwrap();
    let d = &body.unwrap()["data"];
    assert_eq!((d["max_versions"].as_u64(), d["delete_version_after"].as_str()), (Some(3), Some("-1s")));
    c.sys("POST", "kv2/config", Some(json!({"delete_version_after": "1h", "cas_required": true}))).await.unwrap();
    let (_, body) = c.sys("GET", "kv2/config", None).await.unwrap();
    let d = &body.unwrap()["data"];
    assert_eq!((d["cas_required"].as_bool(), d["delete_version_after"].as_str()), (Some(true), Some("1h0m0s")));
}

async fn version_numbering_and_default_pruning(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    write_n(&b, "kv2/", "p", 3).await;
    let m = c.read_metadata("kv2/", "p").await.unwrap().unwrap();
    assert_eq!((m.current_version, m.oldest_version, version_set(&m)), (3, 0, vec![1, 2, 3]));
    write_n(&b, "kv2/", "p", 7).await;
    let m = c.read_metadata("kv2/", "p").await.unwrap().unwrap();
    assert_eq!((m.current_version, m.oldest_version), (10, 1), "exactly 10 writes prune nothing but set oldest 1");
    assert_eq!(version_set(&m), (1..=10).collect::<Vec<_>>());
    write_n(&b, "kv2/", "p", 2).await;
    let m = c.read_metadata("kv2/", "p").await.unwrap().unwrap();
    assert_eq!((m.current_version, m.oldest_version), (12, 3));
    assert_eq!(version_set(&m), (3..=12).collect::<Vec<_>>());
    assert!(matches!(c.read_version("kv2/", "p", 2).await.unwrap(), DataRead::Missing));
    match c.read_version("kv2/", "p", 3).await.unwrap() {
        DataRead::Live(d, meta) => assert_eq!((d.as_json(), meta.version), (r#"{"n":3}"#, 3)),
        other => panic!("{other:?}"),
    }
    match c.read_latest("kv2/", "p").await.unwrap() {
        DataRead::Live(_, meta) => assert_eq!(meta.version, 12),
        other => panic!("{other:?}"),
    }
    for v in ["0", "-1"] {
        let (status, _, body) = b.raw("GET", "kv2/data/p", &[("version", v)], None).await;
        assert_eq!((status, body["data"]["metadata"]["version"].as_u64()), (200, Some(12)), "version={v}");
    }
}

async fn max_versions_of_key_and_mount(b: Backend) {
    b.enable_kv("kv2/", 2);
    b.enable_kv("kvm/", 2);
    let c = b.client();
    // Mount 3, key 1: the larger rules.
    c.sys("POST", "kvm/config", Some(json!({"max_versions": 3}))).await.unwrap();
    c.write_metadata("kvm/", "k", &settings(1, false, "0s", &[])).await.unwrap();
    write_n(&b, "kvm/", "k", 5).await;
    let m = c.read_metadata("kvm/", "k").await.unwrap().unwrap();
    assert_eq!((m.max_versions, m.oldest_version, version_set(&m)), (1, 3, vec![3, 4, 5]));
    // Key 5 above mount 3.
    c.write_metadata("kvm/", "five", &settings(5, false, "0s", &[])).await.unwrap();
    write_n(&b, "kvm/", "five", 7).await;
    let m = c.read_metadata("kvm/", "five").await.unwrap().unwrap();
    assert_eq!((m.oldest_version, version_set(&m)), (3, vec![3, 4, 5, 6, 7]));
    // Lowering max_versions prunes nothing until the next write.
    write_n(&b, "kv2/", "low", 10).await;
    c.write_metadata("kv2/", "low", &settings(2, false, "0s", &[])).await.unwrap();
    let m = c.read_metadata("kv2/", "low").await.unwrap().unwrap();
    assert_eq!(version_set(&m), (1..=10).collect::<Vec<_>>());
    write_n(&b, "kv2/", "low", 1).await;
    let m = c.read_metadata("kv2/", "low").await.unwrap().unwrap();
    assert_eq!((m.oldest_version, version_set(&m)), (10, vec![10, 11]));
}

async fn metadata_fields(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    c.write_metadata("kv2/", "m", &settings(5, true, "1h", &[("owner", "ops"), ("tier", "1")])).await.unwrap();
    let m = c.read_metadata("kv2/", "m").await.unwrap().unwrap();
    assert_eq!((m.current_version, m.oldest_version, m.versions.len()), (0, 0, 0));
    assert_eq!((m.max_versions, m.cas_required, m.delete_version_after.as_str()), (5, true, "1h0m0s"));
    let custom: BTreeMap<String, String> = [("owner", "ops"), ("tier", "1")].iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    assert_eq!(m.custom_metadata, Some(custom));
    assert!(!m.created_time.is_empty() && m.created_time == m.updated_time);
    let (_, _, raw) = b.raw("GET", "kv2/metadata/m", &[], None).await;
    assert_eq!((raw["data"]["current_metadata_version"].as_u64(), raw["data"]["metadata_cas_required"].as_bool()), (Some(1), Some(false)));
    // A data write repeats custom_metadata in its answer; the metadata version counts metadata writes only.
    let (status, _, w) = b.raw("POST", "kv2/data/m", &[], Some(json!({"options": {"cas": 0}, "data": {"a": 1}}))).await;
    assert_eq!((status, w["data"]["custom_metadata"]["owner"].as_str()), (200, Some("ops")));
    let m2 = c.read_metadata("kv2/", "m").await.unwrap().unwrap();
    assert_eq!(m2.created_time, m.created_time);
    assert!(m2.updated_time > m.updated_time);
    let (_, _, raw) = b.raw("GET", "kv2/metadata/m", &[], None).await;
    assert_eq!(raw["data"]["current_metadata_version"].as_u64(), Some(1));
    // An empty custom_metadata reads back as null; a data write never changes settings.
    c.write_metadata("kv2/", "m", &settings(0, false, "0s", &[])).await.unwrap();
    let m3 = c.read_metadata("kv2/", "m").await.unwrap().unwrap();
    assert_eq!((m3.custom_metadata, m3.max_versions, m3.cas_required, m3.current_version), (None, 0, false, 1));
    let (_, _, raw) = b.raw("GET", "kv2/metadata/m", &[], None).await;
    assert_eq!(raw["data"]["current_metadata_version"].as_u64(), Some(2));
    // A data-created key: metadata version 0, custom_metadata null.
    write_n(&b, "kv2/", "d", 1).await;
    let (_, _, raw) = b.raw("GET", "kv2/metadata/d", &[], None).await;
    assert_eq!((raw["data"]["current_metadata_version"].as_u64(), &raw["data"]["custom_metadata"]), (Some(0), &Value::Null));
    // Over 64 custom keys is refused.
    let many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, _, body) = b.raw("POST", "kv2/metadata/m", &[], Some(json!({ "custom_metadata": many }))).await;
    assert_eq!(status, 400);
    assert!(errors(&body)[0].contains("payload must contain at most 64 keys"), "{body}");
}

async fn check_and_set(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    c.write_version("kv2/", "k", &data(json!({"v": 1})), 0).await.unwrap();
    assert!(matches!(c.write_version("kv2/", "k", &data(json!({"v": 2})), 0).await, Err(VaultError::CasMismatch { .. })));
    let (status, _, body) = b.raw("POST", "kv2/data/k", &[], Some(json!({"options": {"cas": 5}, "data": {}}))).await;
    assert_eq!((status, errors(&body)), (400, vec!["check-and-set parameter did not match the current version".to_owned()]));
    // A string cas is accepted.
    let (status, _, body) = b.raw("POST", "kv2/data/k", &[], Some(json!({"options": {"cas": "1"}, "data": {}}))).await;
    assert_eq!((status, body["data"]["version"].as_u64()), (200, Some(2)));
    // CAS compares with current_version even when the latest version is deleted.
    c.soft_delete_latest("kv2/", "k").await.unwrap();
    c.write_version("kv2/", "k", &data(json!({"v": 3})), 2).await.unwrap();
    // A key with metadata only takes cas 0.
    c.write_metadata("kv2/", "meta-only", &settings(0, false, "0s", &[])).await.unwrap();
    c.write_version("kv2/", "meta-only", &data(json!({})), 0).await.unwrap();
    // cas_required on the key, then on the mount.
    c.write_metadata("kv2/", "k", &settings(0, true, "0s", &[])).await.unwrap();
    let (status, _, body) = b.raw("POST", "kv2/data/k", &[], Some(json!({"data": {}}))).await;
    assert_eq!((status, errors(&body)), (400, vec!["check-and-set parameter required for this call".to_owned()]));
    c.write_version("kv2/", "k", &data(json!({"v": 4})), 3).await.unwrap();
    c.sys("POST", "kv2/config", Some(json!({"cas_required": true}))).await.unwrap();
    let (status, _, body) = b.raw("POST", "kv2/data/new", &[], Some(json!({"data": {}}))).await;
    assert_eq!((status, errors(&body)), (400, vec!["check-and-set parameter required for this call".to_owned()]));
    c.write_version("kv2/", "new", &data(json!({})), 0).await.unwrap();
}

async fn data_write_shapes(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    let (status, _, body) = b.raw("POST", "kv2/data/a", &[], Some(json!({"data": {"x": 1}}))).await;
    assert_eq!(status, 200);
    let d = &body["data"];
    assert_eq!((d["version"].as_u64(), d["deletion_time"].as_str(), d["destroyed"].as_bool()), (Some(1), Some(""), Some(false)));
    assert!(d["created_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(d["custom_metadata"], Value::Null);
    assert!(body["request_id"].is_string() && body["warnings"].is_null());
    // data: null is accepted and read back as null; {} too.
    c.write_version("kv2/", "a", &data(Value::Null), 1).await.unwrap();
    match c.read_latest("kv2/", "a").await.unwrap() {
        DataRead::Live(d, meta) => assert_eq!((d.as_json(), meta.version), ("null", 2)),
        other => panic!("{other:?}"),
    }
    c.write_version("kv2/", "a", &data(json!({})), 2).await.unwrap();
    let (status, _, body) = b.raw("POST", "kv2/data/a", &[], Some(json!({"options": {}}))).await;
    assert_eq!((status, errors(&body)), (400, vec!["no data provided".to_owned()]));
    for bad in [json!("str"), json!([1])] {
        let (status, _, body) = b.raw("POST", "kv2/data/a", &[], Some(json!({ "data": bad }))).await;
        assert_eq!(status, 400);
        assert!(errors(&body)[0].contains("error converting input for field \"data\""), "{body}");
    }
    let (status, _, body) = b.raw("POST", "kv2/data/f/", &[], Some(json!({"data": {}}))).await;
    assert_eq!((status, errors(&body)), (400, vec!["cannot write to a path ending in '/'".to_owned()]));
    // Percent-encoded names round-trip.
    let odd = "sp ace/%/#?+/ключ";
    c.write_version("kv2/", odd, &data(json!({"k": "v"})), 0).await.unwrap();
    assert!(matches!(c.read_latest("kv2/", odd).await.unwrap(), DataRead::Live(..)));
    let paths: Vec<String> = c.list_secrets(&c.mount_info("kv2/").await.unwrap()).await.unwrap().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, vec!["a".to_owned(), odd.to_owned()]);
}

async fn read_404_shapes(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    assert!(matches!(c.read_latest("kv2/", "missing").await.unwrap(), DataRead::Missing));
    assert!(c.read_metadata("kv2/", "missing").await.unwrap().is_none());
    let (status, _, body) = b.raw("GET", "kv2/data/missing", &[], None).await;
    assert_eq!((status, body), (404, json!({"errors": []})));
    let (status, _, body) = b.raw("GET", "kv2/metadata/missing", &[], None).await;
    assert_eq!((status, body), (404, json!({"errors": []})));
    write_n(&b, "kv2/", "k", 2).await;
    assert!(matches!(c.read_version("kv2/", "k", 3).await.unwrap(), DataRead::Missing));
    let (status, _, body) = b.raw("GET", "kv2/data/k", &[("version", "9")], None).await;
    assert_eq!((status, body), (404, json!({"errors": []})));
    let (status, _, body) = b.raw("GET", "kv2/data/k", &[("version", "abc")], None).await;
    assert_eq!(status, 400);
    assert!(errors(&body)[0].starts_with("Field validation failed"), "{body}");
    c.write_metadata("kv2/", "meta-only", &settings(0, false, "0s", &[])).await.unwrap();
    assert!(matches!(c.read_latest("kv2/", "meta-only").await.unwrap(), DataRead::Missing));
    // A deleted version: 404 with the version's metadata.
    c.delete_versions("kv2/", "k", &[1]).await.unwrap();
    let (status, _, body) = b.raw("GET", "kv2/data/k", &[("version", "1")], None).await;
    assert_eq!(status, 404);
    assert_eq!((&body["data"]["data"], body["data"]["metadata"]["version"].as_u64()), (&Value::Null, Some(1)));
    assert!(!body["data"]["metadata"]["deletion_time"].as_str().unwrap().is_empty());
    assert_eq!(body["data"]["metadata"]["destroyed"], false);
}

async fn delete_undelete_destroy(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    write_n(&b, "kv2/", "k", 4).await;
    let before = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    c.delete_versions("kv2/", "k", &[1]).await.unwrap();
    assert!(matches!(c.read_version("kv2/", "k", 1).await.unwrap(), DataRead::Deleted(m) if !m.deletion_time.is_empty() && !m.destroyed));
    c.destroy_versions("kv2/", "k", &[2]).await.unwrap();
    assert!(matches!(c.read_version("kv2/", "k", 2).await.unwrap(), DataRead::Destroyed(m) if m.deletion_time.is_empty()));
    // Delete of a destroyed version: nothing changes (no deletion time).
    c.delete_versions("kv2/", "k", &[2]).await.unwrap();
    // Destroy of a deleted version keeps its deletion time.
    c.destroy_versions("kv2/", "k", &[1]).await.unwrap();
    let m = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    let v1 = &m.versions[&1];
    let v2 = &m.versions[&2];
    assert!(v1.destroyed && !v1.deletion_time.is_empty());
    assert!(v2.destroyed && v2.deletion_time.is_empty());
    assert!(matches!(c.read_version("kv2/", "k", 1).await.unwrap(), DataRead::Destroyed(m) if !m.deletion_time.is_empty()));
    // Undelete does nothing to destroyed versions; it restores a deleted one.
    c.delete_versions("kv2/", "k", &[3]).await.unwrap();
    let deleted_at = c.read_metadata("kv2/", "k").await.unwrap().unwrap().versions[&3].deletion_time.clone();
    c.delete_versions("kv2/", "k", &[3]).await.unwrap();
    let m = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    assert_eq!(m.versions[&3].deletion_time, deleted_at, "a second delete keeps the first time");
    c.undelete_versions("kv2/", "k", &[1, 2, 3]).await.unwrap();
    let m = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    assert!(m.versions[&1].destroyed && !m.versions[&1].deletion_time.is_empty());
    assert!(m.versions[&3].deletion_time.is_empty() && !m.versions[&3].destroyed);
    match c.read_version("kv2/", "k", 3).await.unwrap() {
        DataRead::Live(d, _) => assert_eq!(d.as_json(), r#"{"n":3}"#),
        other => panic!("{other:?}"),
    }
    // Missing versions and keys: 204, nothing created.
    c.delete_versions("kv2/", "k", &[99]).await.unwrap();
    c.destroy_versions("kv2/", "nokey", &[1]).await.unwrap();
    c.undelete_versions("kv2/", "nokey", &[1]).await.unwrap();
    assert!(c.read_metadata("kv2/", "nokey").await.unwrap().is_none());
    // updated_time does not move on delete, undelete or destroy.
    assert_eq!(m.updated_time, before.updated_time);
    assert_eq!((m.current_version, version_set(&m)), (4, vec![1, 2, 3, 4]));
    for (op, text) in [("delete", "No"), ("undelete", "No"), ("destroy", "no")] {
        let (status, _, body) = b.raw("POST", &format!("kv2/{op}/k"), &[], Some(json!({"versions": []}))).await;
        assert_eq!((status, errors(&body)), (400, vec![format!("{text} version number provided")]), "{op}");
    }
}

async fn delete_latest(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    c.soft_delete_latest("kv2/", "missing").await.unwrap();
    assert!(c.read_metadata("kv2/", "missing").await.unwrap().is_none());
    write_n(&b, "kv2/", "k", 2).await;
    c.soft_delete_latest("kv2/", "k").await.unwrap();
    let m = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    let first = m.versions[&2].deletion_time.clone();
    assert!(!first.is_empty() && m.versions[&1].deletion_time.is_empty());
    assert!(matches!(c.read_latest("kv2/", "k").await.unwrap(), DataRead::Deleted(meta) if meta.version == 2));
    c.soft_delete_latest("kv2/", "k").await.unwrap();
    let m = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    assert_eq!(m.versions[&2].deletion_time, first, "already deleted: unchanged");
    // A destroyed latest is left alone.
    c.write_version("kv2/", "k", &data(json!({})), 2).await.unwrap();
    c.destroy_versions("kv2/", "k", &[3]).await.unwrap();
    c.soft_delete_latest("kv2/", "k").await.unwrap();
    let m = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    assert!(m.versions[&3].destroyed && m.versions[&3].deletion_time.is_empty());
}

async fn delete_metadata(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    c.delete_metadata("kv2/", "missing").await.unwrap();
    write_n(&b, "kv2/", "k", 3).await;
    let before = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    c.delete_metadata("kv2/", "k").await.unwrap();
    assert!(c.read_metadata("kv2/", "k").await.unwrap().is_none());
    assert!(matches!(c.read_version("kv2/", "k", 1).await.unwrap(), DataRead::Missing));
    write_n(&b, "kv2/", "k", 1).await;
    let after = c.read_metadata("kv2/", "k").await.unwrap().unwrap();
    assert_eq!((after.current_version, version_set(&after)), (1, vec![1]));
    assert!(after.created_time > before.created_time);
}

async fn delete_version_after(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    c.write_metadata("kv2/", "t", &settings(0, false, "2s", &[])).await.unwrap();
    let written = c.write_version("kv2/", "t", &data(json!({"a": 1})), 0).await.unwrap();
    assert!(written.deletion_time > written.created_time, "deletion time set ahead at write");
    assert!(matches!(c.read_latest("kv2/", "t").await.unwrap(), DataRead::Live(..)), "readable until it comes");
    let m = c.read_metadata("kv2/", "t").await.unwrap().unwrap();
    assert_eq!((m.delete_version_after.as_str(), &m.versions[&1].deletion_time), ("2s", &written.deletion_time));
    b.advance(Duration::from_millis(2500)).await;
    assert!(matches!(c.read_latest("kv2/", "t").await.unwrap(), DataRead::Deleted(meta) if meta.deletion_time == written.deletion_time));
    // Undelete clears it for good; a delete of a version with a future time deletes now.
    c.undelete_versions("kv2/", "t", &[1]).await.unwrap();
    assert!(matches!(c.read_latest("kv2/", "t").await.unwrap(), DataRead::Live(..)));
    c.write_version("kv2/", "t", &data(json!({"a": 2})), 1).await.unwrap();
    c.delete_versions("kv2/", "t", &[2]).await.unwrap();
    assert!(matches!(c.read_version("kv2/", "t", 2).await.unwrap(), DataRead::Deleted(_)));
    // A key's negative value is refused; the mount's disables it (the smaller positive otherwise).
    let (status, _, body) = b.raw("POST", "kv2/metadata/t", &[], Some(json!({"delete_version_after": "-3s"}))).await;
    assert_eq!(status, 400);
    assert!(errors(&body)[0].contains("cannot provide negative value"), "{body}");
    c.sys("POST", "kv2/config", Some(json!({"delete_version_after": "-1s"}))).await.unwrap();
    let w = c.write_version("kv2/", "t", &data(json!({"a": 3})), 2).await.unwrap();
    assert_eq!(w.deletion_time, "");
    c.sys("POST", "kv2/config", Some(json!({"delete_version_after": "1h"}))).await.unwrap();
    let w = c.write_version("kv2/", "t", &data(json!({"a": 4})), 3).await.unwrap();
    assert!(!w.deletion_time.is_empty());
    assert!(matches!(c.read_latest("kv2/", "t").await.unwrap(), DataRead::Live(..)));
}

async fn scan_detailed_metadata(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    for p in ["a", "b/c", "b/d/e", "both", "both/y"] {
        write_n(&b, "kv2/", p, 1).await;
    }
    c.write_metadata("kv2/", "m", &settings(3, false, "0s", &[])).await.unwrap();
    c.delete_versions("kv2/", "a", &[1]).await.unwrap();
    let mount = c.mount_info("kv2/").await.unwrap();
    let listed = c.list_secrets(&mount).await.unwrap();
    let paths: Vec<&str> = listed.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["a", "b/c", "b/d/e", "both", "both/y", "m"]);
    for s in &listed {
        let meta = s.metadata.as_ref().unwrap();
        assert_eq!(Some(meta), c.read_metadata("kv2/", &s.path).await.unwrap().as_ref(), "{}", s.path);
    }
    let (status, _, body) = b.raw("SCAN", "kv2/detailed-metadata/", &[], None).await;
    assert_eq!(status, 200);
    let info: BTreeSet<&String> = body["data"]["key_info"].as_object().unwrap().keys().collect();
    assert_eq!(info.into_iter().cloned().collect::<Vec<_>>(), keys(&body));
    let (status, _, body) = b.raw("SCAN", "kv2/metadata/b/", &[], None).await;
    assert_eq!((status, keys(&body)), (200, vec!["c".to_owned(), "d/e".to_owned()]));
    let (status, _, body) = b.raw("SCAN", "kv2/metadata/b", &[("limit", "1")], None).await;
    assert_eq!((status, keys(&body).len()), (200, 2), "no trailing slash, limit ignored");
    for path in ["kv2/detailed-metadata/none/", "kv2/metadata/none/"] {
        let (status, _, body) = b.raw("SCAN", path, &[], None).await;
        assert_eq!((status, &body["data"]), (200, &json!({})), "{path}");
    }
}

async fn paged_list(b: Backend) {
    b.enable_kv("kv2/", 2);
    for p in ["f/k1", "f/k2", "f/k3", "f/k4", "f/k5", "f/sub/x", "both", "both/y"] {
        write_n(&b, "kv2/", p, 1).await;
    }
    let (status, _, body) = b.raw("LIST", "kv2/metadata/", &[], None).await;
    assert_eq!((status, keys(&body)), (200, vec!["both".to_owned(), "both/".to_owned(), "f/".to_owned()]));
    let (_, _, body) = b.raw("LIST", "kv2/metadata/f/", &[], None).await;
    assert_eq!(keys(&body), ["k1", "k2", "k3", "k4", "k5", "sub/"]);
    let (_, _, body) = b.raw("LIST", "kv2/metadata/f/", &[("limit", "2")], None).await;
    assert_eq!(body["data"]["keys"], json!(["k1", "k2"]));
    let (_, _, body) = b.raw("LIST", "kv2/metadata/f/", &[("limit", "2"), ("after", "k2")], None).await;
    assert_eq!(body["data"]["keys"], json!(["k3", "k4"]));
    let (_, _, body) = b.raw("LIST", "kv2/metadata/f/", &[("after", "k4")], None).await;
    assert_eq!(body["data"]["keys"], json!(["k5", "sub/"]));
    let (_, _, body) = b.raw("LIST", "kv2/metadata/f/", &[("limit", "0")], None).await;
    assert_eq!(keys(&body).len(), 6);
    for (path, query) in [("kv2/metadata/f/", vec![("limit", "2"), ("after", "sub/")]), ("kv2/metadata/f/k1", vec![]), ("kv2/metadata/none/", vec![])] {
        let (status, _, body) = b.raw("LIST", path, &query, None).await;
        assert_eq!((status, body), (404, json!({"errors": []})), "{path} {query:?}");
    }
    let (status, _, body) = b.raw("GET", "kv2/metadata/f", &[("list", "true")], None).await;
    assert_eq!((status, keys(&body).len()), (200, 6));
    let (status, _, body) = b.raw("LIST", "kv2/detailed-metadata/f/", &[("limit", "2"), ("after", "k4")], None).await;
    assert_eq!((status, &body["data"]["keys"]), (200, &json!(["k5", "sub/"])));
    assert_eq!(body["data"]["key_info"]["k5"]["current_version"], 1);
    assert_eq!(body["data"]["key_info"]["sub/"], json!({}));
}

async fn pagination_limit(b: Backend) {
    b.enable_kv("kv2/", 2);
    b.enable_kv("kv1/", 1);
    let c = b.client();
    for i in 1..=5 {
        write_n(&b, "kv2/", &format!("f/k{i}"), 1).await;
        c.write_v1("kv1/", &format!("f/k{i}"), &data(json!({"i": i}))).await.unwrap();
    }
    let t = b.limited_token(2);
    let (status, _, body) = b.raw_as(&t, "LIST", "kv2/metadata/f/", &[], None).await;
    assert_eq!((status, &body["data"]["keys"], &body["warnings"]), (200, &json!(["k1", "k2"]), &Value::Null), "cut short silently");
    let (status, _, body) = b.raw_as(&t, "LIST", "kv2/metadata/f/", &[("limit", "3")], None).await;
    assert_eq!((status, errors(&body)), (403, vec!["1 error occurred:\n\t* permission denied\n\n".to_owned()]));
    let (_, _, body) = b.raw_as(&t, "LIST", "kv2/metadata/f/", &[("limit", "2"), ("after", "k2")], None).await;
    assert_eq!(body["data"]["keys"], json!(["k3", "k4"]));
    let (_, _, body) = b.raw_as(&t, "LIST", "kv2/metadata/f/", &[("after", "k1")], None).await;
    assert_eq!(body["data"]["keys"], json!(["k2", "k3"]));
    let (_, _, body) = b.raw_as(&t, "LIST", "kv2/detailed-metadata/f/", &[], None).await;
    assert_eq!(body["data"]["keys"], json!(["k1", "k2"]));
    // SCAN is not limited.
    let (status, _, body) = b.raw_as(&t, "SCAN", "kv2/detailed-metadata/", &[], None).await;
    assert_eq!((status, keys(&body).len()), (200, 5));
    // KV v1 ignores the limit, and says so.
    let (status, _, body) = b.raw_as(&t, "LIST", "kv1/f/", &[], None).await;
    assert_eq!((status, keys(&body).len()), (200, 5));
    assert_eq!(body["warnings"], json!(["Endpoint ignored these unrecognized parameters: [limit]"]));
    let (_, _, body) = b.raw_as(&t, "LIST", "kv1/f/", &[("limit", "2"), ("after", "k1")], None).await;
    assert_eq!(body["warnings"], json!(["Endpoint ignored these unrecognized parameters: [after limit]"]));
    let (status, _, _) = b.raw_as(&t, "LIST", "kv1/f/", &[("limit", "3")], None).await;
    assert_eq!(status, 403);
    // The client: SCAN reads every key under the limit.
    let lc = b.client_as(&t);
    let listed = lc.list_secrets(&lc.mount_info("kv2/").await.unwrap()).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(lc.list_secrets(&lc.mount_info("kv1/").await.unwrap()).await.unwrap().len(), 5);
}

async fn list_walk_without_scan(b: Backend) {
    b.enable_kv("kv2/", 2);
    b.enable_kv("kv1/", 1);
    let c = b.client();
    let paths = ["a", "b/c", "f/k1", "f/k2", "f/k3", "f/k4", "f/k5"];
    for p in paths {
        write_n(&b, "kv2/", p, 1).await;
        c.write_v1("kv1/", p, &data(json!({"p": p}))).await.unwrap();
    }
    let t = b.policy_token(2, false);
    for (path, query) in [("kv2/detailed-metadata/", &[][..]), ("kv2/metadata/", &[("scan", "true")][..]), ("kv1/", &[][..])] {
        let method = if query.is_empty() { "SCAN" } else { "GET" };
        let (status, _, body) = b.raw_as(&t, method, path, query, None).await;
        assert_eq!((status, errors(&body)), (403, vec!["1 error occurred:\n\t* permission denied\n\n".to_owned()]), "{path}");
    }
    // Without scan the client walks with paged LIST: pages within the limit read every key.
    let mut cfg = common::config(&b.address(), &t);
    cfg.list_page_size = 2;
    let walker = b.client_with(cfg);
    for mount in ["kv2/", "kv1/"] {
        let listed = walker.list_secrets(&walker.mount_info(mount).await.unwrap()).await.unwrap();
        assert_eq!(listed.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), paths, "{mount}");
        assert!(listed.iter().all(|s| s.metadata.is_none()));
    }
    // Pages above the limit are refused, and the client says why.
    let mut cfg = common::config(&b.address(), &t);
    cfg.list_page_size = 3;
    let walker = b.client_with(cfg);
    let result = walker.list_secrets(&walker.mount_info("kv2/").await.unwrap()).await;
    assert!(matches!(result, Err(VaultError::PaginationLimited { page_size: 3, .. })), "{result:?}");
}

async fn kv1_values(b: Backend) {
    b.enable_kv("kv1/", 1);
    let c = b.client();
    c.write_v1("kv1/", "a/b", &data(json!({"user": "u1", "n": 2}))).await.unwrap();
    c.write_v1("kv1/", "a/c", &data(json!({"ttl": "1h", "v": 2}))).await.unwrap();
    c.write_v1("kv1/", "top", &data(json!({"x": true}))).await.unwrap();
    let read = c.read_v1("kv1/", "a/b").await.unwrap().unwrap();
    assert!(read.same_value(&data(json!({"n": 2, "user": "u1"}))));
    assert!(c.read_v1("kv1/", "a/none").await.unwrap().is_none());
    assert!(c.read_v1("kv1/", "metadata/a/b").await.unwrap().is_none());
    let (status, _, body) = b.raw("GET", "kv1/a/b", &[], None).await;
    assert_eq!((status, body["lease_duration"].as_u64()), (200, Some(2_764_800)));
    let (_, _, body) = b.raw("GET", "kv1/a/c", &[], None).await;
    assert_eq!((body["lease_duration"].as_u64(), &body["data"]["ttl"]), (Some(3600), &json!("1h")));
    let (status, _, body) = b.raw("POST", "kv1/a/empty", &[], Some(json!({}))).await;
    assert_eq!((status, errors(&body)), (400, vec!["missing data fields".to_owned()]));
    let (status, _, body) = b.raw("LIST", "kv1/", &[], None).await;
    assert_eq!((status, keys(&body)), (200, vec!["a/".to_owned(), "top".to_owned()]));
    let (status, _, body) = b.raw("LIST", "kv1/a/", &[("limit", "1"), ("after", "b")], None).await;
    assert_eq!((status, keys(&body).len()), (200, 2));
    assert_eq!(body["warnings"], json!(["Endpoint ignored these unrecognized parameters: [after limit]"]));
    let (status, _, body) = b.raw("LIST", "kv1/none/", &[], None).await;
    assert_eq!((status, body), (404, json!({"errors": []})));
    let (status, _, body) = b.raw("SCAN", "kv1/", &[], None).await;
    assert_eq!((status, keys(&body)), (200, vec!["a/b".to_owned(), "a/c".to_owned(), "top".to_owned()]));
    let (status, _, body) = b.raw("SCAN", "kv1/none/", &[], None).await;
    assert_eq!((status, &body["data"]), (200, &json!({})));
    let paths: Vec<String> = c.list_secrets(&c.mount_info("kv1/").await.unwrap()).await.unwrap().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["a/b", "a/c", "top"]);
    c.delete_v1("kv1/", "a/b").await.unwrap();
    c.delete_v1("kv1/", "a/b").await.unwrap();
    assert!(c.read_v1("kv1/", "a/b").await.unwrap().is_none());
}

async fn wrong_flavour_and_missing_mount(b: Backend) {
    b.enable_kv("kv2/", 2);
    let c = b.client();
    write_n(&b, "kv2/", "x", 1).await;
    assert!(matches!(c.read_v1("kv2/", "x").await, Err(VaultError::UnexpectedNotFound { .. })));
    let (status, _, body) = b.raw("GET", "kv2/x", &[], None).await;
    assert_eq!((status, &body["data"]), (404, &Value::Null));
    assert!(body["warnings"][0].as_str().unwrap().starts_with("Invalid path for a versioned K/V secrets engine"));
    let (status, _, body) = b.raw("GET", "nomount/data/x", &[], None).await;
    assert_eq!((status, errors(&body)), (404, vec!["no handler for route \"nomount/data/x\". route entry not found.".to_owned()]));
    assert!(matches!(c.read_metadata("nomount/", "x").await, Err(VaultError::MountNotFound { .. })));
    let (status, _, body) = b.raw("SCAN", "kv2/data/", &[], None).await;
    assert_eq!((status, errors(&body)), (405, vec!["1 error occurred:\n\t* unsupported operation\n\n".to_owned()]));
}

async fn tokens(b: Backend) {
    b.enable_kv("kv2/", 2);
    let bad = b.client_as("bad-token");
    assert!(matches!(bad.read_metadata("kv2/", "x").await, Err(VaultError::PermissionDenied { message, .. }) if message == "permission denied"));
    let (status, _, body) = b.raw_as("bad-token", "GET", "kv2/data/x", &[], None).await;
    assert_eq!((status, body), (403, json!({"errors": ["permission denied"]})));
    let (status, _, body) = b.raw_as("", "LIST", "kv2/metadata/", &[], None).await;
    assert_eq!((status, body), (403, json!({"errors": ["permission denied"]})));
    let c = b.client();
    let lease = c.lookup_self().await.unwrap();
    assert_eq!((lease.ttl, lease.renewable), (Duration::ZERO, false));
    match c.renew_self(Duration::from_secs(60)).await {
        Err(VaultError::Rejected { status: 400, message, .. }) => assert_eq!(message, "lease is not renewable"),
        other => panic!("{other:?}"),
    }
    // A limited token: a missing mount and its own lookup are policy denials.
    let t = b.limited_token(100);
    for (method, path) in [("GET", "nomount/data/x"), ("GET", "auth/token/lookup-self")] {
        let (status, _, body) = b.raw_as(&t, method, path, &[], None).await;
        assert_eq!((status, errors(&body)), (403, vec!["1 error occurred:\n\t* permission denied\n\n".to_owned()]), "{path}");
    }
}

async fn sealed(b: Backend) {
    b.enable_kv("kv2/", 2);
    b.seal();
    let (status, _, body) = b.raw("GET", "kv2/data/x", &[], None).await;
    assert_eq!((status, body), (503, json!({"errors": ["Vault is sealed"]})));
    let (status, _, body) = b.raw("LIST", "kv2/metadata/", &[], None).await;
    assert_eq!((status, errors(&body)), (503, vec!["Vault is sealed".to_owned()]));
    let (status, _, body) = b.raw("GET", "sys/seal-status", &[], None).await;
    assert_eq!((status, body["sealed"].as_bool()), (200, Some(true)));
    assert!(matches!(b.client().read_metadata("kv2/", "x").await, Err(VaultError::Sealed { .. })));
    let (status, _, body) = b.raw("GET", "sys/health", &[], None).await;
    assert_eq!((status, body["sealed"].as_bool(), body["standby"].as_bool()), (503, Some(true), Some(true)));
}

async fn rate_limited(b: Backend) {
    b.enable_kv("kv2/", 2);
    b.throttle();
    let mut answer = None;
    for _ in 0..10 {
        let (status, headers, body) = b.raw("GET", "kv2/data/x", &[], None).await;
        if status == 429 {
            answer = Some((headers, body));
            break;
        }
    }
    let (headers, body) = answer.expect("throttled within 10 requests");
    let retry_after: u64 = headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry_after <= 60);
    assert_eq!(errors(&body), vec!["request path \"kv2/data/x\": rate limit quota exceeded".to_owned()]);
    match b.client().read_metadata("kv2/", "x").await {
        Err(VaultError::RateLimited { retry_after, .. }) => assert!(retry_after.is_some()),
        other => panic!("{other:?}"),
    }
}

/// Whole answers, compared field by field after [`common::shape`].
async fn response_shapes(b: Backend) {
    b.enable_kv("kv2/", 2);
    b.enable_kv("kv1/", 1);
    let c = b.client();
    let env = |data: Value| json!({"request_id": "<request_id>", "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": data, "wrap_info": null, "warnings": null, "auth": null});
    let vmeta = |v: u64, deleted: bool| json!({"created_time": "<time>", "custom_metadata": null,
        "deletion_time": if deleted { "<time>" } else { "" }, "destroyed": false, "version": v});
    let (s, _, body) = b.raw("POST", "kv2/data/a/b", &[], Some(json!({"options": {"cas": 0}, "data": {"z": {"b": 1, "a": [1, "x"]}}}))).await;
    assert_eq!((s, common::shape(&body)), (200, env(vmeta(1, false))));
    let (s, _, body) = b.raw("GET", "kv2/data/a/b", &[], None).await;
    assert_eq!((s, common::shape(&body)), (200, env(json!({"data": {"z": {"a": [1, "x"], "b": 1}}, "metadata": vmeta(1, false)}))));
    c.delete_versions("kv2/", "a/b", &[1]).await.unwrap();
    let (s, _, body) = b.raw("GET", "kv2/data/a/b", &[], None).await;
    assert_eq!((s, common::shape(&body)), (404, env(json!({"data": null, "metadata": vmeta(1, true)}))));
    let meta = json!({"cas_required": false, "created_time": "<time>", "current_metadata_version": 0, "current_version": 1,
        "custom_metadata": null, "delete_version_after": "0s", "max_versions": 0, "metadata_cas_required": false,
        "oldest_version": 0, "updated_time": "<time>",
        "versions": {"1": {"created_time": "<time>", "deletion_time": "<time>", "destroyed": false}}});
    let (s, _, body) = b.raw("GET", "kv2/metadata/a/b", &[], None).await;
    assert_eq!((s, common::shape(&body)), (200, env(meta.clone())));
    let (s, _, body) = b.raw("LIST", "kv2/detailed-metadata/a/", &[], None).await;
    assert_eq!((s, common::shape(&body)), (200, env(json!({"key_info": {"b": meta.clone()}, "keys": ["b"]}))));
    let (s, _, body) = b.raw("SCAN", "kv2/detailed-metadata/", &[], None).await;
    assert_eq!((s, common::shape(&body)), (200, env(json!({"key_info": {"a/b": meta}, "keys": ["a/b"]}))));
    let (s, _, body) = b.raw("LIST", "kv2/metadata/", &[], None).await;
    assert_eq!((s, common::shape(&body)), (200, env(json!({"keys": ["a/"]}))));
    let (s, _, body) = b.raw("GET", "kv2/config", &[], None).await;
    let config = json!({"cas_required": false, "delete_version_after": "0s", "max_versions": 0, "metadata_cas_required": false});
    assert_eq!((s, common::shape(&body)), (200, env(config)));
    c.write_v1("kv1/", "v", &data(json!({"k": "v"}))).await.unwrap();
    let (s, _, body) = b.raw("GET", "kv1/v", &[], None).await;
    let mut v1 = env(json!({"k": "v"}));
    v1["lease_duration"] = json!(2_764_800);
    assert_eq!((s, common::shape(&body)), (200, v1));
    let mount = json!({"accessor": "<accessor>", "config": {"default_lease_ttl": 0, "force_no_cache": false, "max_lease_ttl": 0},
        "deprecation_status": "supported", "description": "", "external_entropy_access": false, "local": false,
        "options": {"version": "2"}, "plugin_version": "", "running_plugin_version": "v2.7.2+builtin.bao",
        "running_sha256": "", "seal_wrap": false, "type": "kv", "uuid": "<uuid>"});
    let (s, _, body) = b.raw("GET", "sys/mounts/kv2", &[], None).await;
    let mut top = env(mount.clone());
    for (k, v) in mount.as_object().unwrap() {
        top[k] = v.clone();
    }
    assert_eq!((s, common::shape(&body)), (200, top));
    let mut ui = mount;
    ui["path"] = json!("kv2/");
    let (s, _, body) = b.raw("GET", "sys/internal/ui/mounts/kv2", &[], None).await;
    assert_eq!((s, common::shape(&body)), (200, env(ui)));
    let (s, _, body) = b.raw("GET", "sys/health", &[], None).await;
    let health = json!({"initialized": true, "sealed": false, "standby": false, "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled", "server_time_utc": "<time>", "version": "2.7.2",
        "cluster_name": "<cluster_name>", "cluster_id": "<cluster_id>"});
    assert_eq!((s, common::shape(&body)), (200, health));
    let (s, _, body) = b.raw("GET", "auth/token/lookup-self", &[], None).await;
    let d = &body["data"];
    assert_eq!((s, &d["policies"], &d["ttl"], &d["renewable"], &d["id"]), (200, &json!(["root"]), &json!(0), &json!(false), &json!("root")));
}
