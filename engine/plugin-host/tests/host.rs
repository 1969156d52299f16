//! The host against real guest components built from `plugins/` (default pack and bad-guest
//! fixtures): limits, traps, refusals at load, instance replacement, stacks and validation.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_plugin_host::{CallError, Context, HostConfig, HostError, PluginHost, PluginKind, Stack, StackError, StackSpec, validate_dir};

/// Default limits, but a time limit that a loaded CI machine cannot hit by descheduling a
/// test thread (the time limit is wall-clock; the tests about it set their own), and a compile
/// cache shared by the tests of this binary (debug-built Cranelift is slow; each component is
/// compiled once per target dir).
fn cfg() -> HostConfig {
    HostConfig {
        call_timeout: Duration::from_secs(5),
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-host-component-cache")),
        ..HostConfig::default()
    }
}

/// The default limits (50 ms, 32 MiB) with the shared cache.
fn default_limits() -> HostConfig {
    HostConfig {
        cache_dir: cfg().cache_dir,
        ..HostConfig::default()
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("VSYNC_PLUGIN_WASM_DIR")).join(format!("vsync_plugin_fixture_{name}.wasm"))
}

fn ctx() -> Context {
    Context {
        origin: "origin".into(),
        destination: "eu".into(),
        origin_mount: "secret/".into(),
        destination_mount: "secret/".into(),
        kv_version: 2,
        labels: [("region".to_owned(), "eu".to_owned())].into(),
    }
}

/// A host with the default pack plus one fixture copied in under `name`.
fn host_with(name: &str, fixture_name: &str) -> (PluginHost, tempfile::TempDir) {
    host_with_cfg(name, fixture_name, cfg())
}

fn host_with_cfg(name: &str, fixture_name: &str, cfg: HostConfig) -> (PluginHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(fixture_name), dir.path().join(format!("{name}.wasm"))).unwrap();
    let mut host = PluginHost::new(cfg).unwrap();
    host.load_dir(dir.path()).unwrap();
    (host, dir)
}

fn still_works(host: &PluginHost) {
    let mut prefix = host.instantiate("prefix", r#"{"from": "a/", "to": "b/"}"#).unwrap();
    assert_eq!(prefix.transform("a/x", &ctx()).unwrap().as_deref(), Some("b/x"));
}

#[test]
fn infinite_loop_times_out_and_the_instance_recovers() {
    let (host, _d) = host_with_cfg("looper", "loop", default_limits());
    let mut i = host.instantiate("looper", "{}").unwrap();
    let started = Instant::now();
    let err = i.transform("loop/x", &ctx()).unwrap_err();
    assert!(matches!(err, CallError::Timeout { ref plugin, .. } if plugin == "looper"), "{err}");
    let took = started.elapsed();
    println!("loop stopped after {took:?} (limit 50 ms)");
    // About the limit; generous upper bound for a loaded 2-core CI machine.
    assert!(took >= Duration::from_millis(45) && took < Duration::from_secs(1), "stopped near the 50 ms limit: {took:?}");
    // The trapped instance is replaced: the next call runs (and times out again, cleanly).
    assert_eq!(i.transform("fine", &ctx()).unwrap(), None, "the replaced instance serves other paths");
    assert!(matches!(i.transform("loop/y", &ctx()).unwrap_err(), CallError::Timeout { .. }));
    still_works(&host);
}

#[test]
fn time_limit_follows_the_config_and_outlives_the_host() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("loop"), dir.path().join("looper.wasm")).unwrap();
    let mut host = PluginHost::new(HostConfig { call_timeout: Duration::from_millis(200), ..cfg() }).unwrap();
    host.load_dir(dir.path()).unwrap();
    let mut i = host.instantiate("looper", "{}").unwrap();
    // The instance keeps the epoch ticker alive: dropping the host must not lift the limit.
    drop(host);
    let started = Instant::now();
    let err = i.transform("loop/x", &ctx()).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CallError::Timeout { limit, .. } if limit == Duration::from_millis(200)), "{err}");
    assert!(took >= Duration::from_millis(190) && took < Duration::from_secs(2), "{took:?}");
    assert!(err.to_string().contains("looper") && err.to_string().contains("time limit"), "{err}");
}

