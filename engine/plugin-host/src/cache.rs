//! The on-disk cache of compiled components, and why it can be trusted.
//!
//! A cache entry is native code: wasmtime's `deserialize` maps it executable and runs it
//! outside the sandbox, with every token the process holds in reach. So an entry is only
//! handed to `deserialize` when this user wrote it:
//!
//! - the directory is created `0700`; a directory that is not this user's, or that group or
//!   others may write, is not used at all (the host warns and compiles without a cache);
//! - an entry (and the key) must be a regular file owned by this user, not a symbolic link, and
//!   not writable by group or others (the key not readable by them either);
//! - each entry carries an HMAC-SHA-256 of its name and contents under a per-user random key,
//!   kept in the `0600` file `hmac-key` in the directory (made on first use), checked before
//!   the bytes go anywhere near wasmtime;
//! - entries and the key are written to a `0600` temporary file and renamed into place, so a
//!   reader never sees half an entry (a torn one fails its HMAC).
//!
//! An entry failing any check is ignored; the host compiles the component and rewrites it.

#[cfg(not(unix))]
use std::path::Path;
use std::path::PathBuf;

use thiserror::Error;

/// Why the cache, or one entry of it, is not used. Every message names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub(crate) enum CacheError {
    /// A file system operation failed.
    #[error("compiled-component cache {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Owned by another user.
    #[error("compiled-component cache {path}: owned by uid {owner}, not by this user (uid {uid})")]
    NotOwned {
        /// File or directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective user.
        uid: u32,
    },
    /// Permissions that let other users change (or, for the key, read) it.
    #[error("compiled-component cache {path}: mode {mode:04o} lets other users {what} it")]
    Exposed {
        /// File or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "write" or "read or write".
        what: &'static str,
    },
    /// Not what the cache writes (a link, a directory, a bad header, a failed HMAC, ...).
    #[error("compiled-component cache {path}: {reason}")]
    Untrusted {
        /// File or directory.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// This platform has no owners and modes to check.
    #[cfg_attr(unix, allow(dead_code))]
    #[error("compiled-component cache {path}: not supported on this platform")]
    Unsupported {
        /// The directory.
        path: PathBuf,
    },
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// An authenticated artifact (the bytes `serialize` produced).
    Hit(Vec<u8>),
    /// No entry.
    Miss,
    /// An entry that failed a check.
    Rejected(CacheError),
}

/// An open cache directory that passed its checks, with its key.
#[derive(Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
    #[cfg_attr(not(unix), allow(dead_code))]
    key: [u8; KEY_LEN],
    #[cfg_attr(not(unix), allow(dead_code))]
    uid: u32,
}

const KEY_FILE: &str = "hmac-key";
const KEY_LEN: usize = 32;
/// Start of every entry: format and version, so an older raw `.cwasm` is never mistaken for one.
const MAGIC: &[u8; 8] = b"VSYNCCW1";
const TAG_LEN: usize = 32;
/// Entries are a few hundred KiB; anything far larger is not ours and is not read into memory.
const MAX_ENTRY: u64 = 256 << 20;

impl Cache {
    /// The file of entry `name`.
    pub(crate) fn entry_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.cwasm"))
    }
}

#[cfg(not(unix))]
impl Cache {
    /// Without Unix owners and modes the cache cannot be checked: not used.
    pub(crate) fn open(dir: &Path) -> Result<Cache, CacheError> {
        Err(CacheError::Unsupported { path: dir.to_owned() })
    }

    pub(crate) fn get(&self, _name: &str) -> Lookup {
        Lookup::Miss
    }

    pub(crate) fn put(&self, _name: &str, _artifact: &[u8]) -> Result<(), CacheError> {
        Err(CacheError::Unsupported { path: self.dir.clone() })
    }
}

#[cfg(unix)]
mod unix {
    use std::fs::{DirBuilder, File, OpenOptions};
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    use hmac::{Hmac, Mac as _};
    use sha2::Sha256;
    use tracing::warn;

    use super::{Cache, CacheError, KEY_FILE, KEY_LEN, Lookup, MAGIC, MAX_ENTRY, TAG_LEN};

