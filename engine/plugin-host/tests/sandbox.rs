//! The sandbox's own defences, against real guests (the `flood` and `membomb` fixtures, the
//! default pack) and hand-assembled components: the compiled-component cache's trust checks,
//! whole-instance resource limits, caps on what a plugin hands back, and the log rate limit.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_plugin_host::{CallError, Context, HostConfig, HostError, PluginHost, PluginError, Stack, StackError, StackSpec};

/// A generous time limit (a loaded CI machine must not turn a slow call into a timeout) and a
/// compile cache shared by the tests of this binary that are not about the cache.
fn cfg() -> HostConfig {
    HostConfig {
        call_timeout: Duration::from_secs(5),
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-host-sandbox-cache")),
        ..HostConfig::default()
    }
}

fn built(file: &str) -> PathBuf {
    PathBuf::from(env!("VSYNC_PLUGIN_WASM_DIR")).join(file)
}

fn fixture(name: &str) -> PathBuf {
    built(&format!("vsync_plugin_fixture_{name}.wasm"))
}

fn ctx() -> Context {
    Context {
        origin: "origin".into(),
        destination: "eu".into(),
        origin_mount: "secret/".into(),
        destination_mount: "secret/".into(),
        kv_version: 2,
        labels: Default::default(),
    }
}

/// A host with only `file` loaded under the name `name`.
fn host_with(name: &str, file: &Path, cfg: HostConfig) -> (PluginHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(format!("{name}.wasm"));
    std::fs::copy(file, &copy).unwrap();
    let mut host = PluginHost::empty(cfg).unwrap();
    host.load_file(&copy).unwrap();
    (host, dir)
}

fn cache_cfg(dir: &Path) -> HostConfig {
    HostConfig { cache_dir: Some(dir.to_owned()), ..cfg() }
}

/// The compiled entries of a cache directory.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut e: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    e.sort();
    e
}

