//! The emulator's fault hooks (not part of the contract: Consul has no such hooks). Each test
//! checks the hook's effect over HTTP and that service returns to normal afterwards.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vsync_consul_emulator::Emulator;

struct Got {
    status: u16,
    index: Option<u64>,
    body: String,
}

async fn send(req: reqwest::RequestBuilder) -> Option<Got> {
    let r = req.timeout(Duration::from_secs(20)).send().await.ok()?;
    let status = r.status().as_u16();
    let index = r.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = r.text().await.ok()?;
    Some(Got { status, index, body })
}

async fn get(emu: &Emulator, path_and_query: &str) -> Option<Got> {
    send(reqwest::Client::new().get(format!("{}/v1/kv/{path_and_query}", emu.url()))).await
}

async fn put(emu: &Emulator, key: &str, value: &str) {
    let got = send(reqwest::Client::new().put(format!("{}/v1/kv/{key}", emu.url())).body(value.to_owned())).await.unwrap();
    assert_eq!((got.status, got.body.as_str()), (200, "true"));
}

#[tokio::test]
async fn fail_next_injects_statuses_then_normal_service() {
    let emu = Emulator::start();
    put(&emu, "a", "v").await;
    for (status, body) in [(429, "rate limit"), (500, "No cluster leader"), (503, "rate limit")] {
        emu.reset_stats();
        emu.faults().fail_next(status, 2);
        for _ in 0..2 {
            let got = get(&emu, "a").await.unwrap();
            assert_eq!(got.status, status);
            assert!(got.body.contains(body), "{status}: {}", got.body);
        }
        assert_eq!(get(&emu, "a").await.unwrap().status, 200, "only `count` requests fail");
        assert_eq!(emu.stats().errors, 2);
    }
    // Writes fail too, and change nothing.
    emu.faults().fail_next(503, 1);
    let before = emu.index();
    let got = send(reqwest::Client::new().put(format!("{}/v1/kv/a", emu.url())).body("new")).await.unwrap();
    assert_eq!(got.status, 503);
    assert_eq!((emu.index(), emu.get("a")), (before, Some(b"v".to_vec())));
    emu.faults().fail_next(500, 0);
    assert_eq!(get(&emu, "a").await.unwrap().status, 200, "count 0 turns it off");
}

#[tokio::test]
async fn index_backwards_wakes_blocked_queries_with_a_lower_index() {
    let emu = Emulator::start();
    for i in 0..10 {
        put(&emu, &format!("k{i}"), "v").await;
    }
    let before = emu.index();
    let idx = get(&emu, "k9").await.unwrap().index.unwrap();
    let faults = emu.faults();
    let started = Instant::now();
    let path = format!("k9?index={idx}&wait=10s");
    let (got, ()) = tokio::join!(get(&emu, &path), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        faults.index_backwards();
    });
    assert!(started.elapsed() < Duration::from_secs(2), "the restore woke the query: {:?}", started.elapsed());
    let got = got.unwrap();
    assert_eq!(got.status, 200);
    assert!(got.index.unwrap() < idx, "the index went backwards: {idx} -> {:?}", got.index);
    assert!(emu.index() < before && emu.index() >= 1);
    // New writes continue from the lower index.
    put(&emu, "k0", "changed").await;
    assert_eq!(get(&emu, "k0").await.unwrap().index, Some(emu.index()));
}

#[tokio::test]
async fn reap_tombstones_lets_a_list_index_fall() {
    let emu = Emulator::start();
    put(&emu, "dir/a", "1").await;
    put(&emu, "dir/b", "1").await;
    put(&emu, "elsewhere", "1").await;
    send(reqwest::Client::new().delete(format!("{}/v1/kv/dir/b", emu.url()))).await.unwrap();
    let with_tombstone = get(&emu, "dir/?recurse").await.unwrap().index.unwrap();
    assert_eq!(with_tombstone, emu.index(), "the delete's tombstone is the prefix's max");
    emu.faults().reap_tombstones();
    let reaped = get(&emu, "dir/?recurse").await.unwrap().index.unwrap();
    assert!(reaped < with_tombstone, "{with_tombstone} -> {reaped}");
    assert_eq!(Some(reaped), get(&emu, "dir/a").await.unwrap().index, "now dir/a's ModifyIndex");
}

#[tokio::test]
async fn drop_long_polls_cuts_only_blocking_gets() {
    let emu = Emulator::start();
    put(&emu, "w", "v").await;
    let idx = emu.index();
    emu.faults().drop_long_polls(2);
    assert_eq!(get(&emu, "w").await.unwrap().status, 200, "non-blocking reads are not cut");
    for _ in 0..2 {
        assert!(get(&emu, &format!("w?index={idx}&wait=5s")).await.is_none(), "connection closed without an answer");
    }
    let started = Instant::now();
    let got = get(&emu, &format!("w?index={idx}&wait=300ms")).await.unwrap();
    assert_eq!((got.status, got.index), (200, Some(idx)), "the third poll blocks normally");
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(emu.stats().blocking_reads, 3);
    assert_eq!(emu.stats().errors, 2, "dropped polls count as errors");
}

#[tokio::test]
async fn spurious_wakeup_returns_unchanged_data_early() {
    let emu = Emulator::start();
    put(&emu, "w", "v").await;
    let idx = emu.index();
    let faults = emu.faults();
    let started = Instant::now();
    let path = format!("w?index={idx}&wait=10s");
    let (got, ()) = tokio::join!(get(&emu, &path), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        faults.spurious_wakeup();
    });
    let got = got.unwrap();
    assert_eq!((got.status, got.index), (200, Some(idx)), "woken with unchanged data");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(emu.index(), idx);
}

#[tokio::test]
async fn zero_index_sends_0_but_blocking_still_works() {
    let emu = Emulator::start();
    put(&emu, "z", "v").await;
    let idx = emu.index();
    emu.faults().zero_index(true);
    assert_eq!(get(&emu, "z").await.unwrap().index, Some(0));
    assert_eq!(get(&emu, "missing").await.unwrap().index, Some(0));
    // A client that kept its real index still blocks, and is woken by a write.
    let started = Instant::now();
    let path = format!("z?index={idx}&wait=10s");
    let (got, ()) = tokio::join!(get(&emu, &path), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        put(&emu, "z", "new").await;
    });
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(got.unwrap().index, Some(0));
    emu.faults().zero_index(false);
    assert_eq!(get(&emu, "z").await.unwrap().index, Some(emu.index()));
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let emu = Emulator::start();
    put(&emu, "l", "v").await;
    emu.faults().latency(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(&emu, "l").await.unwrap().status, 200);
    put(&emu, "l", "w").await;
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    emu.faults().latency(Duration::ZERO);
    let started = Instant::now();
    get(&emu, "l").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(250));
}
