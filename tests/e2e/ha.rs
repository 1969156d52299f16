//! One writer per side, HA: two instances of one role share one Consul (the in-process
//! emulator, with short session TTLs) and real OpenBao servers. One instance is the writer, the
//! other a hot standby naming the holder; a writer whose session ends goes back to standby; when
//! the writer is killed with SIGKILL the standby takes over within 2 x TTL + lock-delay + 5 s;
//! and the side's published root never goes back a generation. With `--once`, a held lock
//! makes the process wait at most the role's timeout, then exit 1 naming the holder; on the
//! file store a second writer fails at once, naming the lock file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use vsync_consul_emulator::{Emulator, EmulatorConfig};
use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};

use super::{client, config_with_state, contents, data, text};

/// Session TTL and lock-delay of the processes under test (`VSYNC_TEST_LOCK_TIMING`).
const TTL: Duration = Duration::from_secs(1);
const LOCK_DELAY: Duration = Duration::from_secs(1);

/// The takeover bound: Consul invalidates an unrenewed session within 2 x TTL, then refuses
/// the lock for the lock-delay; 5 s for the standby to notice and for a loaded machine.
fn takeover_bound() -> Duration {
    TTL * 2 + LOCK_DELAY + Duration::from_secs(5)
}

fn emulator() -> Arc<Emulator> {
    Arc::new(Emulator::start_with(EmulatorConfig { session_ttl_min: Duration::from_millis(500), ..Default::default() }))
}

