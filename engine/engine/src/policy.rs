//! `vsync policy`: the least-privilege Vault policy (HCL) each role needs for the configured
//! mounts and options, as tested in reference/vault-kv.md §1.7.

use std::fmt::Write as _;

use vsync_core::{KvVersion, VersionsMode};

/// The origin role's policy (also what a destination's token for the origin needs): read and
/// list, plus SCAN for OpenBao's fast listing. `mounts` are normalised with their KV version.
pub fn origin(mounts: &[(String, KvVersion)]) -> String {
    let mut out = String::from("# vsync origin: read-only\n");
    for (m, kind) in mounts {
        let m = m.trim_end_matches('/');
        match kind {
            KvVersion::V2 => {
                let _ = writeln!(out, "path \"{m}/metadata/*\" {{ capabilities = [\"read\", \"list\"] }}");
                let _ = writeln!(out, "path \"{m}/data/*\" {{ capabilities = [\"read\"] }}");
                let _ = writeln!(
                    out,
                    "# OpenBao only: one SCAN request lists the mount with its metadata (else vsync walks with LIST):\n\
                     # path \"{m}/detailed-metadata/*\" {{ capabilities = [\"list\", \"scan\"] }}"
                );
            }
            KvVersion::V1 => {
                let _ = writeln!(out, "path \"{m}/*\" {{ capabilities = [\"read\", \"list\"] }}");
            }
        }
    }
    out.push_str(FOOTER);
    out
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
        let o = origin(&mounts);
        assert!(o.contains("path \"secret/data/*\" { capabilities = [\"read\"] }"), "{o}");
        assert!(o.contains("path \"kv1/*\" { capabilities = [\"read\", \"list\"] }"), "{o}");
        assert!(!o.contains("update"), "the origin is read-only: {o}");
        let latest = destination(&mounts, VersionsMode::Latest);
        assert!(!latest.contains("destroy"), "{latest}");
        let all = destination(&mounts, VersionsMode::All);
        assert!(all.contains("path \"secret/destroy/*\"") && all.contains("path \"secret/config\""), "{all}");
    }
}
