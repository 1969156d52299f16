//! `vsync plan`: the stages of a cycle up to its first write, on a copy of the info, with the
//! refusals a cycle without `--allow-*` flags would stop on collected instead of raised.

use std::collections::HashMap;
use std::sync::Arc;

use vsync_core::cycle::{self, CycleFlags, CyclePlan};
use vsync_core::orphans;
use vsync_core::{Action, Clock, DestinationSpec, OriginInfo, PathMapper, Refusal, SecretPath};
use vsync_state::StateStore;
use vsync_vault::VaultClient;

use super::inspect::{inspect_all, rebuild_targets};
use super::load::load_for_preview;
use super::plan::plan;
use crate::exact::{Inspected, Vaults};
use crate::fault::Fault;
use crate::progress::Progress;

/// Plans a cycle without writing anything (`vsync plan`): the plan, what `versions = "all"`
/// would do per key (both Vaults' metadata are read), and what would stop a cycle run without
/// `--allow-*` flags. `clock` dates the versions it reads.
#[allow(clippy::too_many_arguments)] // the parts of a destination a preview borrows, one each
pub async fn preview<'a>(
    spec: &'a DestinationSpec,
    store: &StateStore,
    paths: Option<&'a mut dyn PathMapper>,
    origin_vault: &VaultClient,
    dest_vault: &VaultClient,
    origin: &OriginInfo,
    progress: Option<&dyn Progress>,
    clock: Arc<dyn Clock>,
) -> Result<Preview, Fault> {
    let dest = load_for_preview(store, &spec.name, origin.entries.count()).await?;
    let everything = CycleFlags { allow_mass_delete: true, allow_origin_change: true };
    let planned = plan(spec, paths, origin, &dest, everything)?;
    let vaults = Vaults { origin: origin_vault.clone(), dest: dest_vault.clone(), clock };
    let (exact, failures) = inspect_all(&vaults, &planned.plan, origin, &dest, spec.workers, progress).await;
    if let Some((_, fault)) = failures.into_iter().next() {
        return Err(fault);
    }
    let mut refusals = Vec::new();
    if let Err(r) = cycle::bind_origin_mounts(&spec.name, &dest.origin_mounts, &origin.mounts, false) {
        refusals.push(r);
    }
    let rebuilds = rebuild_targets(&planned.plan, &exact);
    if let Err(r) = cycle::mass_delete_guard(spec.rules(), &planned.plan, &dest, &rebuilds) {
        refusals.push(r);
    }
    Ok(Preview { cycle: planned, exact, refusals })
}

/// What `vsync plan` shows: the plan, and what would stop a real cycle.
#[derive(Debug)]
pub struct Preview {
    /// The plan a cycle would execute.
    pub cycle: CyclePlan,
    /// Per key of `versions = "all"`: what replicating it takes.
    pub exact: HashMap<SecretPath, Inspected>,
    /// Refusals a cycle without `--allow-*` flags would stop on.
    pub refusals: Vec<Refusal>,
}

impl Preview {
    /// The plan as `vsync plan` prints it: one line per action, then what would stop a cycle.
    pub fn human(&self, name: &str) -> String {
        use std::fmt::Write as _;
        let plan = &self.cycle.plan;
        let mut out = String::new();
        for key in &plan.failed {
            let _ = writeln!(out, "FAIL   {key}: its path could not be mapped (see the log)");
        }
        for action in plan.writes.iter().chain(plan.removals.iter()) {
            let _ = match action {
                Action::CopyV2 { key, version, target, reason } => writeln!(out, "copy   {key} v{version} -> {target} ({reason:?})"),
                Action::ExactV2 { key, target, reason } => {
                    let what = self.exact.get(key).map_or_else(|| "changed at the origin since the scan, next cycle".to_owned(), Inspected::summary);
                    writeln!(out, "exact  {key} -> {target} ({reason:?}): {what}")
                }
                Action::SyncV1 { key, target } => writeln!(out, "check  {key} -> {target} (kv1)"),
                Action::Record { key, .. } => writeln!(out, "record {key} (metadata only or no live version)"),
                Action::Delete { target, .. } => writeln!(out, "delete {target}"),
                Action::SoftDelete { target, .. } => writeln!(out, "soft-delete {target}"),
                Action::Forget { key } if orphans::is_orphan(key) => Ok(()),
                Action::Forget { key } => writeln!(out, "forget {key}"),
            };
        }
        for refusal in &self.refusals {
            let _ = writeln!(out, "STOP   a cycle would stop here: {refusal}");
        }
        let _ = writeln!(
            out,
            "plan for `{name}`: {} write(s), {} removal(s), {} unchanged",
            plan.writes.len(),
            plan.removals.len(),
            plan.unchanged
        );
        out
    }
}

impl Preview {
    /// The plan as `vsync plan --format json` prints it: a machine report for reviewing a
    /// change before it applies. Paths and counts only, never a value.
    pub fn json(&self, name: &str) -> serde_json::Value {
        use serde_json::json;
        let plan = &self.cycle.plan;
        let action = |a: &Action| match a {
            Action::CopyV2 { key, version, target, reason } => {
                json!({"op": "copy", "key": key.to_string(), "version": version, "target": target.to_string(), "reason": format!("{reason:?}")})
            }
            Action::ExactV2 { key, target, reason } => json!({
                "op": "replicate",
                "key": key.to_string(),
                "target": target.to_string(),
                "reason": format!("{reason:?}"),
                "detail": self.exact.get(key).map_or_else(|| "changed at the origin since the scan, next cycle".to_owned(), Inspected::summary),
            }),
            Action::SyncV1 { key, target } => json!({"op": "sync-kv1", "key": key.to_string(), "target": target.to_string()}),
            Action::Record { key, .. } => json!({"op": "record", "key": key.to_string()}),
            // An orphan (a target no origin key is recorded at) has no origin key to show.
            Action::Delete { key, target, .. } => json!({"op": "delete", "key": origin_key(key), "target": target.to_string()}),
            Action::SoftDelete { key, target } => json!({"op": "soft-delete", "key": origin_key(key), "target": target.to_string()}),
            Action::Forget { key } => json!({"op": "forget", "key": origin_key(key)}),
        };
        json!({
            "destination": name,
            "writes": plan.writes.iter().map(action).collect::<Vec<_>>(),
            "removals": plan.removals.iter().map(action).collect::<Vec<_>>(),
            "mapping_failures": plan.failed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "refusals": self.refusals.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "summary": {"writes": plan.writes.len(), "removals": plan.removals.len(), "unchanged": plan.unchanged},
        })
    }
}

/// An origin key as `vsync plan` shows it: `null` for an orphan's.
fn origin_key(key: &SecretPath) -> serde_json::Value {
    if orphans::is_orphan(key) { serde_json::Value::Null } else { serde_json::Value::String(key.to_string()) }
}
