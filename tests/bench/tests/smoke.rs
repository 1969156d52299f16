//! A smoke run of the benchmark harness at 200 secrets, one run per scenario, so it cannot rot:
//! every scenario must finish and print its figures. No timing is asserted.

#[test]
fn the_harness_runs_every_scenario_at_200_secrets() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vsync-bench"))
        .args(["all", "--secrets", "200", "--runs", "1", "--samples", "3", "--rtt-ms", "20"])
        .output()
        .expect("run vsync-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "vsync-bench failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    for line in [
        "seeded 200 secrets",
        "full sync, latest: 200 secrets",
        "full sync, all: 200 secrets",
        "all / latest:",
        "no-change cycle, latest: 200 secrets",
        "incremental (1% changed), latest",
        "origin scan: SCAN",
        "propagation, origin interval 1 s, polling (3 samples",
        "e2e full sync, latest, loopback, vsync binary: 200 secrets",
        "e2e full sync, all, loopback, vsync binary: 200 secrets",
        "e2e no-change run",
        "wan, Destination side, RTT 20 ms, latest",
        "wan, Origin side, RTT 20 ms, all",
        "wan, Destination side, RTT 20 ms, all, 5 versions a key",
        "throttled: 300 secrets",
        "wan-tls, Destination side, RTT 20 ms, TLS, library raw copier at 64 in flight: 200 secrets",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    // The figures are there for each measured scenario.
    assert!(stdout.matches("ratio ").count() >= 5, "{stdout}");
    assert!(stdout.matches("peak RSS").count() >= 5, "{stdout}");
    // Throttling is back-pressure: the quota's 429s fail no secret (README
    // "Throttling is back-pressure").
    assert!(stdout.contains("exit Some(0), 0 failed secrets"), "{stdout}");
    // Each HTTP mode of `wan-tls` really spoke its version to the TLS destination.
    let tls = stdout.split("wan-tls,").nth(1).expect("wan-tls section");
    assert!(tls.contains(" over HTTP/2, 0 over HTTP/1.1"), "Auto spoke HTTP/2: {tls}");
    assert!(tls.contains("destination answers: 0 over HTTP/2, "), "Http1Only spoke HTTP/1.1: {tls}");
    // A no-change cycle makes no destination request, in any build.
    let no_change = stdout.split("no-change cycle, latest").nth(1).expect("no-change section");
    assert!(no_change.contains("(0 in all)"), "{no_change}");
}
