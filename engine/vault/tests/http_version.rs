//! Which HTTP version the client speaks to a real OpenBao server in each
//! [`HttpVersion`] mode, read from the transport's answer counts by version.

#![allow(clippy::unwrap_used)]

use vsync_test_harness::{Bao, DEV_ROOT_TOKEN};
use vsync_vault::{HttpVersion, ProtocolCounts, Token, VaultClient, VaultConfig};

async fn answers(bao: &Bao, mode: HttpVersion) -> ProtocolCounts {
    let mut cfg = VaultConfig::new(bao.addr(), Token::new(DEV_ROOT_TOKEN));
    cfg.ca_cert = bao.ca_cert();
    cfg.http_version = mode;
    let client = VaultClient::new(cfg).unwrap();
    assert_eq!(client.protocol_counts(), ProtocolCounts::default());
    client.mount_info("secret/").await.unwrap();
    client.read_latest("secret/", "absent").await.unwrap();
    client.protocol_counts()
}

#[tokio::test]
async fn auto_speaks_http2_when_the_tls_server_offers_it_and_http1_only_does_not() {
    let bao = Bao::dev_tls();
    let auto = answers(&bao, HttpVersion::Auto).await;
    assert!(auto.http2 >= 2 && auto.http1 == 0, "Auto over TLS: {auto:?}");
    let h1 = answers(&bao, HttpVersion::Http1Only).await;
    assert!(h1.http1 >= 2 && h1.http2 == 0, "Http1Only over TLS: {h1:?}");
}

#[tokio::test]
async fn auto_stays_on_http1_over_plain_http() {
    let bao = Bao::dev();
    let auto = answers(&bao, HttpVersion::Auto).await;
    assert!(auto.http1 >= 2 && auto.http2 == 0, "Auto over plain HTTP: {auto:?}");
}

#[tokio::test]
async fn the_default_speaks_http1_to_a_tls_server_that_offers_http2() {
    let cfg = VaultConfig::new("https://127.0.0.1:8200", Token::new("t"));
    assert_eq!(cfg.http_version, HttpVersion::Http1Only);
    let bao = Bao::dev_tls();
    let default = answers(&bao, cfg.http_version).await;
    assert!(default.http1 >= 2 && default.http2 == 0, "default over TLS: {default:?}");
}

/// A burst of requests on a fresh client over a long link: with `Auto` they share the one
/// HTTP/2 connection the first exchange opened; with `Http1Only` each opens its own.
#[tokio::test]
async fn a_burst_shares_one_http2_connection_and_opens_many_over_http1() {
    let bao = Bao::dev_tls();
    let proxy = vsync_test_harness::Proxy::start(bao.port);
    proxy.set_latency(std::time::Duration::from_millis(10), std::time::Duration::from_millis(10));
    for (mode, one) in [(HttpVersion::Auto, true), (HttpVersion::Http1Only, false)] {
        let mut cfg = VaultConfig::new(format!("https://127.0.0.1:{}", proxy.port()), Token::new(DEV_ROOT_TOKEN));
        cfg.ca_cert = bao.ca_cert();
        cfg.http_version = mode;
        let client = VaultClient::new(cfg).unwrap();
        let before = proxy.connections();
        let reads = (0..16).map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.read_latest("secret/", &format!("absent{i}")).await })
        });
        for read in reads.collect::<Vec<_>>() {
            read.await.unwrap().unwrap();
        }
        let opened = proxy.connections() - before;
        assert_eq!(opened == 1, one, "{mode:?}: {opened} connections for 16 requests at once");
    }
}
