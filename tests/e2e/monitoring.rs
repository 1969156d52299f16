//! `examples/monitoring` against real parts: `promtool` checks and unit-tests the alert rules;
//! `promtool check metrics` reads a real `/metrics` body taken after a sync; a real Prometheus
//! scrapes a running `vsync run` every second and answers PromQL through its HTTP API with what
//! the test seeded, and evaluates every rule and every dashboard query; every metric and label
//! the rules and the dashboard name is one a real run exposes; and the dashboard JSON has the
//! shape Grafana imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vsync_consul_emulator::Emulator;
use vsync_test_harness::{Bao, Prometheus, prometheus_tool};

use super::{client, data, http_get, text};
use crate::runtime::{output_of, wait_exit};

const SECRETS: usize = 25;

fn kit_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/monitoring")
}

fn dashboard() -> Value {
    let path = kit_dir().join("vsync-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rules() -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(kit_dir().join("alerts.yml")).unwrap()).unwrap()
}

/// Every alerting rule: (name, expression).
fn alert_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in rules()["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((rule["alert"].as_str().unwrap().to_owned(), rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    out
}

/// Every alerting rule with the labels its annotations print (`$labels.NAME`).
fn alert_exprs_and_labels() -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for group in rules()["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let mut labels = Vec::new();
            for (_, text) in rule["annotations"].as_mapping().unwrap() {
                for part in text.as_str().unwrap().split("$labels.").skip(1) {
                    labels.push(part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect());
                }
            }
            out.push((rule["alert"].as_str().unwrap().to_owned(), rule["expr"].as_str().unwrap().to_owned(), labels));
        }
    }
    out
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Every dashboard query: (panel title, expression, legend format).
fn dashboard_exprs(dash: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let legend = t["legendFormat"].as_str().unwrap_or_default().to_owned();
            out.push((p["title"].as_str().unwrap_or_default().to_owned(), t["expr"].as_str().unwrap().to_owned(), legend));
        }
    }
    out
}

/// A dashboard expression with Grafana's variables replaced, as Grafana sends it.
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$destination", ".*")
}

/// A `vsync run` on two real OpenBao servers and the Consul emulator, with telemetry on and a
/// glob filter (so every family has series), after its first sync of [`SECRETS`] secrets.
struct LiveRun {
    port: u16,
    child: Option<Child>,
    _servers: (Bao, Bao, Emulator),
    _dir: tempfile::TempDir,
}

