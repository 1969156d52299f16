//! The HTTP rewriting proxy in front of a real dev server: forwards by default (keep-alive and
//! fresh connections alike), answers matching requests from its rules, and forwards again once
//! the rules are cleared.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::json;
use vsync_test_harness::{Bao, HttpProxy, http_request};

/// Sends `n` GETs on one keep-alive connection and returns each status and body.
fn keep_alive_gets(port: u16, path: &str, n: usize) -> Vec<(u16, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut out = Vec::new();
    for _ in 0..n {
        write!(w, "GET {path} HTTP/1.1\r\nHost: x\r\nX-Vault-Token: root\r\n\r\n").unwrap();
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
        out.push((code, String::from_utf8(body).unwrap()));
    }
    out
}

#[test]
fn forwards_rewrites_matching_requests_and_clears() {
    let bao = Bao::dev();
    bao.root("POST", "secret/data/a", Some(&json!({"data": {"x": 1}})));
    let proxy = HttpProxy::start(bao.port);
    let token = Some(bao.root_token.as_str());

    let (status, body) = http_request(proxy.port(), "GET", "/v1/secret/data/a", token, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["data"]["x"], 1);
    // A request with a body is forwarded whole.
    let (status, _) = http_request(proxy.port(), "POST", "/v1/secret/data/b", token, Some(&json!({"data": {"y": 2}})));
    assert_eq!(status, 200);
    assert_eq!(bao.root("GET", "secret/data/b", None)["data"]["data"]["y"], 2);

    proxy.respond("GET", "/v1/secret/data/a", 404, r#"{"errors":["rewritten"]}"#);
    proxy.respond("LIST", "/v1/secret/metadata/*", 200, "not json");
    let (status, body) = http_request(proxy.port(), "GET", "/v1/secret/data/a?version=1", token, None);
    assert_eq!((status, body), (404, json!({"errors": ["rewritten"]})), "query is not part of the path");
    let (status, body) = http_request(proxy.port(), "LIST", "/v1/secret/metadata/deep/er/", token, None);
    assert_eq!((status, body), (200, json!("not json")), "prefix rule");
    // Another method on the same path, or another path, still reaches the server.
    let (status, _) = http_request(proxy.port(), "GET", "/v1/secret/data/b", token, None);
    assert_eq!(status, 200);
    assert_eq!(proxy.rewritten(), 2);

    // Keep-alive: several requests on one connection, mixing rewritten and forwarded ones.
    proxy.respond("GET", "/v1/secret/data/b", 500, "{}");
    let answers = keep_alive_gets(proxy.port(), "/v1/secret/data/b", 2);
    assert_eq!(answers, vec![(500, "{}".to_owned()), (500, "{}".to_owned())]);
    proxy.clear();
    let answers = keep_alive_gets(proxy.port(), "/v1/secret/data/a", 3);
    assert!(answers.iter().all(|(s, b)| *s == 200 && b.contains("\"x\":1")), "{answers:?}");
    assert_eq!(proxy.rewritten(), 4);
    assert!(proxy.forwarded() >= 6);
}
