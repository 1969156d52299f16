//! Path rules: what a mount name and a mount-relative secret path may look like.
//!
//! Vault cleans `.`/`..`/`//` with a redirect and reads `%2F` as `/`, so a replicator that sent
//! such paths would write somewhere other than where it thinks. We refuse them up front instead.

use thiserror::Error;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The path is empty.
    #[error("path is empty")]
    Empty,
    /// The path starts with `/`.
    #[error("path `{0}` starts with `/`")]
    LeadingSlash(String),
    /// The path ends with `/` (a folder, not a secret).
    #[error("path `{0}` ends with `/`")]
    TrailingSlash(String),
    /// The path has an empty, `.` or `..` segment.
    #[error("path `{path}` has an invalid segment `{segment}` (empty, `.` and `..` are not allowed)")]
    BadSegment {
        /// The whole path.
        path: String,
        /// The offending segment.
        segment: String,
    },
    /// The path holds a control character, which Vault rejects.
    #[error("path `{}` contains a control character", .0.escape_debug())]
    ControlCharacter(String),
}

/// Checks that `path` is a valid mount-relative secret path: non-empty, no leading or trailing
/// `/`, no empty, `.` or `..` segments, no control characters.
pub fn validate_relative_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.starts_with('/') {
        return Err(PathError::LeadingSlash(path.to_owned()));
    }
    if path.ends_with('/') {
        return Err(PathError::TrailingSlash(path.to_owned()));
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter(path.to_owned()));
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(PathError::BadSegment {
                path: path.to_owned(),
                segment: segment.to_owned(),
            });
        }
    }
    Ok(())
}

/// Normalises a mount name to the `name/` form Vault reports (`secret` -> `secret/`).
///
/// Nested mounts (`team/kv/`) are allowed; each segment must be valid.
pub fn normalize_mount(mount: &str) -> Result<String, PathError> {
    let trimmed = mount.trim_end_matches('/');
    validate_relative_path(trimmed)?;
    Ok(format!("{trimmed}/"))
}

/// Joins a normalised mount (`secret/`) and a relative path into the full origin key
/// (`secret/app/db`) used to identify a secret in sync info.
pub fn join_mount(mount: &str, path: &str) -> String {
    format!("{mount}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_odd_but_valid_names() {
        for p in ["a", "a/b", "sp ace/x", "pct%25/#hash?q", "кириллица/🔑", "...", ".hidden/x", "a+b"] {
            assert_eq!(validate_relative_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn refuses_invalid_paths() {
        assert_eq!(validate_relative_path(""), Err(PathError::Empty));
        assert!(matches!(validate_relative_path("/a"), Err(PathError::LeadingSlash(_))));
        assert!(matches!(validate_relative_path("a/"), Err(PathError::TrailingSlash(_))));
        for p in ["a//b", "a/./b", "a/../b", ".", "..", "../a"] {
            assert!(matches!(validate_relative_path(p), Err(PathError::BadSegment { .. })), "{p}");
        }
        assert!(matches!(
            validate_relative_path("a\nb"),
            Err(PathError::ControlCharacter(_))
        ));
    }

    #[test]
    fn normalizes_mounts() {
        assert_eq!(normalize_mount("secret").as_deref(), Ok("secret/"));
        assert_eq!(normalize_mount("team/kv/").as_deref(), Ok("team/kv/"));
        assert!(normalize_mount("/").is_err());
        assert!(normalize_mount("a/../b").is_err());
    }
}