    /// Mode bits that must be clear: others may not write entries and directories...
    const NO_FOREIGN_WRITE: u32 = 0o022;
    /// ... nor read or write the key.
    const PRIVATE: u32 = 0o077;

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
        #[allow(unsafe_code)]
        unsafe {
            libc::geteuid()
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
        move |source| CacheError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Owned by `uid`, with none of `forbidden` set.
    fn check_owner_mode(path: &Path, meta: &std::fs::Metadata, uid: u32, forbidden: u32) -> Result<(), CacheError> {
        if meta.uid() != uid {
            return Err(CacheError::NotOwned {
                path: path.to_owned(),
                owner: meta.uid(),
                uid,
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & forbidden != 0 {
            return Err(CacheError::Exposed {
                path: path.to_owned(),
                mode,
                what: if forbidden == PRIVATE { "read or write" } else { "write" },
            });
        }
        Ok(())
    }

    /// Reads a file the cache wrote: not followed if a link, checked on the open handle (so it
    /// cannot be swapped between check and read), at most `max` bytes. `None`: no such file.
    fn read_checked(path: &Path, uid: u32, forbidden: u32, max: u64) -> Result<Option<Vec<u8>>, CacheError> {
        // O_NONBLOCK: a FIFO planted under an entry's name must not hang the host.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(CacheError::Untrusted {
                    path: path.to_owned(),
                    reason: "a symbolic link",
                });
            }
            Err(e) => return Err(io(path)(e)),
        };
        let meta = file.metadata().map_err(io(path))?;
        if !meta.is_file() {
            return Err(CacheError::Untrusted {
                path: path.to_owned(),
                reason: "not a regular file",
            });
        }
        check_owner_mode(path, &meta, uid, forbidden)?;
        if meta.len() > max {
            return Err(CacheError::Untrusted {
                path: path.to_owned(),
                reason: "larger than any entry the cache writes",
            });
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        std::io::Read::by_ref(&mut file).take(max).read_to_end(&mut bytes).map_err(io(path))?;
        Ok(Some(bytes))
    }

    impl Cache {
        /// Creates (`0700`) or checks the directory and loads or makes its key.
        pub(crate) fn open(dir: &Path) -> Result<Cache, CacheError> {
            let uid = euid();
            // Only directories created here get the mode; an existing one is checked instead.
            DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
            // Followed if a link: what matters is the directory the entries are read from.
            let meta = std::fs::metadata(dir).map_err(io(dir))?;
            if !meta.is_dir() {
                return Err(CacheError::Untrusted {
                    path: dir.to_owned(),
                    reason: "not a directory",
                });
            }
            check_owner_mode(dir, &meta, uid, NO_FOREIGN_WRITE)?;
            let mut cache = Cache {
                dir: dir.to_owned(),
                key: [0; KEY_LEN],
                uid,
            };
            cache.key = cache.load_key()?;
            Ok(cache)
        }

        /// The key, made on first use. A key file that fails its checks is replaced (the
        /// directory is this user's alone, so that is an accident, not an attack; the entries
        /// it signed then fail their HMAC and are rewritten).
        fn load_key(&self) -> Result<[u8; KEY_LEN], CacheError> {
            let path = self.dir.join(KEY_FILE);
            let existing = read_checked(&path, self.uid, PRIVATE, KEY_LEN as u64 + 1);
            let replace = match existing {
                Ok(Some(bytes)) => match <[u8; KEY_LEN]>::try_from(bytes.as_slice()) {
                    Ok(key) => return Ok(key),
                    Err(_) => {
                        warn!(path = %path.display(), "replacing a compiled-component cache key of the wrong size");
                        true
                    }
                },
                Ok(None) => false,
                Err(e @ CacheError::Io { .. }) => return Err(e),
                Err(e) => {
                    warn!(error = %e, "replacing the compiled-component cache key");
                    true
                }
            };
            let mut key = [0; KEY_LEN];
            File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut key))
                .map_err(io(Path::new("/dev/urandom")))?;
            match self.write_private(&path, &[&key], replace) {
                Ok(()) => Ok(key),
                // Another process made one first: use theirs (same checks).
                Err(CacheError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                    match read_checked(&path, self.uid, PRIVATE, KEY_LEN as u64 + 1)? {
                        Some(bytes) => <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| CacheError::Untrusted {
                            path: path.clone(),
                            reason: "a key of the wrong size",
                        }),
                        None => Err(CacheError::Untrusted {
                            path: path.clone(),
                            reason: "the key vanished while being made",
                        }),
                    }
                }
                Err(e) => Err(e),
            }
        }

        /// The entry's tag: its name is covered too, so one component's genuine entry cannot
        /// be passed off as another's.
        fn mac(&self, name: &str, artifact: &[u8]) -> Result<Hmac<Sha256>, CacheError> {
            let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.key).map_err(|_| CacheError::Untrusted {
                path: self.dir.join(KEY_FILE),
                reason: "a key HMAC refuses",
            })?;
            mac.update(b"vsync-component-cache-v1\0");
            mac.update(&(name.len() as u64).to_le_bytes());
            mac.update(name.as_bytes());
            mac.update(artifact);
            Ok(mac)
        }

        /// Looks entry `name` up; a hit has passed every check.
        pub(crate) fn get(&self, name: &str) -> Lookup {
            let path = self.entry_path(name);
            let mut bytes = match read_checked(&path, self.uid, NO_FOREIGN_WRITE, MAX_ENTRY) {
                Ok(Some(b)) => b,
                Ok(None) => return Lookup::Miss,
                Err(e) => return Lookup::Rejected(e),
            };
            let untrusted = |reason| {
                Lookup::Rejected(CacheError::Untrusted {
                    path: path.clone(),
                    reason,
                })
            };
            if bytes.len() < MAGIC.len() + TAG_LEN || !bytes.starts_with(MAGIC) {
                return untrusted("not an entry this cache wrote (no header)");
            }
            let (tag, artifact) = bytes[MAGIC.len()..].split_at(TAG_LEN);
            match self.mac(name, artifact).map(|mac| mac.verify_slice(tag)) {
                // Constant-time comparison.
                Ok(Ok(())) => {}
                Ok(Err(_)) => return untrusted("failed its HMAC (modified, or written under another key or name)"),
                Err(e) => return Lookup::Rejected(e),
            }
            bytes.drain(..MAGIC.len() + TAG_LEN);
            Lookup::Hit(bytes)
        }

        /// Writes entry `name` (replacing any), atomically and `0600`.
        pub(crate) fn put(&self, name: &str, artifact: &[u8]) -> Result<(), CacheError> {
            let tag = self.mac(name, artifact)?.finalize().into_bytes();
            self.write_private(&self.entry_path(name), &[MAGIC, &tag, artifact], true)
        }

        /// Writes `parts` to a fresh `0600` temporary file beside `path`, then moves it into
        /// place: renamed over any old file when `replace`, else linked, which fails with
        /// `AlreadyExists` rather than replace a file another process just made.
        fn write_private(&self, path: &Path, parts: &[&[u8]], replace: bool) -> Result<(), CacheError> {
            // Unique per writer (process and call).
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = self.dir.join(format!(".{stem}.{}.{seq}.tmp", std::process::id()));
            let written = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .and_then(|mut f| parts.iter().try_for_each(|p| f.write_all(p)))
                .and_then(|()| {
                    if replace {
                        std::fs::rename(&tmp, path)
                    } else {
                        std::fs::hard_link(&tmp, path)
                    }
                });
            // Renamed: gone already. Linked or failed: the temporary name must not linger.
            if !replace || written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written.map_err(io(path))
        }
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        use std::os::unix::fs::PermissionsExt as _;

        use super::*;

        fn mode(p: &Path) -> u32 {
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        }

        fn chmod(p: &Path, m: u32) {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        }

        fn hit(l: Lookup) -> Vec<u8> {
            match l {
                Lookup::Hit(b) => b,
                other => panic!("expected a hit, got {other:?}"),
            }
        }

        fn rejected(l: Lookup) -> String {
            match l {
                Lookup::Rejected(e) => e.to_string(),
                other => panic!("expected a rejection, got {other:?}"),
            }
        }

        #[test]
        fn round_trip_and_private_files() {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("a/b/components");
            let cache = Cache::open(&dir).unwrap();
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
            assert!(matches!(cache.get("x"), Lookup::Miss));
            cache.put("x", b"artifact").unwrap();
            assert_eq!(mode(&cache.entry_path("x")), 0o600);
            assert_eq!(hit(cache.get("x")), b"artifact");
            // Same key on reopening; nothing but the key and the entry in the directory.
            assert_eq!(hit(Cache::open(&dir).unwrap().get("x")), b"artifact");
            let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            assert_eq!(names, ["hmac-key", "x.cwasm"]);
        }

        #[test]
        fn entries_failing_a_check_are_rejected() {
            let root = tempfile::tempdir().unwrap();
            let cache = Cache::open(root.path()).unwrap();
            cache.put("x", b"artifact").unwrap();
            let path = cache.entry_path("x");
            let good = std::fs::read(&path).unwrap();
            // Any byte changed.
            for i in [0, MAGIC.len(), MAGIC.len() + TAG_LEN, good.len() - 1] {
                let mut bad = good.clone();
                bad[i] ^= 1;
                std::fs::write(&path, &bad).unwrap();
                assert!(!matches!(cache.get("x"), Lookup::Hit(_)), "byte {i} flipped");
            }
            // Another name's genuine entry.
            cache.put("y", b"other").unwrap();
            std::fs::copy(cache.entry_path("y"), &path).unwrap();
            assert!(rejected(cache.get("x")).contains("HMAC"));
            // Another key's genuine entry.
            let other = tempfile::tempdir().unwrap();
            let foreign = Cache::open(other.path()).unwrap();
            foreign.put("x", b"artifact").unwrap();
            std::fs::copy(foreign.entry_path("x"), &path).unwrap();
            assert!(rejected(cache.get("x")).contains("HMAC"));
            // A raw artifact with no header, a truncated one.
            std::fs::write(&path, b"artifact").unwrap();
            assert!(rejected(cache.get("x")).contains("no header"));
            std::fs::write(&path, &good[..good.len() - 1]).unwrap();
            assert!(rejected(cache.get("x")).contains("HMAC"));
            // A genuine entry others may write.
            std::fs::write(&path, &good).unwrap();
            assert_eq!(hit(cache.get("x")), b"artifact");
            for m in [0o666, 0o620, 0o602] {
                chmod(&path, m);
                assert!(rejected(cache.get("x")).contains("lets other users write"), "{m:o}");
            }
            chmod(&path, 0o644);
            assert_eq!(hit(cache.get("x")), b"artifact", "readable by others is fine");
            // A link to a genuine entry, a directory.
            std::fs::remove_file(&path).unwrap();
            let elsewhere = other.path().join("good");
            std::fs::write(&elsewhere, &good).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
            assert!(rejected(cache.get("x")).contains("symbolic link"));
            std::fs::remove_file(&path).unwrap();
            std::fs::create_dir(&path).unwrap();
            assert!(rejected(cache.get("x")).contains("not a regular file"));
            // put cannot replace a directory, and says so.
            assert!(cache.put("x", b"artifact").is_err());
        }

        #[test]
        fn a_directory_others_may_write_is_not_used() {
            let root = tempfile::tempdir().unwrap();
            Cache::open(root.path()).unwrap().put("x", b"artifact").unwrap();
            for m in [0o777, 0o770, 0o702] {
                chmod(root.path(), m);
                let err = Cache::open(root.path()).unwrap_err().to_string();
                assert!(err.contains("lets other users write") && err.contains(&root.path().display().to_string()), "{m:o}: {err}");
            }
            chmod(root.path(), 0o755);
            assert_eq!(hit(Cache::open(root.path()).unwrap().get("x")), b"artifact");
            // A file where the directory should be.
            let file = root.path().join("file");
            std::fs::write(&file, b"").unwrap();
            assert!(Cache::open(&file).is_err());
        }

        #[test]
        fn files_of_another_user_are_not_used() {
            // Needs the right to give a file away: only root has it.
            if euid() != 0 {
                eprintln!("skipped: not running as root, cannot chown");
                return;
            }
            let nobody = 65534;
            let root = tempfile::tempdir().unwrap();
            let cache = Cache::open(root.path()).unwrap();
            cache.put("x", b"artifact").unwrap();
            std::os::unix::fs::chown(cache.entry_path("x"), Some(nobody), None).unwrap();
            assert!(rejected(cache.get("x")).contains("owned by uid 65534"));
            std::os::unix::fs::chown(root.path(), Some(nobody), None).unwrap();
            let err = Cache::open(root.path()).unwrap_err().to_string();
            assert!(err.contains("owned by uid 65534, not by this user (uid 0)"), "{err}");
        }

        #[test]
        fn a_key_others_may_read_is_replaced() {
            let root = tempfile::tempdir().unwrap();
            let cache = Cache::open(root.path()).unwrap();
            cache.put("x", b"artifact").unwrap();
            let key = root.path().join(KEY_FILE);
            chmod(&key, 0o644);
            let reopened = Cache::open(root.path()).unwrap();
            assert_eq!(mode(&key), 0o600);
            assert_ne!(reopened.key, cache.key, "a new key");
            assert!(rejected(reopened.get("x")).contains("HMAC"), "entries under the exposed key are not trusted");
            // A key of the wrong size is replaced too.
            std::fs::write(&key, b"short").unwrap();
            chmod(&key, 0o600);
            assert_ne!(Cache::open(root.path()).unwrap().key, reopened.key);
        }
    }
}