/// `prefix` loaded from `cache`, configured `a/` -> `b/`, maps `a/x` to `b/x`: it really is
/// the prefix plugin (the hashmap fixture would answer `2/a/x`).
fn prefix_is_prefix(cache: &Path) -> PluginHost {
    let (host, _d) = host_with("prefix", &built("vsync_plugin_prefix.wasm"), cache_cfg(cache));
    let mut p = host.instantiate("prefix", r#"{"from": "a/", "to": "b/"}"#).unwrap();
    assert_eq!(p.transform("a/x", &ctx()).unwrap().as_deref(), Some("b/x"), "the cached artifact of another component ran as `prefix`");
    host
}

/// Fills `cache` with prefix's artifact and plants the hashmap fixture's artifact (compiled
/// into `donor`, which may be `cache` itself) under prefix's entry name. Returns that entry.
fn plant_hashmap_as_prefix(cache: &Path, donor: &Path) -> PathBuf {
    drop(host_with("prefix", &built("vsync_plugin_prefix.wasm"), cache_cfg(cache)));
    let prefix_entry = entries(cache);
    assert_eq!(prefix_entry.len(), 1);
    let before = entries(donor);
    drop(host_with("hm", &fixture("hashmap"), cache_cfg(donor)));
    let hm_entry: Vec<PathBuf> = entries(donor).into_iter().filter(|e| !before.contains(e)).collect();
    assert_eq!(hm_entry.len(), 1);
    std::fs::write(&prefix_entry[0], std::fs::read(&hm_entry[0]).unwrap()).unwrap();
    prefix_entry[0].clone()
}

#[test]
fn a_planted_cache_entry_is_not_deserialized() {
    // Another component's genuine artifact, from this cache (same key) or another one.
    for same_dir in [true, false] {
        let cache = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let donor = if same_dir { cache.path() } else { other.path() };
        let entry = plant_hashmap_as_prefix(cache.path(), donor);
        let planted = std::fs::read(&entry).unwrap();
        drop(prefix_is_prefix(cache.path()));
        assert_ne!(std::fs::read(&entry).unwrap(), planted, "same_dir={same_dir}: the refused entry is rewritten");
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn chmod(p: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// (hits, misses, rejected, written) of a host.
fn counts(host: &PluginHost) -> (u64, u64, u64, u64) {
    let s = host.cache_stats();
    (s.hits, s.misses, s.rejected, s.written)
}

#[test]
fn the_cache_is_private_and_entries_failing_a_check_are_not_deserialized() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("xdg/vsync/components");
    // First use: the directory is made 0700, the key and the entry 0600, nothing else left.
    let host = prefix_is_prefix(&cache);
    assert!(host.cache_stats().enabled);
    assert_eq!(counts(&host), (0, 1, 0, 1));
    drop(host);
    assert_eq!(mode(&cache), 0o700);
    let entry = entries(&cache).pop().unwrap();
    assert_eq!((mode(&cache.join("hmac-key")), mode(&entry)), (0o600, 0o600));
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2, "the key and one entry, no temporary files");
    assert_eq!(counts(&prefix_is_prefix(&cache)), (1, 0, 0, 0), "a good entry is used");
    let good = std::fs::read(&entry).unwrap();

    // Tampered (one byte of the compiled code changed): refused, compiled, rewritten.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&entry, &bad).unwrap();
    assert_eq!(counts(&prefix_is_prefix(&cache)), (0, 0, 1, 1), "tampered");
    assert_eq!(counts(&prefix_is_prefix(&cache)), (1, 0, 0, 0), "rewritten");

    // A genuine entry that others may write: refused, rewritten 0600.
    chmod(&entry, 0o666);
    assert_eq!(counts(&prefix_is_prefix(&cache)), (0, 0, 1, 1), "mode 0666");
    assert_eq!(mode(&entry), 0o600);

    // A directory others may write: not used at all (no read, no write), with a good entry in it.
    let before = std::fs::read(&entry).unwrap();
    chmod(&cache, 0o777);
    let host = prefix_is_prefix(&cache);
    assert!(!host.cache_stats().enabled);
    assert_eq!(counts(&host), (0, 0, 0, 0), "directory mode 0777");
    assert_eq!(std::fs::read(&entry).unwrap(), before);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    chmod(&cache, 0o700);
    assert_eq!(counts(&prefix_is_prefix(&cache)), (1, 0, 0, 0), "used again once private");
}

/// A component assembled by hand: core modules with the given memories and tables (minimum
/// sizes, in pages and elements), each instantiated when `instantiate` is set. No exports.
fn component(modules: &[(&[u32], &[u32])], instantiate: bool) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    let mut c = b"\0asm\x0d\0\x01\0".to_vec();
    for (memories, tables) in modules {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        if !tables.is_empty() {
            let mut body = Vec::new();
            leb(tables.len() as u64, &mut body);
            for &min in *tables {
                body.extend_from_slice(&[0x70, 0x00]); // funcref, no maximum
                leb(u64::from(min), &mut body);
            }
            section(4, &body, &mut m);
        }
        if !memories.is_empty() {
            let mut body = Vec::new();
            leb(memories.len() as u64, &mut body);
            for &min in *memories {
                body.push(0x00); // no maximum
                leb(u64::from(min), &mut body);
            }
            section(5, &body, &mut m);
        }
        section(1, &m, &mut c);
    }
    if instantiate {
        let mut body = Vec::new();
        leb(modules.len() as u64, &mut body);
        for i in 0..modules.len() {
            body.push(0x00);
            leb(i as u64, &mut body);
            body.push(0x00); // no arguments
        }
        section(2, &body, &mut c);
    }
    c
}

#[test]
fn components_beyond_the_instance_limits_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Vec<u8>, &str); 5] = [
        // One core module with two memories: multi-memory is off.
        ("two_memories.wasm", component(&[(&[1, 1], &[])], false), "multiple memories"),
        // Two core instances with a memory each: one linear memory per plugin.
        ("two_instances.wasm", component(&[(&[1], &[]), (&[1], &[])], true), "2 linear memories"),
        // 1000 pages (62.5 MiB) at start, over the 32 MiB limit.
        ("big_memory.wasm", component(&[(&[1000], &[])], true), "initial linear memory is 65536000 bytes"),
        // A table of 4 M elements at start.
        ("big_table.wasm", component(&[(&[1], &[4 << 20])], true), "a table starts with 4194304 elements"),
        // More tables than any plugin needs.
        ("many_tables.wasm", component(&[(&[1], &[1; 9])], true), "9 tables"),
    ];
    for (file, bytes, reason) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, &bytes).unwrap();
        let mut host = PluginHost::empty(HostConfig { cache_dir: None, ..cfg() }).unwrap();
        let err = host.load_file(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, HostError::InvalidComponent { .. } | HostError::ExceedsLimits { .. }),
            "{file}: {text}"
        );
        // (The reason is looked for after the file name, which it may resemble.)
        let after_file = text.split_once(file).map(|(_, rest)| rest).unwrap_or("");
        assert!(after_file.contains(reason), "{file}: {text}");
    }
}

#[test]
fn memory_growth_past_the_limit_fails_only_that_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("membomb"), dir.path().join("bomb.wasm")).unwrap();
    let mut host = PluginHost::new(HostConfig { memory_limit: 8 << 20, ..cfg() }).unwrap();
    host.load_dir(dir.path()).unwrap();
    let spec = StackSpec {
        transforms: vec![("bomb".into(), json!({})), ("prefix".into(), json!({"from": "a/", "to": "b/"}))],
        ..Default::default()
    };
    let mut stack = Stack::new(&host, &spec).unwrap();
    let err = stack.map("a/bomb", &ctx()).unwrap_err();
    assert!(
        matches!(&err, StackError::Call { path, error: CallError::MemoryExceeded { plugin, limit } } if path == "a/bomb" && plugin == "bomb" && *limit == 8 << 20),
        "{err}"
    );
    assert_eq!(stack.map("a/x", &ctx()).unwrap().as_deref(), Some("b/x"));
    assert!(stack.map("a/bomb2", &ctx()).is_err(), "the replaced instance has the limit too");
}

