//! Code packages on a worker: fetched from a controller by sha256 once per
//! worker, verified, unpacked on disk, and shared read-only by every
//! sandbox of that code.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CodeError {
    #[error("fetching code {sha256} from the controllers: {message}")]
    Fetch { sha256: String, message: String },
    #[error("code {sha256} from the controllers has sha256 {got}: refusing it")]
    Corrupt { sha256: String, got: String },
    #[error("unpacking code {sha256} into {dir}: {message}")]
    Unpack {
        sha256: String,
        dir: String,
        message: String,
    },
}

pub type FetchFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Where code comes from (the controllers, or a map in tests).
pub trait CodeSource: Send + Sync + 'static {
    fn fetch(&self, sha256: &str) -> FetchFuture;
}

pub struct CodeCache {
    dir: PathBuf,
    source: Arc<dyn CodeSource>,
    entries: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
}

impl CodeCache {
    pub fn new(dir: PathBuf, source: Arc<dyn CodeSource>) -> std::io::Result<CodeCache> {
        std::fs::create_dir_all(&dir)?;
        // Leftovers of an unpack interrupted by a crash.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(CodeCache {
            dir,
            source,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The unpacked directory of `sha256`, fetching it on first use.
    /// Concurrent callers for the same package share one fetch.
    pub async fn ensure(&self, sha256: &str) -> Result<PathBuf, CodeError> {
        let cell = self
            .entries
            .lock()
            .expect("lock poisoned")
            .entry(sha256.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.load(sha256)).await.cloned()
    }

    async fn load(&self, sha256: &str) -> Result<PathBuf, CodeError> {
        let final_dir = self.dir.join(sha256);
        if final_dir.is_dir() {
            return Ok(final_dir);
        }
        let data = self
            .source
            .fetch(sha256)
            .await
            .map_err(|message| CodeError::Fetch {
                sha256: sha256.into(),
                message,
            })?;
        let got = hex::encode(Sha256::digest(&data));
        if got != sha256 {
            return Err(CodeError::Corrupt {
                sha256: sha256.into(),
                got,
            });
        }
        let tmp = self
            .dir
            .join(format!(".tmp-{sha256}-{}", rand::random::<u32>()));
        let sha = sha256.to_string();
        let final2 = final_dir.clone();
        tokio::task::spawn_blocking(move || unpack(&data, &tmp, &final2, &sha))
            .await
            .map_err(|e| CodeError::Unpack {
                sha256: sha256.into(),
                dir: final_dir.display().to_string(),
                message: e.to_string(),
            })??;
        Ok(final_dir)
    }
}

fn unpack(data: &[u8], tmp: &Path, final_dir: &Path, sha256: &str) -> Result<(), CodeError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |m: String| CodeError::Unpack {
        sha256: sha256.into(),
        dir: final_dir.display().to_string(),
        message: m,
    };
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(|e| err(e.to_string()))?;
    std::fs::create_dir_all(tmp).map_err(|e| err(e.to_string()))?;
    // `extract` refuses entries that escape the directory.
    zip.extract(tmp).map_err(|e| err(e.to_string()))?;
    // The sandbox runs as an unprivileged uid: everything must be readable
    // by others, directories traversable; executables keep their x bits.
    for entry in walk(tmp) {
        let Ok(meta) = std::fs::symlink_metadata(&entry) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() || mode & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(want));
    }
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| err(e.to_string()))?;
    match std::fs::rename(tmp, final_dir) {
        Ok(()) => Ok(()),
        // Another worker process sharing the directory won the race.
        Err(_) if final_dir.is_dir() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
    }
    out
}

/// A fixed set of packages, for tests.
pub struct MapSource(pub HashMap<String, Vec<u8>>);

impl CodeSource for MapSource {
    fn fetch(&self, sha256: &str) -> FetchFuture {
        let r = self
            .0
            .get(sha256)
            .cloned()
            .ok_or_else(|| format!("no package {sha256}"));
        Box::pin(async move { r })
    }
}