#[test]
fn memory_bomb_hits_the_limit() {
    // Default memory limit; the time limit stays generous so a slow machine cannot turn
    // filling 32 MiB into a timeout.
    let (host, _d) = host_with("bomb", "membomb");
    let mut i = host.instantiate("bomb", "{}").unwrap();
    let err = i.transform("bomb/x", &ctx()).unwrap_err();
    assert!(matches!(err, CallError::MemoryExceeded { ref plugin, limit } if plugin == "bomb" && limit == 32 << 20), "{err}");
    assert_eq!(i.transform("fine", &ctx()).unwrap(), None);
    still_works(&host);
}

#[test]
fn panic_is_a_trap_with_its_message() {
    let (host, _d) = host_with("panicky", "panic");
    let mut i = host.instantiate("panicky", "{}").unwrap();
    let err = i.transform("panic/path", &ctx()).unwrap_err();
    match &err {
        CallError::Trap { plugin, message } => {
            assert_eq!(plugin, "panicky");
            assert!(message.contains("fixture panic on panic/path"), "{message}");
        }
        other => panic!("expected a trap, got {other}"),
    }
    assert_eq!(i.transform("fine", &ctx()).unwrap(), None, "the replaced instance serves other paths");
    still_works(&host);
}

#[test]
fn bad_components_are_refused_at_load_naming_file_and_reason() {
    let cases: [(&str, &str); 4] = [
        ("wrong_world", "exports neither"),
        ("wrong_version", "plugin API 0.2.0"),
        ("clock", "wasi:clocks"),
        ("bad_configure", ""),
    ];
    for (fixture_name, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{fixture_name}.wasm"));
        std::fs::copy(fixture(fixture_name), &file).unwrap();
        let mut host = PluginHost::new(cfg()).unwrap();
        let loaded = host.load_file(&file);
        if fixture_name == "bad_configure" {
            // Loads fine; refused when configured.
            loaded.unwrap();
            let err = host.instantiate(fixture_name, "{}").unwrap_err();
            assert!(matches!(err, HostError::Configure { .. }), "{err}");
            assert!(err.to_string().contains("bad_configure") && err.to_string().contains("refuses every config"), "{err}");
        } else {
            let err = loaded.unwrap_err().to_string();
            assert!(err.contains(&file.display().to_string()) && err.contains(reason), "{fixture_name}: {err}");
        }
        still_works(&host);
    }
    // Not a component at all: random bytes, a core module, a component header with garbage.
    let dir = tempfile::tempdir().unwrap();
    let mut random = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.push(x as u8);
    }
    let cases: [(&str, &[u8], &str); 4] = [
        ("random.wasm", &random, "not a WebAssembly component"),
        ("empty.wasm", b"", "not a WebAssembly component"),
        ("core.wasm", b"\0asm\x01\0\0\0", "core module"),
        ("junk.wasm", b"\0asm\x0d\0\x01\0 definitely not a component", "junk.wasm"),
    ];
    let mut host = PluginHost::new(cfg()).unwrap();
    for (file, bytes, reason) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let err = host.load_file(&path).unwrap_err();
        assert!(matches!(err, HostError::InvalidComponent { .. }), "{file}: {err}");
        assert!(err.to_string().contains(file) && err.to_string().contains(reason), "{file}: {err}");
    }
    // A directory of them is refused as a whole, naming the file; good plugins still work.
    assert!(host.load_dir(dir.path()).unwrap_err().to_string().contains("core.wasm"));
    still_works(&host);
    let missing = host.load_file(&dir.path().join("missing.wasm")).unwrap_err();
    assert!(matches!(missing, HostError::Io { .. }) && missing.to_string().contains("missing.wasm"), "{missing}");
}

#[test]
fn hashmap_works_with_the_host_seed() {
    let (host, _d) = host_with("hm", "hashmap");
    let mut i = host.instantiate("hm", "{}").unwrap();
    assert_eq!(i.transform("a/b/a", &ctx()).unwrap().as_deref(), Some("2/a/b/a"));
}

