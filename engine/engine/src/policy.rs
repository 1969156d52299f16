//! `vsync policy`: the least-privilege Vault policy (HCL) each role needs for the configured
//! mounts and options; `tests/e2e/main.rs` (`generated_policies_are_all_a_sync_needs`) runs a
//! sync with tokens that hold exactly these policies.

use std::fmt::Write as _;

use vsync_core::{KvVersion, VersionsMode};

/// The origin role's policy (also what a destination's token for the origin needs): read and
/// list, plus, on OpenBao (`scan`: the server knows SCAN), the `scan` capability: one SCAN
/// request lists a mount with its metadata, and a policy's `pagination_limit` never shortens
/// it. `mounts` are normalised with their KV version.
pub fn origin(mounts: &[(String, KvVersion)], scan: bool) -> String {
    let mut out = String::from("# vsync origin: read-only\n");
    if scan {
        out.push_str(
            "# OpenBao: `scan` lets one SCAN request list a mount (with its metadata); without it vsync\n\
             # walks with paged LIST requests, far slower. Keep `pagination_limit` off these paths or\n\
             # at least 1000: a LIST page the policy refuses stops the scan.\n",
        );
    }
    for (m, kind) in mounts {
        let m = m.trim_end_matches('/');
        let caps = if scan { r#"["read", "list", "scan"]"# } else { r#"["read", "list"]"# };
        match kind {
            KvVersion::V2 => {
                let _ = writeln!(out, "path \"{m}/metadata/*\" {{ capabilities = {caps} }}");
                let _ = writeln!(out, "path \"{m}/data/*\" {{ capabilities = [\"read\"] }}");
                if scan {
                    let _ = writeln!(out, "path \"{m}/detailed-metadata/*\" {{ capabilities = [\"list\", \"scan\"] }}");
                }
            }
            KvVersion::V1 => {
                let _ = writeln!(out, "path \"{m}/*\" {{ capabilities = {caps} }}");
            }
        }
    }
    out.push_str(FOOTER);
    out
}

/// Whether the server behind `client` knows SCAN (OpenBao 2.2 and later): a SCAN of the
/// reserved, empty folder of `mount` is answered, or refused for want of the capability. A
/// server without SCAN (HashiCorp Vault) rejects the method itself.
pub async fn server_scans(client: &vsync_vault::VaultClient, mount: &str, kind: KvVersion) -> bool {
    let m = mount.trim_end_matches('/');
    let path = match kind {
        KvVersion::V2 => format!("{m}/detailed-metadata/{}/", crate::check::PROBE_FOLDER),
        KvVersion::V1 => format!("{m}/{}/", crate::check::PROBE_FOLDER),
    };
    matches!(client.sys("SCAN", &path, None).await, Ok(_) | Err(vsync_vault::VaultError::PermissionDenied { .. }))
}

/// A destination's policy for its destination mounts.
pub fn destination(mounts: &[(String, KvVersion)], versions: VersionsMode) -> String {
    let mut out = String::from("# vsync destination: writes the replicas (and a probe under .vsync-check/ for `vsync check`)\n");
    for (m, kind) in mounts {
        let m = m.trim_end_matches('/');
        match kind {
            KvVersion::V2 => {
                let _ = writeln!(out, "path \"{m}/metadata/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\"] }}");
                let _ = writeln!(out, "path \"{m}/data/*\" {{ capabilities = [\"create\", \"update\", \"read\"] }}");
                let _ = writeln!(out, "path \"{m}/delete/*\" {{ capabilities = [\"update\"] }}");
                if versions == VersionsMode::All {
                    let _ = writeln!(out, "path \"{m}/undelete/*\" {{ capabilities = [\"update\"] }}");
                    let _ = writeln!(out, "path \"{m}/destroy/*\" {{ capabilities = [\"update\"] }}");
                    let _ = writeln!(out, "path \"{m}/config\" {{ capabilities = [\"read\"] }}  # versions = \"all\" checks the mount settings");
                }
            }
            KvVersion::V1 => {
                let _ = writeln!(out, "path \"{m}/*\" {{ capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\"] }}");
            }
        }
    }
    out.push_str(FOOTER);
    out
}

/// Each mount's KV version, read from the Vault (sorted, without duplicates).
pub async fn mount_kinds(client: &vsync_vault::VaultClient, mut mounts: Vec<String>) -> Result<Vec<(String, KvVersion)>, crate::Fault> {
    mounts.sort();
    mounts.dedup();
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        let info = client.mount_info(&m).await.map_err(|e| crate::Fault::vault(format!("mount `{m}`"), e))?;
        out.push((m, info.kind));
    }
    Ok(out)
}

const FOOTER: &str = "# Token renewal (auth/token/renew-self, lookup-self) comes with Vault's `default` policy.\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_name_every_mount_and_only_what_the_mode_needs() {
        let mounts = vec![("secret/".to_owned(), KvVersion::V2), ("kv1/".to_owned(), KvVersion::V1)];
        let o = origin(&mounts, false);
        assert!(o.contains("path \"secret/data/*\" { capabilities = [\"read\"] }"), "{o}");
        assert!(o.contains("path \"kv1/*\" { capabilities = [\"read\", \"list\"] }"), "{o}");
        assert!(!o.contains("update") && !o.contains("scan"), "the origin is read-only, and Vault has no SCAN: {o}");
        // OpenBao: `scan` is granted, not left as a comment.
        let bao = origin(&mounts, true);
        assert!(bao.contains("path \"secret/detailed-metadata/*\" { capabilities = [\"list\", \"scan\"] }"), "{bao}");
        assert!(bao.contains("path \"kv1/*\" { capabilities = [\"read\", \"list\", \"scan\"] }"), "{bao}");
        assert!(!bao.lines().any(|l| l.starts_with("# path")), "no commented-out grant: {bao}");
        let latest = destination(&mounts, VersionsMode::Latest);
        assert!(!latest.contains("destroy"), "{latest}");
        let all = destination(&mounts, VersionsMode::All);
        assert!(all.contains("path \"secret/destroy/*\"") && all.contains("path \"secret/config\""), "{all}");
    }
}
