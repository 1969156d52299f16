//! Hostile peers against a real `vsync run` whose origin's socket audit device feeds
//! `audit_listen` (`audit_allow = ["127.0.0.1"]`): random bytes, 16 MiB lines, 200 parallel
//! connections, slowloris peers, forged events, and a peer outside `audit_allow` (from
//! `127.0.0.2`). After each attack the real device keeps delivering: an origin write reaches
//! the destination within 1 s (both intervals are 60 s, so only the feed explains it). The
//! refusals, evictions, timeouts and bad lines are counted in `/metrics`, forced scans stay
//! rate-limited, and the logs hold neither a forged path nor audit line content. Peak RSS per
//! attack is printed here (a debug build); the release benchmark
//! (`cargo bench -p vsync --bench hostile_peers`) asserts its bound.

use std::time::Duration;

use vsync_test_harness::hostile::{self, Attack, FORGED_MARKER, sample};

#[test]
fn hostile_peers_never_blind_the_feed_and_cost_bounded_memory_and_scans() {
    let report = hostile::run(std::path::Path::new(env!("CARGO_BIN_EXE_vsync")), &Attack::ALL, Duration::from_secs(1));
    println!("baseline peak RSS {} KiB", report.baseline_rss_kib);
    for p in &report.phases {
        println!(
            "{:>26}: peak RSS {} KiB (+{} KiB), next write at the destination after {:?}",
            p.attack.name(),
            p.peak_rss_kib,
            p.peak_rss_kib.saturating_sub(report.baseline_rss_kib),
            p.delivered_after
        );
    }
    let m = &report.metrics;
    let metric = |series: &str| sample(m, series).unwrap_or(0.0);
    assert!(metric("vsync_audit_connections_total{kind=\"refused\"}") >= 50.0, "{m}");
    assert!(metric("vsync_audit_connections_total{kind=\"evicted\"}") >= 100.0, "200 connections over 64 slots: {m}");
    assert!(metric("vsync_audit_connections_total{kind=\"timed_out\"}") >= 20.0, "slowloris peers cut: {m}");
    assert!(metric("vsync_audit_lines_total{kind=\"oversize\"}") >= 1.0, "{m}");
    assert!(metric("vsync_audit_lines_total{kind=\"invalid\"}") >= 10_000.0, "{m}");
    assert!(metric("vsync_audit_lines_total{kind=\"garbage\"}") >= 1.0, "{m}");
    assert!(metric("vsync_audit_rescans_total{reason=\"refused\"}") >= 50.0, "{m}");
    assert_eq!(metric("vsync_audit_listening"), 1.0, "{m}");
    // Thousands of reasons, a few scans: at most one per 15 s over the run, plus the first.
    let forced = metric("vsync_audit_forced_scans_total");
    let asked: f64 = ["broken", "oversize", "refused", "evicted", "invalid"]
        .iter()
        .map(|r| metric(&format!("vsync_audit_rescans_total{{reason=\"{r}\"}}")))
        .sum();
    println!("rescans asked {asked}, forced scans {forced}");
    assert!(asked >= 10_000.0 && (1.0..=6.0).contains(&forced), "{m}");

    let logs = &report.logs;
    assert_eq!(report.exit, Some(0), "{logs}");
    assert!(!logs.contains(FORGED_MARKER), "a forged path reached the logs");
    assert!(!logs.contains("hmac-sha256") && !logs.contains("aaaaaaaaaaaaaaaa"), "audit line content in the logs");
    let refusals = logs.lines().filter(|l| l.contains("outside origin.audit_allow")).count();
    assert_eq!(refusals, 1, "50 refusals within a minute log once");
    assert!(logs.lines().any(|l| l.contains("outside origin.audit_allow") && l.contains("127.0.0.2")), "with the address");
    assert!(!logs.contains("outsider-"), "never the refused peer's lines");
}