/// A `vsync` child process whose output lines are collected (with arrival times) as it runs.
/// Killed (SIGKILL) when dropped: only the processes a test started.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Proc {
    fn spawn(cfg: &Path, args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vsync"))
            .current_dir(cfg.parent().unwrap())
            .arg("--config")
            .arg(cfg)
            .args(args)
            .env("VSYNC_LOG", "info")
            .env("VSYNC_TEST_LOCK_TIMING", format!("{}ms,{}ms", TTL.as_millis(), LOCK_DELAY.as_millis()))
            .env("VSYNC_E2E_DEST_TOKEN", DEV_ROOT_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
        Proc { child, lines }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `<host> pid <pid>` is how a holder is named; this is its pid part.
    fn holder_tag(&self) -> String {
        format!("pid {}", self.pid())
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// Lines containing `needle` that arrived after `since`.
    fn count_since(&self, needle: &str, since: Instant) -> usize {
        self.lines.lock().unwrap().iter().filter(|(t, l)| *t >= since && l.contains(needle)).count()
    }

    /// Waits until a line containing `needle` arrived after `since`.
    fn wait_for(&mut self, needle: &str, since: Instant, limit: Duration) {
        let start = Instant::now();
        while self.count_since(needle, since) == 0 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("vsync exited ({status}) before printing `{needle}`:\n{}", self.text());
            }
            assert!(start.elapsed() < limit, "no `{needle}` within {limit:?}:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        // `Child::kill` is SIGKILL on Unix: no chance to release the lock.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls a side's root in the emulator and records every generation seen, until stopped.
struct GenerationWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl GenerationWatch {
    fn start(emu: &Arc<Emulator>, key: &str) -> GenerationWatch {
        let (emu, key, stop) = (emu.clone(), key.to_owned(), Arc::new(AtomicBool::new(false)));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if let Some(root) = emu.get(&key) {
                    let g = serde_json::from_slice::<serde_json::Value>(&root).unwrap()["generation"].as_u64().unwrap();
                    if seen.last() != Some(&g) {
                        seen.push(g);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        GenerationWatch { stop, thread: Some(thread) }
    }

    /// Stops and checks: the generation never went backwards. Returns what was seen.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.thread.take().unwrap().join().unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "the published root went back a generation: {seen:?}");
        seen
    }
}

/// Waits until the emulator's lock key names a holder whose tag is in `tags`; that tag.
fn wait_for_holder(emu: &Emulator, key: &str, tags: &[String], limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if emu.lock_holder(key).is_some()
            && let Some(value) = emu.get(key)
        {
            let value = String::from_utf8_lossy(&value).into_owned();
            if let Some(tag) = tags.iter().find(|t| value.ends_with(t.as_str())) {
                return tag.clone();
            }
        }
        assert!(start.elapsed() < limit, "no holder among {tags:?} within {limit:?}: {:?}", emu.get(key).map(|v| String::from_utf8_lossy(&v).into_owned()));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A config for origin `a` -> destination `eu` at `b`, both sides in the emulator under
/// `vsync-e2e/`, origin and destination intervals of 1 s.
fn ha_config(dir: &Path, emu: &Emulator, a: &Bao, b: &Bao) -> PathBuf {
    let state = format!("{{ backend = \"consul\", address = \"{}\", prefix = \"vsync-e2e/\" }}", emu.url());
    let cfg = config_with_state(dir, a, b, "interval = \"1s\"", &state);
    let text = std::fs::read_to_string(&cfg).unwrap().replacen("mounts = [\"secret/\", \"kv1/\"]", "mounts = [\"secret/\", \"kv1/\"]\ninterval = \"1s\"", 1);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn servers() -> (Bao, Bao) {
    let (a, b) = (Bao::dev(), Bao::dev());
    a.enable_kv("kv1", 1);
    b.enable_kv("kv1", 1);
    (a, b)
}

/// Ends a session as Consul would when it expires or an operator destroys it.
async fn destroy_session(emu: &Emulator, session: &str) {
    let consul = vsync_state::consul::ConsulClient::new(vsync_state::consul::ConsulConfig::new(emu.url())).unwrap();
    consul.destroy_session(session).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_origins_one_writer_and_a_takeover_after_sigkill() {
    println!("Consul state store: the in-process emulator (tests/consul-emulator)");
    let emu = emulator();
    let (a, b) = servers();
    let ca = client(&a);
    for i in 0..5 {
        ca.write_version("secret/", &format!("k{i}"), &data(json!({"v": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = ha_config(dir.path(), &emu, &a, &b);
    let (lock_key, root_key) = ("vsync-e2e/origin/lock", "vsync-e2e/origin/root");

    let t0 = Instant::now();
    let mut first = Proc::spawn(&cfg, &["origin"]);
    first.wait_for("published", t0, Duration::from_secs(60));
    let mut second = Proc::spawn(&cfg, &["origin"]);
    second.wait_for("standby", t0, Duration::from_secs(60));
    let standby_line = second.text();
    assert!(standby_line.contains(lock_key) && standby_line.contains(&first.holder_tag()), "the standby names the lock and its holder:\n{standby_line}");
    // `vsync status` names who holds the lock the standby waits on.
    let out = super::vsync(&cfg, &["status", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let holder = report["origin_lock_holder"].as_str().unwrap_or_default().to_owned();
    assert!(holder.contains(&first.holder_tag()), "status names the lock holder: {report}");
    let out = super::vsync(&cfg, &["status"]);
    assert!(text(&out).contains(&format!("lock held by {holder}")), "{}", text(&out));
    let watch = GenerationWatch::start(&emu, root_key);

    // Changes keep coming: every scan publishes a new generation.
    let writer_stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ca, stop) = (ca.clone(), writer_stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                // `options.cas` = the version before this write.
                ca.write_version("secret/", "churn", &data(json!({"n": n})), n - 1).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let watching = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(first.count_since("published", watching) >= 2, "the writer keeps publishing:\n{}", first.text());
    assert_eq!(second.count_since("origin: ", t0), 0, "the standby neither scans nor publishes:\n{}", second.text());

    // The writer's session ends behind its back: it abandons its cycle and becomes a standby;
    // one of the two is the writer after the lock-delay.
    let tags = [first.holder_tag(), second.holder_tag()];
    let session = emu.lock_holder(lock_key).unwrap();
    let ended = Instant::now();
    destroy_session(&emu, &session).await;
    let writer_tag = wait_for_holder(&emu, lock_key, &tags, takeover_bound());
    println!("after the writer's session ended, {writer_tag} held the lock {:?} later", ended.elapsed());
    first.wait_for("lost the lock", ended, takeover_bound());

    // SIGKILL the writer, whichever it is now: the other takes over within the bound.
    let (mut dead, mut survivor) = if writer_tag == first.holder_tag() { (first, second) } else { (second, first) };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    dead.kill9();
    let tag = wait_for_holder(&emu, lock_key, std::slice::from_ref(&survivor.holder_tag()), takeover_bound());
    let took = killed.elapsed();
    println!("takeover {took:?} after SIGKILL of the origin writer (TTL {TTL:?}, lock-delay {LOCK_DELAY:?}); bound {:?}", takeover_bound());
    assert_eq!(tag, survivor.holder_tag());
    survivor.wait_for("took over", killed, takeover_bound());
    survivor.wait_for("published", killed, Duration::from_secs(10));

    writer_stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let seen = watch.finish();
    println!("origin generations seen: {seen:?}");
    assert!(seen.len() >= 4, "the generation moved on through both takeovers: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_destinations_named_eu_one_writer_and_a_takeover_after_sigkill() {
    println!("Consul state store: the in-process emulator (tests/consul-emulator)");
    let emu = emulator();
    let (a, b) = servers();
    let (ca, cb) = (client(&a), client(&b));
    for i in 0..10 {
        ca.write_version("secret/", &format!("app/k{i}"), &data(json!({"v": i})), 0).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = ha_config(dir.path(), &emu, &a, &b);
    let (lock_key, root_key) = ("vsync-e2e/destination-eu/lock", "vsync-e2e/destination-eu/root");

    let t0 = Instant::now();
    let mut origin = Proc::spawn(&cfg, &["origin"]);
    origin.wait_for("published", t0, Duration::from_secs(60));
    let mut first = Proc::spawn(&cfg, &["destination", "--name", "eu"]);
    first.wait_for("destination eu: ", t0, Duration::from_secs(60));
    let mut second = Proc::spawn(&cfg, &["destination", "--name", "eu"]);
    second.wait_for("standby", t0, Duration::from_secs(60));
    assert!(second.text().contains(lock_key) && second.text().contains(&first.holder_tag()), "{}", second.text());
    let watch = GenerationWatch::start(&emu, root_key);

    // Changes reach the destination through the writer; the standby runs no cycle.
    let converge = async |what: &str| {
        let start = Instant::now();
        while contents(&cb).await != contents(&ca).await {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: the destination did not converge");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    for i in 0..3 {
        ca.write_version("secret/", &format!("app/k{i}"), &data(json!({"v": i, "round": 1})), 1).await.unwrap();
    }
    converge("through the first writer").await;
    assert_eq!(second.count_since("destination eu: ", t0), 0, "the standby ran no cycle:\n{}", second.text());

    let killed = Instant::now();
    first.kill9();
    wait_for_holder(&emu, lock_key, std::slice::from_ref(&second.holder_tag()), takeover_bound());
    let took = killed.elapsed();
    println!("takeover {took:?} after SIGKILL of destination eu's writer (TTL {TTL:?}, lock-delay {LOCK_DELAY:?}); bound {:?}", takeover_bound());
    second.wait_for("took over", killed, takeover_bound());

    for i in 3..6 {
        ca.write_version("secret/", &format!("app/k{i}"), &data(json!({"v": i, "round": 2})), 1).await.unwrap();
    }
    ca.delete_metadata("secret/", "app/k9").await.unwrap();
    converge("through the new writer").await;
    assert!(second.count_since("destination eu: ", killed) >= 1, "the new writer runs cycles:\n{}", second.text());

    let seen = watch.finish();
    println!("destination-eu generations seen: {seen:?}");
    assert!(seen.len() >= 2, "{seen:?}");
    drop(origin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_against_a_held_lock_waits_the_timeout_and_names_the_holder() {
    let emu = emulator();
    let (a, b) = servers();
    client(&a).write_version("secret/", "k", &data(json!({"v": 1})), 0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ha_config(dir.path(), &emu, &a, &b);
    let t0 = Instant::now();
    let mut writer = Proc::spawn(&cfg, &["origin"]);
    writer.wait_for("published", t0, Duration::from_secs(60));

    // The same config with a 2 s origin timeout: how long `--once` may wait for the lock.
    let once_cfg = dir.path().join("once.toml");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replacen("interval = \"1s\"", "interval = \"1s\"\ntimeout = \"2s\"", 1);
    std::fs::write(&once_cfg, text_cfg).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&once_cfg).args(["origin", "--once"])
        .env("VSYNC_LOG", "info")
        .env("VSYNC_TEST_LOCK_TIMING", "1s,1s")
        .output().unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(err.contains("vsync-e2e/origin/lock") && err.contains(&writer.holder_tag()) && err.contains("gave up after 2s"), "{err}");
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(30), "{took:?}");
    assert!(emu.get("vsync-e2e/origin/lock").is_some_and(|v| String::from_utf8_lossy(&v).ends_with(&writer.holder_tag())), "the writer still holds it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_origin_on_the_file_store_fails_at_once_naming_the_lock_file() {
    let (a, b) = servers();
    client(&a).write_version("secret/", "k", &data(json!({"v": 1})), 0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = super::config(dir.path(), &a, &b, "");
    let t0 = Instant::now();
    let mut writer = Proc::spawn(&cfg, &["origin"]);
    writer.wait_for("published", t0, Duration::from_secs(60));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config").arg(&cfg).args(["origin", "--once"])
        .env("VSYNC_LOG", "warn")
        .output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("origin.lock") && text(&out).contains("locked by another vsync process"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(20), "at once (start-up checks only): {:?}", started.elapsed());
}

/// Two `vsync origin` processes on one host with the same `audit_listen`: only the writer
/// listens; when its session ends behind its back it releases the port at once, and whichever
/// process becomes the writer binds it (before issue 19 the demoted one kept it and a standby
/// that took over failed to bind, which was fatal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_origin_releases_the_audit_listener_for_the_new_writer() {
    let emu = emulator();
    let (a, b) = servers();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ha_config(dir.path(), &emu, &a, &b);
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replacen("interval = \"1s\"", &format!("interval = \"1s\"\naudit_listen = \"{listen}\""), 1);
    std::fs::write(&cfg, text).unwrap();
    let lock_key = "vsync-e2e/origin/lock";

    let t0 = Instant::now();
    let mut first = Proc::spawn(&cfg, &["origin"]);
    first.wait_for("listening for a socket audit device", t0, Duration::from_secs(60));
    let mut second = Proc::spawn(&cfg, &["origin"]);
    second.wait_for("standby", t0, Duration::from_secs(60));
    assert_eq!(second.count_since("audit feed", t0), 0, "a standby does not listen:\n{}", second.text());

    let tags = [first.holder_tag(), second.holder_tag()];
    let session = emu.lock_holder(lock_key).unwrap();
    let ended = Instant::now();
    destroy_session(&emu, &session).await;
    first.wait_for("released the listener", ended, takeover_bound());
    let writer_tag = wait_for_holder(&emu, lock_key, &tags, takeover_bound());
    let writer = if writer_tag == first.holder_tag() { &mut first } else { &mut second };
    writer.wait_for("listening for a socket audit device", ended, takeover_bound());
    println!("the new writer ({writer_tag}) listens {:?} after the old one's session ended", ended.elapsed());
    assert!(std::net::TcpStream::connect(listen).is_ok(), "the new writer accepts the device");
    for p in [&mut first, &mut second] {
        assert!(p.child.try_wait().unwrap().is_none(), "no process stopped:\n{}", p.text());
        assert!(!p.text().contains("address is in use") || p.text().contains("listening for a socket audit device"), "{}", p.text());
    }
}
