//! The invariants, checked on the fakes' full state (not through the engine's eyes).

use std::collections::BTreeMap;
use std::time::SystemTime;
use std::sync::{Arc, Mutex};

use vsync_core::{DeletePolicy, VersionsMode};
use vsync_engine::exact::key_meta;
use vsync_vault::DataRead;
use vsync_vault_fake::KeyState;

use crate::schedule::Sim;

/// Every secret value the simulator writes holds this, so I4 can look for it anywhere.
pub const SECRET_MARKER: &str = "sv-sim-";

/// The log lines of one schedule.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogCapture {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// I4 (logs): no secret value in any log line, at any level.
pub fn no_secret_in_logs(logs: &LogCapture) -> Result<(), String> {
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    match text.lines().find(|l| l.contains(SECRET_MARKER)) {
        Some(line) => Err(format!("I4: a secret value reached the logs: {line}")),
        None => Ok(()),
    }
}

/// I4 (state store): no secret value in anything the state store holds.
pub fn no_secret_in_store(store: &vsync_state::MemoryStore) -> Result<(), String> {
    for (name, bytes) in store.stored() {
        if bytes.windows(SECRET_MARKER.len()).any(|w| w == SECRET_MARKER.as_bytes()) {
            return Err(format!("I4: a secret value reached the state store in {name}"));
        }
    }
    Ok(())
}

/// The live data of a key's current version (KV v2) as of the fake's clock, if any.
fn current_live(key: &KeyState, now: SystemTime) -> Option<&serde_json::Value> {
    let v = key.versions.get(&key.current_version)?;
    if v.destroyed || deleted_by(&v.deletion_time, now) { None } else { v.data.as_ref() }
}

fn deleted_by(deletion_time: &str, now: SystemTime) -> bool {
    !deletion_time.is_empty() && humantime::parse_rfc3339_weak(deletion_time).is_ok_and(|t| t <= now)
}

/// I2: after a clean cycle with no failed secret, every origin key whose current version is
/// live (and not about to expire) is present at the destination with that data.
pub fn live_origin_keys_are_present(sim: &Sim) -> Result<(), String> {
    let now = sim.world.now();
    let origin = sim.world.origin.snapshot("secret/");
    let dest = sim.world.dest.snapshot("secret/");
    for (path, key) in &origin {
        let Some(data) = current_live(key, now) else { continue };
        if !key.versions[&key.current_version].deletion_time.is_empty() {
            continue; // expires on its own schedule on each side
        }
        let held = dest.get(path).and_then(|d| current_live(d, now));
        if held != Some(data) {
            return Err(format!("I2: secret/{path} is live at the origin but the destination holds {held:?} after a clean cycle"));
        }
    }
    let (o1, d1) = (sim.world.origin.snapshot("kv1/"), sim.world.dest.snapshot("kv1/"));
    for (path, key) in &o1 {
        if d1.get(path).and_then(|d| d.v1_data.as_ref()) != key.v1_data.as_ref() {
            return Err(format!("I2: kv1/{path} differs at the destination after a clean cycle"));
        }
    }
    Ok(())
}

/// I3: every version a cycle wrote at the destination holds the origin's data of that version
/// (`all`), or a value the origin held at that path (`latest`); nothing older or foreign is
/// written over what was there. `before` is the destination as the cycle found it.
pub fn writes_hold_origin_data(sim: &Sim, before: &BTreeMap<String, KeyState>) -> Result<(), String> {
    let now = sim.world.now();
    let origin = sim.world.origin.snapshot("secret/");
    for (path, key) in sim.world.dest.snapshot("secret/") {
        for (n, v) in &key.versions {
            // A deleted version's data cannot be read back, so a replica holds a placeholder.
            let Some(data) = v.data.as_ref().filter(|_| !deleted_by(&v.deletion_time, now)) else { continue };
            let was = before.get(&path).and_then(|k| k.versions.get(n)).and_then(|v| v.data.as_ref());
            if was == Some(data) {
                continue; // not written by this cycle
            }
            if data.get("vsync_placeholder").is_some() {
                continue; // stands in for a version deleted at the origin, and is deleted next
            }
            let had = sim.history.get(&format!("secret/{path}")).is_some_and(|h| h.contains(data));
            let same_number = origin.get(&path).and_then(|o| o.versions.get(n)).and_then(|o| o.data.as_ref());
            let bad = match sim.world.setup.versions {
                VersionsMode::All => same_number != Some(data),
                VersionsMode::Latest => !had,
            };
            if bad {
                return Err(format!("I3: the cycle wrote secret/{path} v{n} = {data:?}, but the origin's v{n} is {same_number:?}"));
            }
        }
    }
    Ok(())
}