impl LiveRun {
    async fn start() -> LiveRun {
        let emu = Emulator::start();
        let (a, b) = (Bao::dev(), Bao::dev());
        let ca = client(&a);
        for i in 0..SECRETS {
            ca.write_version("secret/", &format!("app/k{i:02}"), &data(json!({"v": i})), 0).await.unwrap();
        }
        let port = vsync_test_harness::free_port_pair();
        let dir = tempfile::tempdir().unwrap();
        let state = format!("{{ backend = \"consul\", address = \"{}\", prefix = \"vsync-e2e/\" }}", emu.url());
        let cfg = dir.path().join("vsync.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"
[origin]
vault = {{ address = "{}", token = "{}" }}
mounts = ["secret/"]
interval = "1s"
timeout = "5s"
state = {state}

[[destination]]
name = "eu"
vault = {{ address = "{}", token_env = "VSYNC_E2E_DEST_TOKEN" }}
mounts = {{ "secret/" = "secret/" }}
state = {state}
interval = "1s"
timeout = "5s"
versions = "latest"
filters = [ {{ plugin = "glob", config = {{ include = ["**"] }} }} ]

[telemetry]
listen = "127.0.0.1:{port}"
"#,
                a.addr(),
                a.root_token,
                b.addr(),
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vsync"))
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("VSYNC_LOG", "warn")
            .env("VSYNC_E2E_DEST_TOKEN", &b.root_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let run = LiveRun { port, child: Some(child), _servers: (a, b, emu), _dir: dir };
        // The first sync, and the lag series (it appears on the scrape after a cycle read the
        // origin's record).
        run.wait_for(Duration::from_secs(90), |m| {
            sample(m, "vsync_secrets{destination=\"eu\"}") == Some(SECRETS as f64)
                && sample(m, "vsync_lag_seconds{destination=\"eu\"}").is_some()
        });
        run
    }

    fn scrape(&self) -> Option<String> {
        match http_get(self.port, "/metrics") {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    fn wait_for(&self, limit: Duration, mut ok: impl FnMut(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(body) = self.scrape()
                && ok(&body)
            {
                return body;
            }
            assert!(start.elapsed() < limit, "vsync /metrics not as expected within {limit:?}:\n{:?}", self.scrape());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM; asserts exit 0.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
        let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
        let out = output_of(child);
        assert_eq!(status.code(), Some(0), "{out}");
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET path` with an Accept header: the response head and body.
fn raw_get(port: u16, path: &str, accept: &str) -> (String, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Sample name -> label names, from an exposition body.
fn exposed(metrics: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let inner = &line[end + 1..line.rfind('}').unwrap()];
            let mut rest = inner;
            // name="value",... with escaped quotes inside values.
            while let Some(eq) = rest.find('=') {
                labels.insert(rest[..eq].trim_start_matches(',').to_owned());
                let mut chars = rest[eq + 2..].char_indices();
                let mut close = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => {
                            close = Some(eq + 2 + i);
                            break;
                        }
                        _ => {}
                    }
                }
                rest = &rest[close.unwrap() + 1..];
            }
        }
    }
    out
}

/// What a PromQL expression names: each selector (metric and the labels it matches on), and
/// the labels of its grouping clauses (`by`, `without`, `on`, `ignoring`, `group_left/right`).
#[derive(Debug, Default)]
struct Names {
    selectors: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
    /// The labels of `by` clauses alone: what an aggregation keeps.
    by: Vec<String>,
}

const KEYWORDS: [&str; 24] = [
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group", "by", "without",
    "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf",
];

fn promql_names(expr: &str) -> Names {
    // String contents and range or subquery brackets carry no names.
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                plain.push('"');
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                plain.push('"');
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
            }
            c => plain.push(c),
        }
    }
    let b = plain.as_bytes();
    let ident = |i: usize| -> usize {
        let mut j = i;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':') {
            j += 1;
        }
        j
    };
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut names = Names::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() || c == b'$' {
            // A number (or a Grafana variable): skip it with any unit or exponent.
            i = ident(i + 1);
            while i < b.len() && b[i] == b'.' {
                i = ident(i + 1);
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_' || c == b':') {
            i += 1;
            continue;
        }
        let end = ident(i);
        let word = &plain[i..end];
        let next = skip_ws(end);
        let after = b.get(next).copied();
        if matches!(word, "by" | "without" | "on" | "ignoring" | "group_left" | "group_right") && after == Some(b'(') {
            let close = plain[next..].find(')').unwrap() + next;
            let labels: Vec<String> = plain[next + 1..close].split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
            if word == "by" {
                names.by.extend(labels.iter().cloned());
            }
            names.grouping.extend(labels);
            i = close + 1;
        } else if after == Some(b'(') {
            i = next + 1; // a function call: its arguments are read on
        } else if after == Some(b'{') {
            let close = plain[next..].find('}').unwrap() + next;
            let labels = plain[next + 1..close]
                .split(',')
                .filter_map(|m| m.split(['=', '!']).next())
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect();
            names.selectors.push((word.to_owned(), labels));
            i = close + 1;
        } else if KEYWORDS.contains(&word) || word == "nan" {
            i = end;
        } else {
            names.selectors.push((word.to_owned(), Vec::new()));
            i = end;
        }
    }
    names
}

/// Problems of one expression against what a real run exposes: unknown metrics, labels a
/// metric does not carry, grouping or legend labels none of its metrics carry.
fn unexposed(expr: &str, legend: &str, exposed: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    // Labels Prometheus adds to every scraped series, and `up`, which it makes itself.
    let target: BTreeSet<String> = ["job", "instance"].map(String::from).into();
    let names = promql_names(expr);
    let mut problems = Vec::new();
    let mut available = target.clone();
    for (metric, labels) in &names.selectors {
        let carried = match (metric.as_str(), exposed.get(metric)) {
            ("up", _) => target.clone(),
            (_, Some(l)) => l.union(&target).cloned().collect(),
            (_, None) => {
                problems.push(format!("metric `{metric}` is not exposed"));
                continue;
            }
        };
        for l in labels {
            if !carried.contains(l) && l != "__name__" {
                problems.push(format!("`{metric}` has no label `{l}` (it has {carried:?})"));
            }
        }
        available.extend(carried);
    }
    assert!(!names.selectors.is_empty(), "no metric found in `{expr}`: the parser is wrong");
    for l in &names.grouping {
        if !available.contains(l) {
            problems.push(format!("grouping label `{l}` is on none of its metrics"));
        }
    }
    for part in legend.split("{{").skip(1) {
        let l = part.split("}}").next().unwrap().trim();
        if !available.contains(l) {
            problems.push(format!("legend label `{l}` is on none of its metrics"));
        } else if !names.by.is_empty() && !names.by.iter().any(|b| b == l) {
            problems.push(format!("legend label `{l}` is aggregated away (by {:?})", names.by));
        }
    }
    problems
}

#[test]
fn the_names_parser_reads_what_the_kit_writes() {
    let n = promql_names(
        r#"histogram_quantile(0.95, sum by (role, le) (rate(vsync_cycle_duration_seconds_bucket{destination=~"$destination", x!="a,b}"}[$__rate_interval]))) > bool 1e3"#,
    );
    assert_eq!(n.selectors, [("vsync_cycle_duration_seconds_bucket".to_owned(), vec!["destination".to_owned(), "x".to_owned()])]);
    assert_eq!(n.grouping, ["role", "le"]);
    let n = promql_names("sum by (job) (vsync_cycles_total) unless on (job, role) vsync_last_success_timestamp_seconds offset 5m");
    let metrics: Vec<&str> = n.selectors.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(metrics, ["vsync_cycles_total", "vsync_last_success_timestamp_seconds"]);
    assert_eq!(n.grouping, ["job", "job", "role"]);
    let exposed = exposed("vsync_secrets{destination=\"e\\\"u\",x=\"1\"} 3\n# EOF\n");
    assert_eq!(exposed["vsync_secrets"], ["destination", "x"].map(String::from).into());
    assert!(unexposed("vsync_secretz", "", &exposed)[0].contains("not exposed"));
    assert!(unexposed("vsync_secrets{dest=\"eu\"}", "", &exposed)[0].contains("no label `dest`"));
    assert!(unexposed("sum by (region) (vsync_secrets)", "", &exposed)[0].contains("`region`"));
    assert!(unexposed("sum by (x) (vsync_secrets)", "{{destination}}", &exposed)[0].contains("legend label `destination` is aggregated away"));
    assert!(unexposed("vsync_secrets", "{{region}}", &exposed)[0].contains("legend label `region` is on none"));
    assert!(unexposed("max by (job, destination) (vsync_secrets) > 0", "{{destination}}", &exposed).is_empty());
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = prometheus_tool("promtool");
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let out = Command::new(&promtool).current_dir(kit_dir()).args(args).output().unwrap();
        println!("promtool {}:\n{}", args.join(" "), text(&out));
        assert!(out.status.success(), "promtool {}:\n{}", args.join(" "), text(&out));
    }
    // Every rule has a unit test in which it fires.
    let tests: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(kit_dir().join("alerts.test.yml")).unwrap()).unwrap();
    let mut fired = BTreeSet::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for a in t["alert_rule_test"].as_sequence().unwrap() {
            if a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()) {
                fired.insert(a["alertname"].as_str().unwrap().to_owned());
            }
        }
    }
    let names: BTreeSet<String> = alert_exprs().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, fired, "rules without a test in which they fire (or tests of unknown rules)");
    assert!(names.len() >= 7, "{names:?}");
}

#[test]
fn dashboard_json_has_the_shape_grafana_imports() {
    let dash = dashboard();
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let uid = dash["uid"].as_str().unwrap();
    assert!(uid.len() <= 40 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "uid `{uid}`");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30), "schemaVersion");
    assert!(dash.get("id").is_none_or(Value::is_null), "an exported id would clash on import");
    // Variables: the data source, and queries that use it.
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var_names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert!(var_names.contains(&"datasource"), "{var_names:?}");
    for v in vars {
        match v["type"].as_str().unwrap() {
            "datasource" => assert_eq!(v["query"], "prometheus", "{v}"),
            "query" => {
                assert_eq!(v["datasource"]["uid"], "${datasource}", "{v}");
                assert!(v["definition"].as_str().is_some_and(|d| d.starts_with("label_values(")), "{v}");
                assert_eq!(v["query"]["query"], v["definition"], "{v}");
            }
            other => panic!("variable type {other}: {v}"),
        }
    }
    let all = panels(&dash);
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64, &str)> = Vec::new();
    let known = ["row", "timeseries", "stat", "gauge", "bargauge", "table", "text", "heatmap"];
    for p in &all {
        let title = p["title"].as_str().unwrap_or_else(|| panic!("panel without a title: {p}"));
        assert!(!title.is_empty());
        assert!(ids.insert(p["id"].as_u64().unwrap_or_else(|| panic!("{title}: id"))), "{title}: id repeated");
        let kind = p["type"].as_str().unwrap();
        assert!(known.contains(&kind), "{title}: type {kind}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (g["x"].as_u64().unwrap(), g["y"].as_u64().unwrap(), g["w"].as_u64().unwrap(), g["h"].as_u64().unwrap());
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: gridPos {g}");
        for (ox, oy, ow, oh, other) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "{title} overlaps {other}");
        }
        boxes.push((x, y, w, h, title));
        if kind == "row" {
            assert!(p["collapsed"].is_boolean() && p["panels"].is_array(), "{title}: {p}");
            continue;
        }
        assert_eq!(p["datasource"], json!({"type": "prometheus", "uid": "${datasource}"}), "{title}");
        assert!(p["fieldConfig"]["defaults"].is_object() && p["fieldConfig"]["overrides"].is_array(), "{title}: fieldConfig");
        assert!(p["options"].is_object(), "{title}: options");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no target");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: refId repeated");
            assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{title}: expr");
            assert_eq!(t["datasource"], p["datasource"], "{title}");
            assert!(t["legendFormat"].is_string(), "{title}: legendFormat");
        }
    }
    // What the issue asks the dashboard to show, by the series each panel reads.
    let exprs: Vec<String> = dashboard_exprs(&dash).into_iter().map(|(_, e, _)| e).collect();
    for metric in [
        "vsync_lag_seconds",
        "vsync_cycles_total",
        "vsync_cycle_duration_seconds_bucket",
        "vsync_tasks_total",
        "vsync_vault_requests_total",
        "vsync_plugin_calls_total",
    ] {
        assert!(exprs.iter().any(|e| e.contains(metric)), "no panel reads {metric}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_checks_a_real_exposition_and_the_kit_names_only_what_it_exposes() {
    let run = LiveRun::start().await;
    // Without an Accept header: the classic text format (what promtool reads).
    let metrics = run.scrape().unwrap();
    // Asked for OpenMetrics, as Prometheus asks: the same samples, OpenMetrics framing.
    let (head, openmetrics) = raw_get(run.port, "/metrics", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text; version=1.0.0"), "{head}");
    assert!(openmetrics.ends_with("# EOF\n") && openmetrics.contains("# TYPE vsync_cycles counter"), "{openmetrics}");
    assert!(!metrics.contains("# EOF") && metrics.contains("# TYPE vsync_cycles_total counter"), "{metrics}");
    let samples = |body: &str| -> BTreeSet<String> {
        body.lines().filter(|l| !l.starts_with('#')).map(|l| l.rsplit_once(' ').unwrap().0.to_owned()).collect()
    };
    assert_eq!(samples(&metrics), samples(&openmetrics), "both formats carry the same series");
    // promtool reads the body from stdin.
    let mut child = Command::new(prometheus_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    println!("promtool check metrics: {}\n{}", out.status, text(&out));
    assert!(out.status.success() && text(&out).trim().is_empty(), "promtool check metrics found problems:\n{}\n{metrics}", text(&out));

    let exposed = exposed(&metrics);
    let mut problems = Vec::new();
    for (alert, expr, labels) in alert_exprs_and_labels() {
        // The labels its annotations print must survive the expression, like a legend's.
        let legend: String = labels.iter().map(|l| format!("{{{{{l}}}}}")).collect();
        problems.extend(unexposed(&expr, &legend, &exposed).into_iter().map(|p| format!("alerts.yml {alert}: {p}")));
    }
    let dash = dashboard();
    for (title, expr, legend) in dashboard_exprs(&dash) {
        problems.extend(unexposed(&expr, &legend, &exposed).into_iter().map(|p| format!("dashboard `{title}`: {p}")));
    }
    for v in dash["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
        // label_values(metric, label)
        let def = v["definition"].as_str().unwrap();
        let args = def.trim_start_matches("label_values(").trim_end_matches(')');
        let (metric, label) = args.split_once(',').unwrap();
        problems.extend(
            unexposed(&format!("{}{{{}=\"\"}}", metric.trim(), label.trim()), "", &exposed)
                .into_iter()
                .map(|p| format!("dashboard variable `{}`: {p}", v["name"])),
        );
    }
    assert!(problems.is_empty(), "names no real run exposes:\n{}\n\nexposed: {exposed:#?}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_vsync_run_and_answers_what_was_seeded() {
    let mut run = LiveRun::start().await;
    let prom = Prometheus::start(&[format!("127.0.0.1:{}", run.port)], &[kit_dir().join("alerts.yml")]);
    let scalar = |result: &Value| -> f64 { result["value"][1].as_str().unwrap().parse().unwrap() };
    let eventually = |what: &str, check: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(60), "{what} not within 60 s; prometheus log:\n{}", prom.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    // The target is up and scraped (OpenMetrics) every second.
    eventually("up{job=\"vsync\"} == 1", &|| {
        prom.query("up{job=\"vsync\"}")["result"].as_array().unwrap().iter().any(|r| scalar(r) == 1.0)
    });
    eventually("vsync_secrets in Prometheus", &|| !prom.query("vsync_secrets{destination=\"eu\"}")["result"].as_array().unwrap().is_empty());

    let secrets = prom.query("vsync_secrets{destination=\"eu\"}");
    let result = secrets["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{secrets}");
    assert_eq!(result[0]["metric"]["job"], "vsync", "{secrets}");
    assert_eq!(result[0]["metric"]["instance"], format!("127.0.0.1:{}", run.port), "{secrets}");
    assert_eq!(scalar(&result[0]), SECRETS as f64, "{secrets}");

    let lag = prom.query("vsync_lag_seconds");
    let result = lag["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{lag}");
    assert_eq!(result[0]["metric"]["destination"], "eu", "{lag}");
    assert_eq!(scalar(&result[0]), 0.0, "eu is current: {lag}");

    let copied = prom.query("sum(vsync_tasks_total{destination=\"eu\",kind=\"copy\",outcome=\"written\"})");
    assert_eq!(scalar(&copied["result"][0]), SECRETS as f64, "{copied}");
    eventually("two scrapes of the cycle counter, so rate() has points", &|| {
        prom.query("count_over_time(vsync_cycles_total{role=\"origin\",outcome=\"ok\"}[1m])")["result"][0]["value"][1]
            .as_str()
            .is_some_and(|n| n.parse::<f64>().unwrap() >= 3.0)
    });

    // Every dashboard query evaluates, and the panels of a healthy run show data.
    let dash = dashboard();
    for (title, expr, _) in dashboard_exprs(&dash) {
        let data = prom.query(&as_sent(&expr));
        let empty = data["result"].as_array().is_none_or(Vec::is_empty);
        let may_be_empty = ["error", "failed", "Failed"].iter().any(|w| title.contains(w) || expr.contains(w));
        assert!(!empty || may_be_empty, "panel `{title}` shows nothing on a healthy run: `{expr}`");
    }
    // Every rule loaded and evaluated without error; a healthy run fires nothing.
    eventually("every rule evaluated", &|| {
        let (_, rules) = prom.api("/api/v1/rules");
        let rules: Vec<Value> = rules["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect();
        assert_eq!(rules.len(), alert_exprs().len(), "{rules:?}");
        for r in &rules {
            assert_ne!(r["health"], "err", "rule {} failed: {}", r["name"], r["lastError"]);
        }
        rules.iter().all(|r| r["health"] == "ok")
    });
    let (_, alerts) = prom.api("/api/v1/alerts");
    assert_eq!(alerts["data"]["alerts"], json!([]), "a healthy run fires nothing: {alerts}");

    // vsync stops: the target goes down and VsyncDown goes pending on the real server.
    run.stop();
    eventually("VsyncDown pending after vsync stopped", &|| {
        let (_, alerts) = prom.api("/api/v1/alerts");
        alerts["data"]["alerts"].as_array().unwrap().iter().any(|a| a["labels"]["alertname"] == "VsyncDown" && a["state"] == "pending")
    });
}
