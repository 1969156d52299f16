//! `vsync plugin validate DIR`: loads every component of a directory on its own, checks its
//! world and API version, and runs the test vectors shipped beside it
//! (`<name>.vectors.toml`), under the configured time and memory limits.
//!
//! Vectors file format:
//! ```toml
//! config = { from = "prod/", to = "eu/" }   # optional default config (JSON for `configure`)
//! [context]                                  # optional default context
//! destination = "eu"
//! labels = { region = "eu" }
//!
//! [[vector]]
//! path = "prod/app/db"
//! expect = "eu/app/db"   # or: dropped = true | included = true | error = "invalid-config"
//! ```
//!
//! `error` names a plugin error case (`invalid-config`, `invalid-path`, `failed`), a host
//! verdict (`timeout`, `memory-exceeded`, `output-too-long`, `trap`), or text the error
//! message contains.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{CallError, Context, HostConfig, HostError, PluginHost, PluginKind};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CtxSpec {
    origin: Option<String>,
    destination: Option<String>,
    origin_mount: Option<String>,
    destination_mount: Option<String>,
    kv_version: Option<u8>,
    labels: Option<BTreeMap<String, String>>,
}

impl CtxSpec {
    fn over(&self, base: &CtxSpec) -> Context {
        let pick = |a: &Option<String>, b: &Option<String>, d: &str| a.clone().or_else(|| b.clone()).unwrap_or_else(|| d.to_owned());
        Context {
            origin: pick(&self.origin, &base.origin, "origin"),
            destination: pick(&self.destination, &base.destination, "test"),
            origin_mount: pick(&self.origin_mount, &base.origin_mount, "secret/"),
            destination_mount: pick(&self.destination_mount, &base.destination_mount, "secret/"),
            kv_version: self.kv_version.or(base.kv_version).unwrap_or(2),
            labels: self.labels.clone().or_else(|| base.labels.clone()).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    #[serde(default)]
    config: Option<toml::Table>,
    #[serde(default)]
    context: Option<CtxSpec>,
    path: String,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    dropped: Option<bool>,
    #[serde(default)]
    included: Option<bool>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorsFile {
    #[serde(default)]
    config: Option<toml::Table>,
    #[serde(default)]
    context: Option<CtxSpec>,
    #[serde(default)]
    vector: Vec<Vector>,
}

/// One vector's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct VectorReport {
    /// 1-based position in the file.
    pub index: usize,
    /// Input path.
    pub path: String,
    /// Whether the outcome was the expected one.
    pub passed: bool,
    /// What happened.
    pub message: String,
}

/// One component's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    /// Plugin name (file stem).
    pub name: String,
    /// The `.wasm` file.
    pub file: PathBuf,
    /// Its kind, once loaded.
    pub kind: Option<PluginKind>,
    /// Why it could not be loaded, or its vectors file read.
    pub error: Option<String>,
    /// Vector results.
    pub vectors: Vec<VectorReport>,
    /// Remarks (e.g. "no vectors").
    pub note: Option<String>,
}

impl ComponentReport {
    /// Loaded and every vector passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.vectors.iter().all(|v| v.passed)
    }
}

/// The whole report (`--format json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct ValidateReport {
    /// Directory validated.
    pub dir: PathBuf,
    /// Per component.
    pub components: Vec<ComponentReport>,
    /// Why the directory itself could not be validated (unreadable, or no `*.wasm` in it).
    pub error: Option<String>,
    /// Everything passed.
    pub passed: bool,
}

impl ValidateReport {
    /// Whether every component loaded and every vector passed.
    pub fn passed(&self) -> bool {
        self.passed
    }

    /// A human summary.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for c in &self.components {
            let kind = c.kind.map_or_else(|| "?".to_owned(), |k| k.to_string());
            let verdict = if c.passed() { "ok  " } else { "FAIL" };
            let passed = c.vectors.iter().filter(|v| v.passed).count();
            out.push_str(&format!(
                "{verdict} {} ({kind}, {}): {passed}/{} vectors passed{}\n",
                c.name,
                c.file.display(),
                c.vectors.len(),
                c.note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
            ));
            if let Some(e) = &c.error {
                out.push_str(&format!("     error: {e}\n"));
            }
            for v in c.vectors.iter().filter(|v| !v.passed) {
                out.push_str(&format!("     vector {} ({}): {}\n", v.index, v.path, v.message));
            }
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("FAIL {}: {e}\n", self.dir.display()));
        }
        let failed = self.components.iter().filter(|c| !c.passed()).count();
        out.push_str(&format!(
            "{} component(s), {failed} failed: {}\n",
            self.components.len(),
            if self.passed { "PASS" } else { "FAIL" }
        ));
        out
    }
}

/// Validates every `*.wasm` of `dir`, each in a host of its own (no default pack, so names do
/// not clash), under `cfg`'s limits.
pub fn validate_dir(dir: &Path, cfg: &HostConfig) -> ValidateReport {
    let (mut files, mut error): (Vec<PathBuf>, _) = match std::fs::read_dir(dir) {
        Ok(rd) => (
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .collect(),
            None,
        ),
        Err(e) => (Vec::new(), Some(format!("cannot read the directory: {e}"))),
    };
    files.sort();
    if error.is_none() && files.is_empty() {
        error = Some("no *.wasm component in this directory".to_owned());
    }
    let components: Vec<ComponentReport> = files.iter().map(|f| component(f, cfg)).collect();
    let passed = error.is_none() && components.iter().all(ComponentReport::passed);
    ValidateReport {
        dir: dir.to_owned(),
        components,
        error,
        passed,
    }
}

