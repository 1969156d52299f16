//! Every `examples/*.toml` passes `vsync validate` (offline: the config, and every plugin stack
//! loaded and configured), from a working directory other than the examples' own.

use std::path::PathBuf;
use std::process::Command;

use super::text;

#[test]
fn every_example_config_passes_vsync_validate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["local.toml", "two-regions-consul.toml", "region-filtered.toml", "migration.toml"] {
        assert!(names.iter().any(|n| n == want), "examples/{want} missing: {names:?}");
    }
    let cwd = tempfile::tempdir().unwrap();
    for file in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
            .current_dir(cwd.path())
            .arg("--config")
            .arg(file)
            .arg("validate")
            .env("VSYNC_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}:\n{}", file.display(), text(&out));
        assert!(text(&out).contains("config OK"), "{}:\n{}", file.display(), text(&out));
    }
    // validate is offline and writes nothing where it runs.
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
    // The filtered example really loads three plugins.
    let out = Command::new(env!("CARGO_BIN_EXE_vsync"))
        .arg("--config")
        .arg(dir.join("region-filtered.toml"))
        .arg("validate")
        .output()
        .unwrap();
    assert!(text(&out).contains("1 plugin stack(s) loaded and configured"), "{}", text(&out));
}
