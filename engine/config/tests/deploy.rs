//! The deployment examples in `examples/deploy/` hold together: the Kubernetes manifest parses
//! as YAML and wires the service account, the config and the `/healthz` probes; the config it
//! carries is a valid `vsync.toml`; the systemd unit keeps its sandbox. (`scripts/test.sh` also
//! runs `systemd-analyze verify` on the units where that tool exists; the Containerfile is not
//! built in CI.)

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/deploy").join(file)
}

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(deploy("kubernetes.yaml")).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in kubernetes.yaml"))
}

const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[test]
fn kubernetes_manifest_parses_and_wires_probes_account_and_config() {
    let docs = documents();
    let account = kind(&docs, "ServiceAccount");
    let config_map = kind(&docs, "ConfigMap");
    let deployment = kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    let container = &pod["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], container["ports"][0]["name"], "{probe}");
    }
    assert_eq!(container["ports"][0]["containerPort"], 9464);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // The config volume is the ConfigMap, mounted where the args point.
    assert_eq!(pod["volumes"][0]["configMap"]["name"], config_map["metadata"]["name"]);
    let args: Vec<&str> = container["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[..2], ["--config", "/etc/vsync/vsync.toml"]);
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/vsync");

    // Every Vault logs in with the service-account token (Kubernetes auth).
    let toml_text = config_map["data"]["vsync.toml"].as_str().unwrap();
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    let mut vaults = vec![&table["origin"]["vault"]];
    vaults.extend(table["destination"].as_array().unwrap().iter().map(|d| &d["vault"]));
    for v in vaults {
        let jwt = &v["jwt"];
        assert_eq!(jwt["role"].as_str(), Some("vsync"));
        assert_eq!(jwt["jwt_file"].as_str(), Some(SA_TOKEN));
        assert_eq!(jwt["mount"].as_str(), Some("kubernetes"));
    }
    assert_eq!(table["telemetry"]["listen"].as_str(), Some("0.0.0.0:9464"));
    // Both listeners are routable, so a NetworkPolicy admits only their peers, and the audit
    // feed's allow list matches the policy's range.
    assert_eq!(table["origin"]["audit_listen"].as_str(), Some("0.0.0.0:9400"));
    let policy = kind(&docs, "NetworkPolicy");
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"]);
    let rules = policy["spec"]["ingress"].as_sequence().unwrap();
    let port_rule = |port: u64| rules.iter().find(|r| r["ports"][0]["port"].as_u64() == Some(port)).unwrap_or_else(|| panic!("no rule for {port}"));
    let allowed = table["origin"]["audit_allow"].as_array().unwrap();
    assert_eq!(allowed.len(), 1);
    assert_eq!(port_rule(9400)["from"][0]["ipBlock"]["cidr"].as_str(), allowed[0].as_str());
    assert!(port_rule(9464)["from"][0]["namespaceSelector"].is_mapping());
}


#[test]
fn kubernetes_config_is_a_valid_vsync_toml() {
    let docs = documents();
    let text = kind(&docs, "ConfigMap")["data"]["vsync.toml"].as_str().unwrap().to_owned();
    assert!(text.contains("jwt ="), "the ConfigMap uses Kubernetes auth:\n{text}");
    if let Err(e) = vsync_config::Config::parse(&text, Path::new("kubernetes.yaml:vsync.toml")) {
        panic!("the ConfigMap's vsync.toml is not valid:\n{e}");
    }
}

#[test]
fn systemd_unit_keeps_its_sandbox_and_health_check() {
    let unit = std::fs::read_to_string(deploy("vsync.service")).unwrap();
    for line in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "ReadWritePaths=/var/lib/vsync /var/cache/vsync",
        "RestartPreventExitStatus=2",
    ] {
        assert!(unit.lines().any(|l| l == line), "vsync.service lacks `{line}`");
    }
    let health = std::fs::read_to_string(deploy("vsync-health.service")).unwrap();
    assert!(health.contains("http://127.0.0.1:9464/healthz"), "{health}");
    let timer = std::fs::read_to_string(deploy("vsync-health.timer")).unwrap();
    assert!(timer.contains("OnUnitActiveSec="), "{timer}");
}

#[test]
fn containerfile_is_multi_stage_non_root_and_says_it_is_not_built_in_ci() {
    let file = std::fs::read_to_string(deploy("Containerfile")).unwrap();
    assert_eq!(file.lines().filter(|l| l.starts_with("FROM ")).count(), 2, "{file}");
    assert!(file.lines().any(|l| l == "USER 65532:65532"), "{file}");
    assert!(file.contains("NOT built in CI"), "{file}");
    // The final stage copies the binary only.
    let last = file.rsplit("\nFROM ").next().unwrap();
    let copies: Vec<&str> = last.lines().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies, ["COPY --from=build /out/vsync /usr/local/bin/vsync"]);
}
