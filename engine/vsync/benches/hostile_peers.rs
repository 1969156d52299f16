//! Release-mode benchmark of the audit feed under hostile peers: the attacks of
//! `vsync_test_harness::hostile` (random bytes, 16 MiB lines, 200 parallel connections,
//! slowloris, forged events, a peer outside `audit_allow`) against a real `vsync run` fed by a
//! real OpenBao socket audit device. Prints the peak RSS of each attack and **fails when one
//! exceeds the bound**: the idle process's peak plus [`GROWTH_BOUND_MIB`].
//!
//! Why that bound: the feed holds at most 64 connections × (16 KiB read buffer + one line of
//! at most `max_line` ≈ 145 KiB) ≈ 10 MiB, a dirty set of at most 8 MiB, and per-connection
//! task state; the allocator keeps some of what it freed. Before the bounds, the 16 MiB lines
//! alone grew the process by about 15 MB per line (issue 19).
//!
//! `cargo bench -p vsync --bench hostile_peers [-- --rounds N]` (default 1 round of every attack).

use std::time::Duration;

use vsync_test_harness::hostile::{self, Attack};

/// Most a single attack may grow the process's peak RSS over its idle peak, MiB.
const GROWTH_BOUND_MIB: u64 = 48;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; only `--rounds N` is ours.
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let attacks: Vec<Attack> = (0..rounds).flat_map(|_| Attack::ALL).collect();
    let report = hostile::run(std::path::Path::new(env!("CARGO_BIN_EXE_vsync")), &attacks, Duration::from_secs(1));
    let bound_kib = report.baseline_rss_kib + GROWTH_BOUND_MIB * 1024;
    println!("idle peak RSS {} KiB; bound {} KiB (+{GROWTH_BOUND_MIB} MiB)", report.baseline_rss_kib, bound_kib);
    let mut over = Vec::new();
    for p in &report.phases {
        println!(
            "{:>26}: peak RSS {:>7} KiB (+{:>6} KiB); the next write reached the destination after {:.1} ms",
            p.attack.name(),
            p.peak_rss_kib,
            p.peak_rss_kib.saturating_sub(report.baseline_rss_kib),
            p.delivered_after.as_secs_f64() * 1e3
        );
        if p.peak_rss_kib > bound_kib {
            over.push(p.attack.name());
        }
    }
    assert_eq!(report.exit, Some(0), "vsync did not exit cleanly:\n{}", report.logs);
    assert!(over.is_empty(), "peak RSS over the bound during: {over:?}");
}