#[test]
fn name_clash_with_the_default_pack_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("hashmap"), dir.path().join("regex.wasm")).unwrap();
    let mut host = PluginHost::new(cfg()).unwrap();
    let err = host.load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, HostError::NameClash { .. }) && err.to_string().contains("regex"), "{err}");
}

#[test]
fn stack_semantics() {
    let host = PluginHost::new(cfg()).unwrap();
    assert_eq!(host.kind("glob"), Some(PluginKind::Filter));
    let spec = StackSpec {
        filters: vec![("glob".into(), json!({"include": ["prod/**"], "exclude": ["**/tmp/**"]}))],
        transforms: vec![
            ("prefix".into(), json!({"from": "prod/eu/", "to": "eu/"})),
            ("regex".into(), json!({"from": "^prod/(?P<r>[a-z]+)/(?P<rest>.+)$", "to": "{rest}/{r}"})),
        ],
    };
    let mut stack = Stack::new(&host, &spec).unwrap();
    assert_eq!(stack.map("prod/eu/app", &ctx()).unwrap().as_deref(), Some("eu/app"), "first transformer wins");
    assert_eq!(stack.map("prod/us/app", &ctx()).unwrap().as_deref(), Some("app/us"));
    assert_eq!(stack.map("prod/x", &ctx()).unwrap().as_deref(), Some("prod/x"), "identity at the bottom");
    assert_eq!(stack.map("dev/app", &ctx()).unwrap(), None, "filtered out");
    assert_eq!(stack.map("prod/eu/tmp/x", &ctx()).unwrap(), None);
    // A transformer output that is not a valid relative path fails that path: checked by the
    // host whatever the plugin does (identity hands back an input with an empty segment), and
    // the default pack's prefix refuses such outputs itself.
    let ident = StackSpec {
        transforms: vec![("identity".into(), json!({}))],
        ..Default::default()
    };
    let err = Stack::new(&host, &ident).unwrap().map("a//x", &ctx()).unwrap_err();
    assert!(matches!(err, StackError::InvalidOutput { .. }) && err.to_string().contains("identity"), "{err}");
    let bad = StackSpec {
        transforms: vec![("prefix".into(), json!({"from": "a/", "to": "../"}))],
        ..Default::default()
    };
    let err = Stack::new(&host, &bad).unwrap().map("a/x", &ctx()).unwrap_err();
    assert!(err.to_string().contains("prefix") && err.to_string().contains(".."), "{err}");
    // Kind mismatch and unknown plugins are refused when the stack is built.
    let wrong = StackSpec { filters: vec![("regex".into(), json!({}))], ..Default::default() };
    assert!(matches!(Stack::new(&host, &wrong).unwrap_err(), HostError::KindMismatch { .. }));
    let wrong = StackSpec { transforms: vec![("glob".into(), json!({}))], ..Default::default() };
    let err = Stack::new(&host, &wrong).unwrap_err();
    assert!(matches!(err, HostError::KindMismatch { .. }), "{err}");
    assert_eq!(err.to_string(), "plugin `glob` is a filter, but is used as a transformer");
    // The bottom identity's output is checked like any other.
    let mut empty = Stack::new(&host, &StackSpec::default()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.map("a/b", &ctx()).unwrap().as_deref(), Some("a/b"));
    let err = empty.map("/a", &ctx()).unwrap_err();
    assert!(matches!(err, StackError::InvalidOutput { ref plugin, .. } if plugin == "identity"), "{err}");
    // A bad configure is refused when the stack is built.
    let bad = StackSpec { transforms: vec![("regex".into(), json!({"from": "("}))], ..Default::default() };
    let err = Stack::new(&host, &bad).unwrap_err();
    assert!(matches!(err, HostError::Configure { ref plugin, .. } if plugin == "regex"), "{err}");
    let unknown = StackSpec { transforms: vec![("nope".into(), json!({}))], ..Default::default() };
    assert!(matches!(Stack::new(&host, &unknown).unwrap_err(), HostError::UnknownPlugin { .. }));
}

