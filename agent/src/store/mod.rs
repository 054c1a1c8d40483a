//! The state store: one sled database under the state directory
//! (`--state`, `MCPWARDEN_STATE_DIR`, or /var/lib/mcpwarden), with a tree
//! per kind of record: pins and executables ([`crate::registry`]),
//! identities ([`crate::identity`]), trust ([`crate::trust`]) and the
//! hash-chained audit log ([`audit`]).
//!
//! sled allows one process at a time. The daemon keeps the store open for
//! its whole life ([`Db::open_resident`]) and every part of it shares that
//! handle; without a daemon, every process opens the store for the moment
//! it needs it, and an open waits (up to [`OPEN_WAIT`]) for another process
//! to finish its update.
pub mod audit;
pub mod cli;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Serialize, de::DeserializeOwned};

/// The default state directory.
pub const DEFAULT_DIR: &str = "/var/lib/mcpwarden";

/// How long an open waits for another process's hold on the store.
pub const OPEN_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {dir}: {message}")]
    Open { dir: String, message: String },
    #[error("store {dir}: {message}")]
    Io { dir: String, message: String },
}

/// The state directory: `--state`, else `MCPWARDEN_STATE_DIR`, else
/// /var/lib/mcpwarden.
#[must_use]
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MCPWARDEN_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// The open database (clones share it).
#[derive(Clone)]
pub struct Db {
    dir: PathBuf,
    db: sled::Db,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens the store in `dir` and keeps it open for the life of this
    /// process (the daemon's): later opens of the same directory share it
    /// instead of waiting for its lock.
    pub fn open_resident(dir: &Path) -> Result<Self, StoreError> {
        let db = Self::open(dir)?;
        *resident() = Some((canonical(dir), db.db.clone()));
        Ok(db)
    }

    /// Opens (creating it 0700) the store in `dir`, waiting for another
    /// process's hold; the resident store when it is this one.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        if let Some((held, db)) = resident().as_ref()
            && *held == canonical(dir)
        {
            return Ok(Self {
                dir: dir.to_path_buf(),
                db: db.clone(),
            });
        }
        let fail = |message: String| StoreError::Open {
            dir: dir.display().to_string(),
            message,
        };
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail(e.to_string()))?;
        }
        let started = Instant::now();
        let db = loop {
            match sled::Config::new().path(dir.join("db")).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("lock") =>
                {
                    if started.elapsed() > OPEN_WAIT {
                        return Err(fail(format!(
                            "another process has held it for {} s ({e}); if it is the \
                             mcpwarden daemon, admin commands without --state go through it",
                            OPEN_WAIT.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            db,
        })
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tree `name`.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(|e| self.io(&e))
    }

    /// An I/O or decoding error of this store.
    pub fn io(&self, e: &impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            dir: self.dir.display().to_string(),
            message: e.to_string(),
        }
    }

    /// A number never given before in this store (increasing).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.db.generate_id().map_err(|e| self.io(&e))
    }

    /// Writes everything to disk: what was acknowledged survives a crash.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.io(&e))
    }

    /// Reads the JSON record at `key` of `tree`.
    pub fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<T>, StoreError> {
        let Some(raw) = tree.get(key).map_err(|e| self.io(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| self.io(&format!("a damaged record: {e}")))
    }

    /// Writes `value` as JSON at `key` of `tree`.
    pub fn put<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<(), StoreError> {
        let raw = serde_json::to_vec(value).map_err(|e| self.io(&e))?;
        tree.insert(key.as_ref(), raw).map_err(|e| self.io(&e))?;
        Ok(())
    }
}

type Resident = Option<(PathBuf, sled::Db)>;

/// The store this process keeps open, if any.
fn resident() -> std::sync::MutexGuard<'static, Resident> {
    static RESIDENT: std::sync::Mutex<Resident> = std::sync::Mutex::new(None);
    RESIDENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether two paths name the same directory (links and `.` resolved).
#[must_use]
pub fn same_dir(a: &Path, b: &Path) -> bool {
    canonical(a) == canonical(b)
}

fn canonical(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Lower-case hex of SHA-256 over `bytes`.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resident_store_is_shared_not_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = Db::open_resident(dir.path()).expect("resident");
        let tree = held.tree("t").expect("tree");
        held.put(&tree, "k", &1u32).expect("put");
        // sled's lock would make a second open wait OPEN_WAIT and fail;
        // the resident handle is shared at once, with its data.
        let started = Instant::now();
        let again = Db::open(&dir.path().join(".")).expect("shared");
        assert!(started.elapsed() < OPEN_WAIT);
        assert_eq!(
            again
                .get::<u32>(&again.tree("t").expect("tree"), "k")
                .expect("get"),
            Some(1)
        );
    }
}
