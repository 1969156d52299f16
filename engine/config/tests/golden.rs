//! Golden tests: every `tests/golden/valid/*.toml` loads, and every `tests/golden/invalid/*.toml`
//! fails with exactly the text in the `.expected` file beside it. `VSYNC_BLESS=1 cargo test -p
//! vsync-config` rewrites the `.expected` files from the current output (review the diff).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use vsync_config::{Config, ConfigError};

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The name errors carry: relative, so the expected text does not depend on the checkout.
fn shown(kind: &str, file: &Path) -> PathBuf {
    Path::new(kind).join(file.file_name().unwrap())
}

#[test]
fn valid_configs_load() {
    let files = cases("valid");
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if let Err(e) = Config::parse(&text, &shown("valid", &file)) {
            panic!("{} should be valid:\n{e}", file.display());
        }
        Config::load(&file).unwrap();
    }
}

#[test]
fn invalid_configs_fail_with_the_expected_text() {
    let bless = std::env::var_os("VSYNC_BLESS").is_some();
    let files = cases("invalid");
    assert!(files.len() >= 6, "{files:?}");
    let mut stale = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let err = match Config::parse(&text, &shown("invalid", &file)) {
            Ok(_) => panic!("{} should be invalid", file.display()),
            Err(e) => e,
        };
        let got = format!("{err}\n");
        let expected_file = file.with_extension("expected");
        if bless {
            std::fs::write(&expected_file, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if got != expected {
            stale.push(format!("--- {}\n+++ got\n{got}", expected_file.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "config errors differ from the golden files; if the new text is right, run `VSYNC_BLESS=1 cargo test -p vsync-config` and review the diff:\n{}",
        stale.join("\n")
    );
}

#[test]
fn a_syntax_error_is_reported_alone_and_the_rest_all_at_once() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/invalid/syntax.toml"),
    )
    .unwrap();
    assert!(matches!(
        Config::parse(&text, Path::new("s.toml")),
        Err(ConfigError::Parse { line: 5, .. })
    ));
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/invalid/unknown-keys.toml"),
    )
    .unwrap();
    let Err(ConfigError::Many(all)) = Config::parse(&text, Path::new("u.toml")) else {
        panic!("several problems expected");
    };
    let keys: Vec<(usize, String)> = all
        .iter()
        .map(|e| match e {
            ConfigError::Invalid { line, key, .. } => (*line, key.clone()),
            other => panic!("{other}"),
        })
        .collect();
    for want in [
        (3, "origin.vault.tokn"),
        (5, "origin.workerz"),
        (6, "origin.state.prefx"),
        (10, "destination[0].vault.approle.secretid"),
        (12, "destination[0].state.dir"),
        (19, "destination[1].intervl"),
        (20, "destination[1].transforms[0].confg"),
        (23, "plugins.memory"),
        (26, "telemetry.log-format"),
        (28, "metrics"),
    ] {
        assert!(
            keys.contains(&(want.0, want.1.to_owned())),
            "{want:?} not in {keys:?}"
        );
    }
    assert_eq!(keys.len(), 10, "{keys:?}");
}