fn component(file: &Path, cfg: &HostConfig) -> ComponentReport {
    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut report = ComponentReport {
        name: name.clone(),
        file: file.to_owned(),
        kind: None,
        error: None,
        vectors: Vec::new(),
        note: None,
    };
    let mut host = match PluginHost::empty(cfg.clone()) {
        Ok(h) => h,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    if let Err(e) = host.load_file(file) {
        report.error = Some(e.to_string());
        return report;
    }
    report.kind = host.kind(&name);
    let vectors_path = file.with_file_name(format!("{name}.vectors.toml"));
    let text = match std::fs::read_to_string(&vectors_path) {
        Ok(t) => t,
        Err(_) => {
            report.note = Some(format!("no vectors ({} not found)", vectors_path.display()));
            // Loading alone proves world, version and imports; configure with `{}` too.
            if let Err(e) = host.instantiate(&name, "{}") {
                report.note = Some(format!("no vectors; configure with {{}} failed: {e}"));
            }
            return report;
        }
    };
    let spec: VectorsFile = match toml::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("{}: {e}", vectors_path.display()));
            return report;
        }
    };
    if spec.vector.is_empty() {
        report.note = Some(format!("{} has no [[vector]]", vectors_path.display()));
    }
    let base_ctx = spec.context.clone().unwrap_or_default();
    for (i, v) in spec.vector.iter().enumerate() {
        report.vectors.push(run_vector(&host, &name, i + 1, v, spec.config.as_ref(), &base_ctx));
    }
    report
}

fn expectation(v: &Vector) -> Result<(), String> {
    let set = [v.expect.is_some(), v.dropped.is_some(), v.included.is_some(), v.error.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if set == 1 {
        Ok(())
    } else {
        Err("a vector needs exactly one of `expect`, `dropped`, `included`, `error`".into())
    }
}

fn error_matches(expected: &str, case: Option<&str>, message: &str) -> bool {
    case == Some(expected) || message.contains(expected)
}

fn run_vector(host: &PluginHost, name: &str, index: usize, v: &Vector, default_config: Option<&toml::Table>, base: &CtxSpec) -> VectorReport {
    let mut out = VectorReport {
        index,
        path: v.path.clone(),
        passed: false,
        message: String::new(),
    };
    if let Err(m) = expectation(v) {
        out.message = m;
        return out;
    }
    let config = v.config.as_ref().or(default_config).cloned().unwrap_or_default();
    let config = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
    let ctx = v.context.clone().unwrap_or_default().over(base);
    let mut instance = match host.instantiate(name, &config) {
        Ok(i) => i,
        Err(HostError::Configure { error, .. }) => {
            let case = error.split(':').next();
            (out.passed, out.message) = match &v.error {
                Some(want) if error_matches(want, case, &error) => (true, format!("configure failed as expected: {error}")),
                _ => (false, format!("configure failed: {error}")),
            };
            return out;
        }
        Err(e) => {
            out.message = e.to_string();
            return out;
        }
    };
    let outcome: Result<Option<String>, CallError> = match instance.kind() {
        PluginKind::Transformer => instance.transform(&v.path, &ctx),
        PluginKind::Filter => instance.include(&v.path, &ctx).map(|inc| inc.then(|| v.path.clone())),
    };
    (out.passed, out.message) = match (outcome, instance.kind()) {
        (Err(e), _) => {
            let case = match &e {
                CallError::Guest { error, .. } => Some(error.case()),
                CallError::Timeout { .. } => Some("timeout"),
                CallError::MemoryExceeded { .. } => Some("memory-exceeded"),
                CallError::OutputTooLong { .. } => Some("output-too-long"),
                CallError::Trap { .. } | CallError::Restart { .. } => Some("trap"),
            };
            match &v.error {
                Some(want) if error_matches(want, case, &e.to_string()) => (true, format!("failed as expected: {e}")),
                _ => (false, format!("unexpected error: {e}")),
            }
        }
        (Ok(got), kind) => {
            let shown = got.clone().unwrap_or_else(|| "(none)".into());
            if let Some(want) = &v.expect {
                match &got {
                    Some(g) if g == want => match vsync_core::validate_relative_path(g) {
                        Ok(()) => (true, format!("-> {g}")),
                        Err(e) => (false, format!("-> {g}, not a valid relative path: {e}")),
                    },
                    _ => (false, format!("expected `{want}`, got {shown}")),
                }
            } else if let Some(dropped) = v.dropped.or(v.included.map(|i| !i)) {
                // `dropped = true` == `included = false`: a filter excludes, a transformer
                // returns none. `included = true` is for filters only.
                let wanted = if dropped { "dropped" } else { "included" };
                let ok = got.is_none() == dropped && (dropped || kind == PluginKind::Filter);
                let shown = match (kind, &got) {
                    (PluginKind::Filter, Some(_)) => "included".to_owned(),
                    (PluginKind::Filter, None) => "excluded".to_owned(),
                    (PluginKind::Transformer, _) => shown,
                };
                (ok, format!("expected {wanted}, got {shown}"))
            } else if let Some(e) = &v.error {
                (false, format!("expected error `{e}`, got {shown}"))
            } else {
                (false, "no expectation".into())
            }
        }
    };
    out
}
