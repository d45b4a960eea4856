//! Small filesystems the tests mount themselves (needs root).

use std::path::Path;
use std::process::Command;

/// A tmpfs of `mb` MB mounted on a fresh temporary directory, unmounted
/// (lazily, so a still-open file cannot keep it) when dropped, also when
/// the test fails.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts it (`source` names the mount in `mount`'s table); panics
    /// if `mount` fails.
    pub fn mount(mb: u64, source: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), source])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(st.success(), "mounting a tmpfs on {:?}", dir.path());
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
