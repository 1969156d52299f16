//! `vsync plugin validate DIR`: loads every component of a directory on its own, checks its
//! world and API version, and runs the test vectors shipped beside it
//! (`<name>.vectors.toml`), under the configured time and memory limits.
//!
//! The vectors format is the SDK's, defined once in
//! `plugin-sdk/src/testing/vectors/format.rs` (see its docs) and compiled in here as
//! `format`, so `vsync plugin validate` and the SDK's native `testing::vectors` accept the same
//! files. Beyond the plugin's own error cases, `error` here may also name a host verdict:
//! `timeout`, `memory-exceeded`, `output-too-long` or `trap`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{CallError, Context, HostConfig, HostError, PluginHost, PluginKind};

#[path = "../../../plugin-sdk/src/testing/vectors/format.rs"]
mod format;

use format::{Expectation, Vector, VectorContext, VectorsFile};

impl From<VectorContext> for Context {
    fn from(c: VectorContext) -> Context {
        Context {
            origin: c.origin,
            destination: c.destination,
            origin_mount: c.origin_mount,
            destination_mount: c.destination_mount,
            kv_version: c.kv_version,
            labels: c.labels,
        }
    }
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
    let spec = match VectorsFile::parse(&text) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("{}: {e}", vectors_path.display()));
            return report;
        }
    };
    if spec.vector.is_empty() {
        report.note = Some(format!("{} has no [[vector]]", vectors_path.display()));
    }
    let kind = report.kind.unwrap_or(PluginKind::Transformer);
    for (i, v) in spec.vector.iter().enumerate() {
        let (passed, message) = run_vector(&host, &name, kind, v, &spec);
        report.vectors.push(VectorReport {
            index: i + 1,
            path: v.path.clone(),
            passed,
            message,
        });
    }
    report
}

/// Runs one vector: whether it passed, and what happened.
fn run_vector(host: &PluginHost, name: &str, kind: PluginKind, v: &Vector, file: &VectorsFile) -> (bool, String) {
    let prepared = v
        .expectation(kind == PluginKind::Filter)
        .and_then(|want| Ok((want, v.config_json(file)?, Context::from(v.context(file)?))));
    let (want, config, ctx) = match prepared {
        Ok(p) => p,
        Err(m) => return (false, m),
    };
    let mut instance = match host.instantiate(name, &config) {
        Ok(i) => i,
        Err(HostError::Configure { error, .. }) => {
            let case = error.split(':').next();
            return match want {
                Expectation::Error(w) if format::error_matches(w, case, &error) => (true, format!("configure failed as expected: {error}")),
                _ => (false, format!("configure failed: {error}")),
            };
        }
        Err(e) => return (false, e.to_string()),
    };
    let outcome = match kind {
        PluginKind::Transformer => instance.transform(&v.path, &ctx),
        PluginKind::Filter => instance.include(&v.path, &ctx).map(|inc| inc.then(|| v.path.clone())),
    };
    match outcome {
        Err(e) => judge_error(want, &e),
        Ok(got) => judge_output(want, kind, got),
    }
}

/// A call that failed: passed only if the vector expects this error.
fn judge_error(want: Expectation<'_>, e: &CallError) -> (bool, String) {
    let case = match e {
        CallError::Guest { error, .. } => error.case(),
        CallError::Timeout { .. } => "timeout",
        CallError::MemoryExceeded { .. } => "memory-exceeded",
        CallError::OutputTooLong { .. } => "output-too-long",
        CallError::Trap { .. } | CallError::Restart { .. } => "trap",
    };
    match want {
        Expectation::Error(w) if format::error_matches(w, Some(case), &e.to_string()) => (true, format!("failed as expected: {e}")),
        _ => (false, format!("unexpected error: {e}")),
    }
}

/// A call that answered (`got`: the output path, or for a filter the path when included).
fn judge_output(want: Expectation<'_>, kind: PluginKind, got: Option<String>) -> (bool, String) {
    let shown = match (kind, &got) {
        (PluginKind::Filter, Some(_)) => "included".to_owned(),
        (PluginKind::Filter, None) => "excluded".to_owned(),
        (PluginKind::Transformer, g) => g.clone().unwrap_or_else(|| "(none)".into()),
    };
    match (want, got) {
        (Expectation::Path(w), Some(g)) if g == w => match vsync_core::validate_relative_path(&g) {
            Ok(()) => (true, format!("-> {g}")),
            Err(e) => (false, format!("-> {g}, not a valid relative path: {e}")),
        },
        (Expectation::Path(w), _) => (false, format!("expected `{w}`, got {shown}")),
        (Expectation::Dropped, got) => (got.is_none(), format!("expected dropped, got {shown}")),
        (Expectation::Included, got) => (got.is_some(), format!("expected included, got {shown}")),
        (Expectation::Error(w), _) => (false, format!("expected error `{w}`, got {shown}")),
    }
}