#[test]
fn validate_dir_reports_passes_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let built = PathBuf::from(env!("VSYNC_PLUGIN_WASM_DIR"));
    std::fs::copy(built.join("vsync_plugin_prefix.wasm"), dir.path().join("prefix.wasm")).unwrap();
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/prefix/prefix.vectors.toml"),
        dir.path().join("prefix.vectors.toml"),
    )
    .unwrap();
    let report = validate_dir(dir.path(), &HostConfig { cache_dir: None, ..cfg() });
    assert!(report.passed(), "{}", report.human());
    // A failing vector and a broken component make the report fail.
    std::fs::write(
        dir.path().join("prefix.vectors.toml"),
        "config = { from = \"a/\", to = \"b/\" }\n[[vector]]\npath = \"a/x\"\nexpect = \"c/x\"\n",
    )
    .unwrap();
    std::fs::copy(fixture("wrong_version"), dir.path().join("future.wasm")).unwrap();
    let report = validate_dir(dir.path(), &HostConfig { cache_dir: None, ..cfg() });
    assert!(!report.passed());
    let human = report.human();
    assert!(human.contains("expected `c/x`, got b/x") && human.contains("0.2.0"), "{human}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["passed"], false);
}

/// The compiled entries of a cache directory (not its key).
fn cache_entries(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = HostConfig { cache_dir: Some(cache.path().to_owned()), ..Default::default() };
    let started = Instant::now();
    let host = PluginHost::new(cfg.clone()).unwrap();
    let cold = started.elapsed();
    let stats = host.cache_stats();
    assert!(stats.enabled && (stats.misses, stats.written, stats.hits) == (4, 4, 0), "{stats:?}");
    drop(host);
    assert_eq!(cache_entries(cache.path()).len(), 4, "one artifact per default-pack plugin");
    let started = Instant::now();
    let host = PluginHost::new(cfg).unwrap();
    let warm = started.elapsed();
    let stats = host.cache_stats();
    assert!((stats.hits, stats.misses, stats.rejected, stats.written) == (4, 0, 0, 0), "{stats:?}");
    still_works(&host);
    println!("default pack load: cold {cold:?}, from cache {warm:?}");
}

#[test]
fn filters_run_first_and_a_failing_plugin_fails_only_its_path() {
    let (host, _d) = host_with("panicky", "panic");
    let spec = StackSpec {
        filters: vec![("glob".into(), json!({"include": ["**"], "exclude": ["skip/**"]}))],
        transforms: vec![("panicky".into(), json!({})), ("prefix".into(), json!({"from": "a/", "to": "b/"}))],
    };
    let mut stack = Stack::new(&host, &spec).unwrap();
    assert_eq!(stack.len(), 3);
    // Excluded before the panicking transformer is asked.
    assert_eq!(stack.map("skip/panic", &ctx()).unwrap(), None);
    let err = stack.map("a/panic", &ctx()).unwrap_err();
    match &err {
        StackError::Call { path, error: CallError::Trap { plugin, .. } } => {
            assert_eq!((path.as_str(), plugin.as_str()), ("a/panic", "panicky"));
        }
        other => panic!("expected a trap, got {other}"),
    }
    // Next paths go through the replaced instance, then on down the stack.
    assert_eq!(stack.map("a/x", &ctx()).unwrap().as_deref(), Some("b/x"));
    assert_eq!(stack.map("c/x", &ctx()).unwrap().as_deref(), Some("c/x"));
}

#[test]
fn plugin_names_and_kinds() {
    let host = PluginHost::new(cfg()).unwrap();
    let mut names = host.plugin_names();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        vec![
            ("glob".to_owned(), PluginKind::Filter),
            ("identity".to_owned(), PluginKind::Transformer),
            ("prefix".to_owned(), PluginKind::Transformer),
            ("regex".to_owned(), PluginKind::Transformer),
        ]
    );
    assert_eq!(host.kind("nope"), None);
    let err = host.instantiate("nope", "{}").unwrap_err();
    assert!(matches!(err, HostError::UnknownPlugin { .. }) && err.to_string().contains("nope"), "{err}");
    // Guest errors are values, not traps; the instance stays up.
    let mut glob = host.instantiate("glob", r#"{"include": ["a/**"]}"#).unwrap();
    assert!(glob.include("a/b", &ctx()).unwrap());
    assert!(!glob.include("b/a", &ctx()).unwrap());
    assert_eq!(glob.name(), "glob");
}

