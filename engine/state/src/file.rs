//! The embedded file store: one directory holding the documents of one or more sides, and its
//! [`StoreBackend`] implementation (layout in [`crate::store`]).
//!
//! Documents are written atomically (temp file, fsync, rename, fsync of the directory) and each
//! side has an OS lock held for the life of the process, so two writers of one side cannot
//! exist and a crash never leaves a torn document.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::lock::{LockOptions, Lost, OnWait};
use crate::store::{BackendLock, BoxFuture, RootRead, StoreBackend, StoreLock, lock_as};
use crate::{Result, StateError, io};

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

    fn doc_path(&self, name: &str) -> PathBuf {
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
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
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



impl BackendLock for SideLock {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn side(&self) -> &str {
        &self.side
    }

    // An OS lock is held until the process lets it go: it is never lost.
    fn is_held(&self) -> bool {
        true
    }

    fn lost(&self) -> Lost {
        Box::pin(std::future::pending())
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn regain<'a>(&'a mut self, _on_wait: OnWait<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, ()> {
        drop(self);
        Box::pin(async {})
    }
}

/// The root's version: its modification time in nanoseconds (1 when the clock says nothing).
fn file_version(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(1, |d| d.as_nanos() as u64)
}

/// File-store name of a part.
fn part_name(side: &str, hash: &str) -> String {
    format!("{side}.buckets/{hash}")
}

/// Reads a file; `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, "read")(e)),
    }
}

impl FileStore {
    fn read_root_now(&self, side: &str) -> Result<Option<RootRead>> {
        let path = self.doc_path(side);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, "open")(e)),
        };
        // Version and bytes from the same open file: a rename in between cannot mix them.
        let meta = file.metadata().map_err(io(&path, "stat"))?;
        let bytes = std::io::read_to_string(file).map_err(io(&path, "read"))?;
        Ok(Some(RootRead {
            bytes: bytes.into_bytes(),
            version: file_version(&meta),
        }))
    }

    fn swap_root_now(&self, lock: &StoreLock, bytes: &[u8], expected: Option<u64>) -> Result<()> {
        let side = lock.side();
        let held: &SideLock = lock_as(lock)?;
        // The version is compared under the OS lock: nobody else writes this side meanwhile.
        let now = std::fs::metadata(self.doc_path(side)).ok().map(|m| file_version(&m));
        if now != expected {
            return Err(StateError::Conflict {
                side: side.to_owned(),
                store: self.describe(),
            });
        }
        self.write_raw(held, side, bytes)
    }
}

impl StoreBackend for FileStore {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn describe(&self) -> String {
        format!("file store {}", self.dir.display())
    }

    fn lock_side<'a>(&'a self, side: &'a str, _options: &'a LockOptions, _on_wait: OnWait<'a>) -> BoxFuture<'a, Result<StoreLock>> {
        Box::pin(async move { FileStore::lock_side(self, side).map(StoreLock::new) })
    }

    // The OS lock is only visible on its machine: nobody to name.
    fn lock_holder<'a>(&'a self, _side: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async { Ok(None) })
    }

    fn read_doc<'a>(&'a self, side: &'a str, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { read_optional(&self.doc_path(&format!("{side}.{name}"))) })
    }

    fn write_doc<'a>(&'a self, side: &'a str, name: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.write_atomic(&format!("{side}.{name}"), bytes) })
    }

    fn delete_doc<'a>(&'a self, side: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.remove(&format!("{side}.{name}")) })
    }

    fn write_locked_doc<'a>(&'a self, lock: &'a StoreLock, name: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let held: &SideLock = lock_as(lock)?;
            self.write_raw(held, &format!("{}.{name}", lock.side()), bytes)
        })
    }

    fn read_root<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Option<RootRead>>> {
        Box::pin(async move { self.read_root_now(side) })
    }

    fn read_part<'a>(&'a self, side: &'a str, hash: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { read_optional(&self.doc_path(&part_name(side, hash))) })
    }

    fn list_parts<'a>(&'a self, side: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move { self.list(&format!("{side}.buckets")) })
    }

    fn write_new_parts<'a>(&'a self, lock: &'a StoreLock, parts: Vec<(String, Vec<u8>)>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let held: &SideLock = lock_as(lock)?;
            for (hash, bytes) in parts {
                self.write_raw(held, &part_name(lock.side(), &hash), &bytes)?;
            }
            Ok(())
        })
    }

    fn remove_parts<'a>(&'a self, lock: &'a StoreLock, hashes: Vec<String>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            lock_as::<SideLock>(lock)?;
            for h in hashes {
                self.remove(&part_name(lock.side(), &h))?;
            }
            Ok(())
        })
    }

    fn swap_root<'a>(&'a self, lock: &'a StoreLock, bytes: &'a [u8], expected: Option<u64>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.swap_root_now(lock, bytes, expected) })
    }

    // No change notification on a plain directory: a short poll of the root's version.
    fn watch_root<'a>(&'a self, side: &'a str, cursor: u64, wait: Duration) -> BoxFuture<'a, Result<(u64, u64)>> {
        Box::pin(async move {
            let path = self.doc_path(side);
            let deadline = Instant::now() + wait;
            loop {
                let now = std::fs::metadata(&path).map(|m| file_version(&m)).unwrap_or(0);
                if cursor == 0 || now != cursor || Instant::now() >= deadline {
                    return Ok((now, now.max(1)));
                }
                tokio::time::sleep(Duration::from_millis(100).min(wait)).await;
            }
        })
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
