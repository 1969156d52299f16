//! `vsync-state`: where each side keeps its sync info.
//!
//! Two backends behind one interface ([`StateStore`], module [`store`]):
//! - the embedded **file store** ([`FileStore`]): one directory that may hold the origin side
//!   and several destination sides. Each side is locked on its own (an OS file lock held for the
//!   life of the process), so an origin process and destination processes can share the
//!   directory while two writers of the same side cannot. Documents are written atomically
//!   (temp file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
//!   version, never a torn one;
//! - **Consul KV** ([`consul`]: a thin client; [`ConsulStore`]): content-addressed parts under
//!   each side's prefix and one root per side swapped with a CAS; one writer per side through a
//!   session lock, with a second instance waiting as a hot standby ([`lock`]).
//!
//! [`info`] stores bucketed sync info on either.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub mod consul;

/// Creates `dir` (and its parents) readable by this user only: sync info names every secret.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates (or truncates) a file readable and writable by this user only.
fn private_file(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
pub mod info;
pub mod lock;
pub mod store;

pub use lock::{Holder, LockOptions};
pub use store::{ConsulStore, RootRead, StateStore, StoreLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// A state-store failure. Every variant names the file or side concerned.
#[derive(Debug, Error)]
pub enum StateError {
    /// An I/O operation failed.
    #[error("state store {path}: {action}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds this side's lock.
    #[error("state store {path}: side `{side}` is locked by another vsync process (only one writer per side)")]
    Locked {
        /// Lock file.
        path: PathBuf,
        /// Side name.
        side: String,
    },
    /// A document is not valid JSON of the expected shape.
    #[error("state store {path}: corrupt document: {message}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A document has a format version this build does not understand.
    #[error("state store {path}: unknown sync-info format version {found} (this vsync understands {supported})")]
    UnknownFormat {
        /// File.
        path: PathBuf,
        /// Version found.
        found: u32,
        /// Version this build writes.
        supported: u32,
    },
    /// A side's root changed under every one of [`info::LOAD_ATTEMPTS`] loads in a row: its
    /// writer commits faster than this reader fetches the parts. Nothing is wrong with the
    /// stored info; transient, the next cycle loads again.
    #[error("{store}: side `{side}` was committed again during each of {attempts} loads in a row (its writer publishes faster than this process reads); retrying next cycle")]
    RootChurn {
        /// Side name.
        side: String,
        /// Store description.
        store: String,
        /// Loads attempted.
        attempts: u32,
    },
    /// A Consul request failed.
    #[error(transparent)]
    Consul(consul::ConsulError),
    /// Another writer replaced this side's root since it was read.
    #[error("{store}: side `{side}` was committed by another writer meanwhile (only one writer per side); nothing of this commit is visible")]
    Conflict {
        /// Side name.
        side: String,
        /// Store description.
        store: String,
    },
    /// This process no longer holds the side's lock (its Consul session ended or could not be
    /// renewed); another instance may be the writer now.
    #[error("{lock}: this process lost the lock of side `{side}` (its session ended or could not be renewed); nothing of this commit is visible")]
    LockLost {
        /// Side name.
        side: String,
        /// Store and lock description.
        lock: String,
    },
}

impl From<consul::ConsulError> for StateError {
    fn from(e: consul::ConsulError) -> Self {
        StateError::Consul(e)
    }
}

/// Result alias of this crate.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

pub(crate) fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// A directory of state documents.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

/// The lock on one side of a [`FileStore`]; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct SideLock {
    _file: File,
    side: String,
    path: PathBuf,
}

impl SideLock {
    /// The side this lock holds.
    pub fn side(&self) -> &str {
        &self.side
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FileStore {
    /// Opens (creating if needed) a store directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        private_dir(&dir).map_err(io(&dir, "create directory"))?;
        Ok(Self { dir })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the exclusive lock of `side` (`origin`, `destination-eu`). Fails at once with
    /// [`StateError::Locked`] if another process holds it.
    pub fn lock_side(&self, side: &str) -> Result<SideLock> {
        let path = self.dir.join(format!("{side}.lock"));
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io(&path, "open lock file"))?;
        match file.try_lock() {
            Ok(()) => Ok(SideLock {
                _file: file,
                side: side.to_owned(),
                path,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked {
                path,
                side: side.to_owned(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path, "lock")(e)),
        }
    }

    pub(crate) fn doc_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Reads a document; `None` if it was never written.
    pub fn read<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.doc_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, "read")(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                message: e.to_string(),
            })
    }

    /// Writes a document atomically. The caller must hold the side's lock.
    pub fn write<T: Serialize>(&self, lock: &SideLock, name: &str, doc: &T) -> Result<()> {
        let bytes = serde_json::to_vec(doc).map_err(|e| StateError::Corrupt {
            path: self.doc_path(name),
            message: e.to_string(),
        })?;
        self.write_raw(lock, name, &bytes)
    }

    /// Writes raw bytes as document `name` atomically: temp file, fsync, rename, fsync of the
    /// directory, so a crash leaves the old or the new version (parts are pre-serialised JSON).
    pub fn write_raw(&self, _lock: &SideLock, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_atomic(name, bytes)
    }

    /// The atomic write itself; callers outside this crate go through a side lock.
    pub(crate) fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.doc_path(name);
        let parent = path.parent().unwrap_or(&self.dir).to_owned();
        private_dir(&parent).map_err(io(&parent, "create directory"))?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
        {
            let mut f = private_file(&tmp).map_err(io(&tmp, "create temp file"))?;
            f.write_all(bytes).map_err(io(&tmp, "write temp file"))?;
            f.sync_all().map_err(io(&tmp, "fsync temp file"))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path, "rename into place"))?;
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(io(&parent, "fsync directory"))?;
        Ok(())
    }

    /// Whether document `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.doc_path(name).is_file()
    }

    /// Names of the documents in folder `folder` (without `.json`), empty if it does not exist.
    pub fn list(&self, folder: &str) -> Result<Vec<String>> {
        let dir = self.dir.join(folder);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, "list")(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir, "list"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".json")
                && !name.starts_with('.')
            {
                out.push(stem.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes document `name` (no error if missing).
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.doc_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, "remove")(e)),
        }
    }

    /// Modification time of a document, if present (used to tell whether a cycle wrote).
    pub fn modified(&self, name: &str) -> Option<std::time::SystemTime> {
        std::fs::metadata(self.doc_path(name)).and_then(|m| m.modified()).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("s")).unwrap();
        let lock = store.lock_side("destination-eu").unwrap();
        assert_eq!(store.read::<Vec<u32>>("destination-eu").unwrap(), None);
        store.write(&lock, "destination-eu", &vec![1u32, 2]).unwrap();
        assert_eq!(store.read::<Vec<u32>>("destination-eu").unwrap(), Some(vec![1, 2]));
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().contains("tmp")), "{names:?}");
    }

    #[test]
    fn one_writer_per_side_but_sides_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileStore::open(dir.path()).unwrap();
        let b = FileStore::open(dir.path()).unwrap();
        let _held = a.lock_side("origin").unwrap();
        assert!(matches!(b.lock_side("origin"), Err(StateError::Locked { .. })));
        let _other = b.lock_side("destination-eu").unwrap();
        drop(_held);
        b.lock_side("origin").unwrap();
    }

    #[test]
    fn corrupt_document_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("x.json"), b"{not json").unwrap();
        let err = store.read::<Vec<u32>>("x").unwrap_err().to_string();
        assert!(err.contains("x.json") && err.contains("corrupt"), "{err}");
    }
}
