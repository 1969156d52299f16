//! One plugin call through the host (long-lived instance, a 60-byte path) and the whole default
//! stack, beside the same logic called natively in the same run.
//!
//! `cargo bench -p vsync-plugin-host --bench call`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use vsync_plugin_host::{Context, HostConfig, PluginHost, Stack, StackSpec};

const PATH: &str = "prod/eu/billing-service/database/primary/credentials/main-01"; // 60 bytes

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

fn bench(c: &mut Criterion) {
    assert_eq!(PATH.len(), 60);
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let ctx = ctx();
    let mut g = c.benchmark_group("transform");

    let mut prefix = host.instantiate("prefix", r#"{"from": "prod/eu/", "to": "eu/"}"#).expect("prefix");
    g.bench_function("prefix via host", |b| b.iter(|| prefix.transform(black_box(PATH), &ctx).expect("call")));
    g.bench_function("prefix native", |b| {
        b.iter(|| black_box(PATH).strip_prefix("prod/eu/").map(|rest| format!("eu/{rest}")))
    });

    let from = "^prod/(?P<region>[a-z]+)/(?P<app>[^/]+)/(?P<rest>.+)$";
    let mut regex = host
        .instantiate("regex", &json!({"from": from, "to": "{region}/{app}/{rest}"}).to_string())
        .expect("regex");
    g.bench_function("regex via host", |b| b.iter(|| regex.transform(black_box(PATH), &ctx).expect("call")));
    let native = regex::Regex::new(from).expect("regex");
    g.bench_function("regex native", |b| {
        b.iter(|| {
            native.captures(black_box(PATH)).map(|c| format!("{}/{}/{}", &c["region"], &c["app"], &c["rest"]))
        })
    });

    let spec = StackSpec {
        filters: vec![("glob".into(), json!({"include": ["prod/**"], "exclude": ["**/tmp/**"]}))],
        transforms: vec![("regex".into(), json!({"from": from, "to": "{region}/{app}/{rest}"}))],
    };
    let mut stack = Stack::new(&host, &spec).expect("stack");
    g.bench_function("default stack via host (glob + regex + identity)", |b| {
        b.iter(|| stack.map(black_box(PATH), &ctx).expect("map"))
    });
    let include = globset::GlobSetBuilder::new()
        .add(globset::GlobBuilder::new("prod/**").literal_separator(true).build().expect("glob"))
        .build()
        .expect("set");
    let exclude = globset::GlobSetBuilder::new()
        .add(globset::GlobBuilder::new("**/tmp/**").literal_separator(true).build().expect("glob"))
        .build()
        .expect("set");
    g.bench_function("default stack native", |b| {
        b.iter(|| {
            let p = black_box(PATH);
            (include.is_match(p) && !exclude.is_match(p))
                .then(|| native.captures(p).map(|c| format!("{}/{}/{}", &c["region"], &c["app"], &c["rest"])))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = bench
}
criterion_main!(benches);
