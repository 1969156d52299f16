//! The committed JSON Schema (`engine/config/vsync.schema.json`) is the one the types generate.

use std::path::Path;

#[test]
fn committed_schema_matches_the_types() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("vsync.schema.json");
    let generated = vsync_config::json_schema_text();
    if std::env::var_os("VSYNC_BLESS").is_some() {
        std::fs::write(&file, &generated).expect("writing the schema");
        return;
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the config types; run `VSYNC_BLESS=1 cargo test -p vsync-config` to update it",
        file.display()
    );
}

#[test]
fn durations_and_sizes_are_strings_with_a_pattern() {
    let schema = vsync_config::json_schema();
    let origin = &schema["$defs"]["Origin"]["properties"];
    assert_eq!(origin["interval"]["type"], "string");
    assert_eq!(
        origin["interval"]["pattern"],
        vsync_config::DURATION_PATTERN
    );
    assert_eq!(origin["interval"]["default"], "1m");
    let plugins = &schema["$defs"]["PluginSettings"]["properties"];
    assert_eq!(plugins["memory_limit"]["type"], "string");
    assert_eq!(
        plugins["memory_limit"]["pattern"],
        vsync_config::SIZE_PATTERN
    );
    assert_eq!(plugins["memory_limit"]["default"], "32MiB");
    assert_eq!(
        schema["$defs"]["Destination"]["properties"]["versions"]["default"],
        "all"
    );
    // Unknown keys are refused everywhere, so editors flag them too.
    for def in [
        "Origin",
        "VaultSettings",
        "AppRole",
        "Destination",
        "PluginRef",
        "PluginSettings",
        "Telemetry",
    ] {
        assert_eq!(schema["$defs"][def]["additionalProperties"], false, "{def}");
    }
}