/// I1: after quiescence the destination equals the origin on every reproducible field.
pub async fn destination_equals_origin(sim: &Sim) -> Result<(), String> {
    let deletes = sim.world.setup.deletes;
    let now = sim.world.now();
    let (origin, dest) = (sim.world.origin.snapshot("secret/"), sim.world.dest.snapshot("secret/"));
    let latest = sim.world.setup.versions == VersionsMode::Latest;
    for (path, d) in &dest {
        // Gone: no key at the origin, or (`latest`) a current version that is not live.
        let gone = match origin.get(path) {
            None => true,
            Some(o) => latest && current_live(o, now).is_none(),
        };
        let kept = match deletes {
            DeletePolicy::Mirror => true,
            DeletePolicy::Soft => current_live(d, now).is_some(),
            DeletePolicy::Ignore => false,
        };
        if gone && kept {
            return Err(format!("I1: secret/{path} is gone at the origin but not at the destination ({deletes:?})"));
        }
    }
    match sim.world.setup.versions {
        VersionsMode::All => exact_replica(sim, &origin).await?,
        VersionsMode::Latest => {
            for (path, o) in &origin {
                let want = current_live(o, now);
                let held = dest.get(path).and_then(|d| current_live(d, now));
                if want.is_some() && held != want {
                    return Err(format!("I1: secret/{path}: origin's current {want:?}, destination {held:?}"));
                }
            }
        }
    }
    kv1_equal(sim)
}

fn kv1_equal(sim: &Sim) -> Result<(), String> {
    let (o1, d1) = (sim.world.origin.snapshot("kv1/"), sim.world.dest.snapshot("kv1/"));
    for (path, key) in &o1 {
        if d1.get(path).and_then(|d| d.v1_data.as_ref()) != key.v1_data.as_ref() {
            return Err(format!("I1: kv1/{path} differs at the destination"));
        }
    }
    if sim.world.setup.deletes == DeletePolicy::Mirror {
        if let Some(extra) = d1.keys().find(|p| !o1.contains_key(*p)) {
            return Err(format!("I1: kv1/{extra} is gone at the origin but still at the destination"));
        }
    }
    Ok(())
}

/// Every origin key's reproducible metadata and live data, read as a user would.
async fn exact_replica(sim: &Sim, origin: &BTreeMap<String, KeyState>) -> Result<(), String> {
    let (oc, dc) = (&sim.world.origin_admin, &sim.world.dest_admin);
    let now = sim.world.now();
    for path in origin.keys() {
        let om = oc.read_metadata("secret/", path).await.map_err(|e| e.to_string())?;
        let dm = dc.read_metadata("secret/", path).await.map_err(|e| e.to_string())?;
        let (Some(om), Some(dm)) = (om, dm) else {
            return Err(format!("I1: secret/{path} is missing at the destination"));
        };
        let (o, d) = (key_meta(&om, now), key_meta(&dm, now));
        if !o.same_replica(&d) {
            return Err(format!("I1: secret/{path}: metadata differs:\n  origin      {o:?}\n  destination {d:?}"));
        }
        for (v, f) in &o.versions {
            if !f.live() {
                continue;
            }
            let a = oc.read_version("secret/", path, *v).await.map_err(|e| e.to_string())?;
            let b = dc.read_version("secret/", path, *v).await.map_err(|e| e.to_string())?;
            match (a, b) {
                (DataRead::Live(x, _), DataRead::Live(y, _)) if x.same_value(&y) => {}
                (x, y) => return Err(format!("I1: secret/{path} v{v}: data differs: {x:?} vs {y:?}")),
            }
        }
    }
    Ok(())
}

/// I5: after quiescence `verify` finds no drift; after a value is changed behind vsync's back
/// at the destination, it finds that.
pub async fn verify_detects_injected_drift(sim: &mut Sim) -> Result<(), String> {
    let report = run_verify(sim).await?;
    if report.has_drift() {
        return Err(format!("I5: verify reports drift after quiescence: {:?} {:?}", report.drifted, report.extra));
    }
    let now = sim.world.now();
    let target = sim.world.origin.snapshot("secret/").into_iter().find(|(_, k)| current_live(k, now).is_some() && k.versions[&k.current_version].deletion_time.is_empty());
    let Some((path, _)) = target else { return Ok(()) };
    let dest = sim.world.dest_admin.clone();
    let current = dest.read_metadata("secret/", &path).await.map_err(|e| e.to_string())?.map_or(0, |m| m.current_version);
    let data = sim.value();
    dest.write_version("secret/", &path, &data, current).await.map_err(|e| e.to_string())?;
    sim.trace.push(format!("drift: a new version of secret/{path} written at the destination"));
    let report = run_verify(sim).await?;
    if !report.has_drift() {
        return Err(format!("I5: verify missed the drift injected at secret/{path}"));
    }
    Ok(())
}

async fn run_verify(sim: &mut Sim) -> Result<vsync_engine::verify::VerifyReport, String> {
    let spec = sim.world.spec();
    let mounts: Vec<String> = sim.world.origin_spec().mounts;
    let store = sim.world.store();
    let vaults = vsync_engine::exact::Vaults {
        origin: sim.world.origin_admin.clone(),
        dest: sim.world.dest_admin.clone(),
        clock: std::sync::Arc::new(sim.world.clock),
    };
    vsync_engine::verify::verify(&vaults, &mounts, &spec, &store, None, true)
        .await
        .map_err(|e| format!("verify failed: {e}"))
}
