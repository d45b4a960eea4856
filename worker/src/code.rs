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
    /// The package itself cannot be unpacked (a bad archive, a name the
    /// filesystem refuses): it fails the same way every time, on every
    /// worker, so it is not retried.
    #[error("code {sha256} can never be unpacked: {message}")]
    Unpackable { sha256: String, message: String },
}

impl CodeError {
    /// Whether trying again (here or on another worker) cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, CodeError::Unpackable { .. })
    }
}

/// Whether an I/O error while unpacking a verified package comes from the
/// package (it will recur) rather than from this host (disk full, too many
/// open files, ...).
fn from_package(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENAMETOOLONG) | Some(libc::EILSEQ) | Some(libc::EINVAL)
    ) || matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
    )
}

/// A temporary directory removed when dropped, on every path out of an
/// unpack (errors and panics included) unless it was renamed into place.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!("removing {}: {e}", self.0.display())
            }
            _ => {}
        }
    }
}

pub type FetchFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;

/// Where code comes from (the controllers, or a map in tests).
pub trait CodeSource: Send + Sync + 'static {
    fn fetch(&self, sha256: &str) -> FetchFuture;
}

/// One package: its directory once unpacked, or its permanent error.
type Entry = OnceCell<Result<PathBuf, CodeError>>;

pub struct CodeCache {
    dir: PathBuf,
    source: Arc<dyn CodeSource>,
    /// Unpacked directories, and packages known never to unpack (their
    /// error is kept: no fetch and no extraction again for them).
    entries: Mutex<HashMap<String, Arc<Entry>>>,
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
    /// Concurrent callers for the same package share one fetch; a
    /// permanent failure is remembered, a transient one tried again.
    pub async fn ensure(&self, sha256: &str) -> Result<PathBuf, CodeError> {
        let cell = self
            .entries
            .lock()
            .expect("lock poisoned")
            .entry(sha256.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            match self.load(sha256).await {
                Err(e) if e.is_permanent() => Ok(Err(e)),
                r => r.map(Ok),
            }
        })
        .await?
        .clone()
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
    let tmp = TmpDir(tmp.to_path_buf());
    let tmp = tmp.0.as_path();
    let err = |m: String| CodeError::Unpack {
        sha256: sha256.into(),
        dir: final_dir.display().to_string(),
        message: m,
    };
    let bad = |m: String| CodeError::Unpackable {
        sha256: sha256.into(),
        message: m,
    };
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(tmp).map_err(|e| err(e.to_string()))?;
    // `extract` refuses entries that escape the directory.
    zip.extract(tmp).map_err(|e| match e {
        zip::result::ZipError::Io(io) if !from_package(&io) => err(io.to_string()),
        e => bad(e.to_string()),
    })?;
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
        // Another worker process sharing the directory won the race (the
        // guard removes ours).
        Err(_) if final_dir.is_dir() => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source that counts its fetches.
    struct Counting(MapSource, AtomicUsize);

    impl CodeSource for Counting {
        fn fetch(&self, sha256: &str) -> FetchFuture {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.fetch(sha256)
        }
    }

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect()
    }

    /// A package with a 300-byte path component (crafted directly: the
    /// worker must not rely on the controller's deploy check): unpacking
    /// fails as a permanent error, no temporary directory is left, and
    /// later calls get the same error without fetching or unpacking again.
    /// A good package beside it still unpacks.
    #[tokio::test]
    async fn an_unpackable_package_leaves_nothing_and_fails_permanently() {
        let long = format!("{}/handler.py", "a".repeat(300));
        let bad = zip_of(&[
            ("ok.py", b"x = 1\n".as_slice()),
            (&long, vec![b'z'; 1 << 20].as_slice()),
        ]);
        let good = zip_of(&[("app.py", b"def h(e, c):\n    return 1\n".as_slice())]);
        let sha = |d: &[u8]| hex::encode(Sha256::digest(d));
        let (bad_sha, good_sha) = (sha(&bad), sha(&good));
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(Counting(
            MapSource(HashMap::from([
                (bad_sha.clone(), bad),
                (good_sha.clone(), good),
            ])),
            AtomicUsize::new(0),
        ));
        let cache = CodeCache::new(dir.path().to_path_buf(), src.clone()).unwrap();
        for _ in 0..3 {
            let e = cache.ensure(&bad_sha).await.unwrap_err();
            assert!(e.is_permanent(), "{e}");
            assert!(e.to_string().contains("can never be unpacked"), "{e}");
            assert_eq!(leftovers(dir.path()), Vec::<String>::new());
            assert!(!dir.path().join(&bad_sha).exists());
        }
        assert_eq!(
            src.1.load(Ordering::Relaxed),
            1,
            "fetched once, not per call"
        );
        let ok = cache.ensure(&good_sha).await.unwrap();
        assert!(ok.join("app.py").is_file());
        assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    }

    /// A transient failure (the package is not there yet) is not kept:
    /// the next call fetches again.
    #[tokio::test]
    async fn a_transient_failure_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(Counting(MapSource(HashMap::new()), AtomicUsize::new(0)));
        let cache = CodeCache::new(dir.path().to_path_buf(), src.clone()).unwrap();
        for _ in 0..2 {
            let e = cache.ensure("00").await.unwrap_err();
            assert!(!e.is_permanent(), "{e}");
        }
        assert_eq!(src.1.load(Ordering::Relaxed), 2);
    }
}
