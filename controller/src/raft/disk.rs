//! Free space on the data directory's filesystem, checked before the
//! store is asked to grow. A write RocksDB cannot complete for lack of
//! space puts it in an error state in which every later write (the Raft
//! log's too) fails, and openraft's core stops on the first failed
//! append: so big writes (code packages) are refused while there is still
//! room, and `min_free_disk_mb` is kept for the small entries that shrink
//! the data (deletes), so that a full disk can be emptied through the API.

use std::path::Path;

use nubo_proto::Reason;

use crate::error::ApiError;
use crate::registry::model::Command;

/// Bytes available to this (unprivileged) process on the filesystem of
/// `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to memory
    // large enough for a statvfs, which the call fills on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // Both are u64 on Linux x86_64 and aarch64.
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether `cmd` only removes data (or records progress that lets data go):
/// these are accepted inside the reserve.
pub fn shrinks(cmd: &Command) -> bool {
    match cmd {
        Command::Idempotent { cmd, .. } => shrinks(cmd),
        Command::Batch(cmds) => cmds.iter().all(shrinks),
        Command::DeleteFunction { .. }
        | Command::DeleteVersion { .. }
        | Command::DeleteAlias { .. }
        | Command::RevokeToken { .. }
        | Command::DlqPurge { .. }
        | Command::EventStep { .. }
        | Command::Noop => true,
        _ => false,
    }
}

const MB: u64 = 1024 * 1024;

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / MB as f64)
}

/// Refuses growing the store by `bytes` unless `reserve` bytes stay free
/// on the filesystem of `dir` afterwards. `what` names the data
/// ("the code package").
pub fn ensure_room(dir: &Path, what: &str, bytes: u64, reserve: u64) -> Result<(), ApiError> {
    let free = free_bytes(dir)
        .map_err(|e| ApiError::Internal(format!("reading free space of {}: {e}", dir.display())))?;
    let need = bytes.saturating_add(reserve);
    if free >= need {
        return Ok(());
    }
    Err(ApiError::throttled(format!(
        "not enough disk space for {what} on this controller: need {} MB ({} MB of data and the {} MB reserve kept free for deletes, min_free_disk_mb), {} MB free in {}",
        mb(need),
        mb(bytes),
        mb(reserve),
        mb(free),
        dir.display()
    ))
    .with_reason(Reason::DiskFull))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_the_reserve_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        ensure_room(dir.path(), "x", 0, 0).unwrap();
        let e = ensure_room(dir.path(), "the code package", free, free).unwrap_err();
        assert_eq!(e.reason(), Some(Reason::DiskFull));
        let m = e.to_string();
        assert!(m.contains("need ") && m.contains(" MB free in "), "{m}");
        assert!(free_bytes(Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn deletes_shrink_creates_do_not() {
        let del = Command::Idempotent {
            id: "a".into(),
            cmd: Box::new(Command::DeleteFunction { name: "f".into() }),
        };
        assert!(shrinks(&del));
        assert!(!shrinks(&Command::CreateToken {
            token: crate::registry::model::Token {
                id: "t".into(),
                name: "n".into(),
                scope: crate::registry::model::Scope::Admin,
                hash: "h".into(),
                created_at_ms: 0,
            }
        }));
    }
}