#[test]
fn validate_dir_edge_cases() {
    // Unreadable and empty directories fail with a reason.
    let report = validate_dir(std::path::Path::new("/nonexistent/vsync-plugins"), &cfg());
    assert!(!report.passed() && report.error.is_some(), "{}", report.human());
    let dir = tempfile::tempdir().unwrap();
    let report = validate_dir(dir.path(), &cfg());
    assert!(!report.passed() && report.human().contains("no *.wasm"), "{}", report.human());
    // No vectors: passes, with a note.
    let built = PathBuf::from(env!("VSYNC_PLUGIN_WASM_DIR"));
    std::fs::copy(built.join("vsync_plugin_glob.wasm"), dir.path().join("glob.wasm")).unwrap();
    let report = validate_dir(dir.path(), &cfg());
    assert!(report.passed(), "{}", report.human());
    assert!(report.components[0].note.as_deref().unwrap_or("").contains("no vectors"), "{}", report.human());
    assert_eq!(report.components[0].kind, Some(PluginKind::Filter));
    // Filter vectors, context overrides, expected errors; then an unknown key names the file.
    std::fs::write(
        dir.path().join("glob.vectors.toml"),
        r#"
config = { include = ["eu/**"] }
[context]
labels = { region = "eu" }
[[vector]]
path = "eu/app"
included = true
[[vector]]
path = "us/app"
dropped = true
[[vector]]
context = { labels = { region = "us" }, kv_version = 1 }
path = "eu/x"
included = true
[[vector]]
config = { include = ["a["] }
path = "x"
error = "invalid-config"
[[vector]]
path = "eu/y"
dropped = true
"#,
    )
    .unwrap();
    let report = validate_dir(dir.path(), &cfg());
    let c = &report.components[0];
    assert_eq!(c.vectors.len(), 5, "{}", report.human());
    assert!(c.vectors[..4].iter().all(|v| v.passed), "{}", report.human());
    assert!(!c.vectors[4].passed && !report.passed(), "{}", report.human());
    assert!(report.human().contains("vector 5 (eu/y): expected dropped"), "{}", report.human());
    std::fs::write(dir.path().join("glob.vectors.toml"), "[[vector]]\npath = \"x\"\nincluded = true\nbogus = 1\n").unwrap();
    let report = validate_dir(dir.path(), &cfg());
    let human = report.human();
    assert!(!report.passed() && human.contains("glob.vectors.toml") && human.contains("bogus"), "{human}");
}

#[test]
fn a_corrupt_cache_entry_is_ignored_and_rewritten() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = HostConfig { cache_dir: Some(cache.path().to_owned()), ..HostConfig::default() };
    drop(PluginHost::new(cfg.clone()).unwrap());
    let entries = cache_entries(cache.path());
    assert_eq!(entries.len(), 4);
    for e in &entries {
        std::fs::write(e, b"not a compiled component").unwrap();
    }
    let host = PluginHost::new(cfg).unwrap();
    let stats = host.cache_stats();
    assert!((stats.hits, stats.rejected, stats.written) == (0, 4, 4), "{stats:?}");
    still_works(&host);
    for e in &entries {
        assert!(std::fs::metadata(e).unwrap().len() > 1000, "{} rewritten", e.display());
    }
}

#[test]
fn the_default_pack_passes_its_own_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let built = PathBuf::from(env!("VSYNC_PLUGIN_WASM_DIR"));
    let sources = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
    for name in ["identity", "regex", "prefix", "glob"] {
        std::fs::copy(built.join(format!("vsync_plugin_{name}.wasm")), dir.path().join(format!("{name}.wasm"))).unwrap();
        let vectors = format!("{name}.vectors.toml");
        std::fs::copy(sources.join(name).join(&vectors), dir.path().join(&vectors)).unwrap();
    }
    let report = validate_dir(dir.path(), &cfg());
    assert!(report.passed(), "{}", report.human());
    assert_eq!(report.components.len(), 4);
    assert!(report.components.iter().all(|c| !c.vectors.is_empty() && c.note.is_none()), "{}", report.human());
    println!("{}", report.human());
}