#[test]
fn long_plugin_error_texts_are_truncated() {
    let (host, _d) = host_with("flood", &fixture("flood"), cfg());
    let mut i = host.instantiate("flood", "{}").unwrap();
    let err = i.transform("err/100000", &ctx()).unwrap_err();
    match &err {
        CallError::Guest { plugin, error: PluginError::Failed(m) } => {
            assert_eq!(plugin, "flood");
            assert!(m.len() <= 4096 + 64 && m.starts_with("eee") && m.ends_with(" bytes, truncated)"), "{} bytes: …{}", m.len(), m.chars().rev().take(40).collect::<String>());
        }
        other => panic!("expected the guest's error, got {other}"),
    }
    // Short texts are untouched; the instance is still up.
    let err = i.transform("err/10", &ctx()).unwrap_err();
    assert!(matches!(&err, CallError::Guest { error: PluginError::Failed(m), .. } if *m == "e".repeat(10)), "{err}");
    // configure's error text too.
    let err = host.instantiate("flood", r#"{"long-error": true}"#).unwrap_err().to_string();
    assert!(err.len() <= 4096 + 200 && err.contains("flood") && err.contains("truncated)"), "{} bytes", err.len());
}

#[test]
fn an_oversized_transform_output_fails_that_path() {
    let (host, _d) = host_with("flood", &fixture("flood"), cfg());
    let mut i = host.instantiate("flood", "{}").unwrap();
    assert_eq!(i.transform("out/4096", &ctx()).unwrap().map(|o| o.len()), Some(4096), "at the limit: fine");
    let err = i.transform("out/4097", &ctx()).unwrap_err();
    assert!(matches!(err, CallError::OutputTooLong { ref plugin, length: 4097, limit: 4096 } if plugin == "flood"), "{err}");
    let spec = StackSpec { transforms: vec![("flood".into(), json!({}))], ..Default::default() };
    let mut stack = Stack::new(&host, &spec).unwrap();
    let err = stack.map("out/100000", &ctx()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("out/100000") && text.contains("flood") && text.contains("4096") && text.len() < 500, "{text}");
    assert_eq!(stack.map("out/3", &ctx()).unwrap().as_deref(), Some("aaa"), "other paths go on");
}

/// Collects what `tracing` writes on this thread while `f` runs.
fn captured<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || out.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (result, text)
}

#[test]
fn plugin_logging_is_rate_limited() {
    let (host, _d) = host_with("flood", &fixture("flood"), cfg());
    let (_, log) = captured(|| {
        let mut i = host.instantiate("flood", "{}").unwrap();
        assert_eq!(i.transform("log/1000", &ctx()).unwrap(), None);
    });
    let lines = log.lines().filter(|l| l.contains("flood line")).count();
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("log lines dropped")).collect();
    assert_eq!(lines, 32, "at most 32 lines per call:\n{log}");
    assert_eq!(summaries.len(), 1, "{log}");
    assert!(summaries[0].contains("968") && summaries[0].contains("flood"), "{}", summaries[0]);

    // Across calls: a bucket of 256 lines, refilled at 64 lines/s; many quick calls cannot
    // log more than that, and the drops are summarised, not reported line by line.
    let (allowed, log) = captured(|| {
        let mut i = host.instantiate("flood", "{}").unwrap();
        let started = Instant::now();
        for _ in 0..40 {
            assert_eq!(i.transform("log/32", &ctx()).unwrap(), None);
        }
        256 + (started.elapsed().as_secs_f64() * 64.0).ceil() as usize
    });
    let lines = log.lines().filter(|l| l.contains("flood line")).count();
    let summaries = log.lines().filter(|l| l.contains("log lines dropped")).count();
    assert!((256..=allowed).contains(&lines), "{lines} lines forwarded (allowed: 256..={allowed})");
    // One when the bucket first ran dry, then at most one a second, and the rest when the
    // instance is dropped.
    assert!((1..=3).contains(&summaries), "{summaries} summaries:\n{log}");
}

#[test]
fn a_trap_does_not_refill_the_log_budget() {
    let (host, _d) = host_with("flood", &fixture("flood"), cfg());
    let (allowed, log) = captured(|| {
        let mut i = host.instantiate("flood", "{}").unwrap();
        let started = Instant::now();
        // 8 x 32 lines empty the bucket; every call traps and the instance is replaced.
        for _ in 0..8 {
            assert!(matches!(i.transform("panic/32", &ctx()), Err(CallError::Trap { .. })));
        }
        assert_eq!(i.transform("log/32", &ctx()).unwrap(), None);
        // What the bucket refilled meanwhile (a fresh bucket would allow all 32).
        (started.elapsed().as_secs_f64() * 64.0).ceil() as usize
    });
    // A bucket reset by each restart would let 9 x 32 = 288 through.
    let total = log.lines().filter(|l| l.contains("flood line")).count();
    assert!(total <= 256 + allowed, "{total} lines (allowed {})", 256 + allowed);
    assert!(allowed < 32, "too slow to tell a kept bucket from a fresh one ({allowed} tokens refilled)");
}

