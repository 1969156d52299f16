//! Human renderings of one-shot results that the binary prints: the `vsync verify` report
//! and the `vsync check` findings (like [`crate::Preview::human`] for `vsync plan`).

use std::fmt::Write as _;

use crate::check::Finding;
use crate::verify::VerifyReport;

/// `vsync verify`'s report on destination `name`: one line per drifted or pending key, then a
/// summary line.
pub fn verify_human(name: &str, report: &VerifyReport) -> String {
    let mut out = String::new();
    for drift in &report.drifted {
        let _ = writeln!(out, "DRIFT   {} -> {}: {}", drift.key, drift.target, drift.what);
    }
    for target in &report.extra {
        let _ = writeln!(out, "DRIFT   {target}: at the destination only (no origin key maps to it)");
    }
    for key in &report.pending {
        let _ = writeln!(out, "pending {key}: changed at the origin since the last cycle");
    }
    for target in &report.pending_removals {
        let _ = writeln!(out, "pending {target}: removed by the next cycle (its origin key is gone)");
    }
    let _ = writeln!(
        out,
        "verify `{name}`: {} checked, {} drifted ({} at the destination only), {} pending",
        report.checked,
        report.drifted.len() + report.extra.len(),
        report.extra.len(),
        report.pending.len() + report.pending_removals.len()
    );
    out
}

/// `vsync check`'s findings, one per line, then a summary line; and whether every check
/// passed.
pub fn findings_human(findings: &[Finding]) -> (String, bool) {
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(out, "{f}");
    }
    let problems = findings.iter().filter(|f| f.problem.is_some()).count();
    if problems == 0 {
        let _ = writeln!(out, "all {} checks passed", findings.len());
    } else {
        let _ = writeln!(out, "{problems} of {} checks failed", findings.len());
    }
    (out, problems == 0)
}
