//! Deterministic zipping of a function's directory: the same tree always
//! gives the same bytes (and so the same code sha256), whatever the file
//! timestamps or the order the file system lists entries in.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

/// A regular file larger than this needs zip64 headers.
const ZIP64_THRESHOLD: u64 = 0xFFFF_FFFF;

enum Kind {
    Dir,
    File { mode: u32, size: u64 },
    Symlink { target: String },
}

struct Entry {
    /// Relative path with `/` separators; directories end with `/`.
    name: String,
    path: PathBuf,
    kind: Kind,
}

/// Zips the contents of `dir` (not `dir` itself) in memory.
pub fn zip_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let mut entries = Vec::new();
    walk(dir, "", &mut entries)?;
    // Sort by name bytes so the archive does not depend on readdir order.
    entries.sort_by(|a, b| a.name.cmp(&b.name));

    // 1980-01-01 00:00:00, the earliest zip time: no build-time leaks in.
    let base = SimpleFileOptions::default().last_modified_time(DateTime::default());
    let mut zw = ZipWriter::new(Cursor::new(Vec::new()));
    for e in &entries {
        match &e.kind {
            Kind::Dir => zw
                .add_directory(e.name.clone(), base.unix_permissions(0o755))
                .with_context(|| format!("zipping {}", e.path.display()))?,
            Kind::Symlink { target } => zw
                .add_symlink(e.name.clone(), target.clone(), base.unix_permissions(0o777))
                .with_context(|| format!("zipping {}", e.path.display()))?,
            Kind::File { mode, size } => {
                let opts = base
                    .compression_method(CompressionMethod::Deflated)
                    .unix_permissions(*mode)
                    .large_file(*size >= ZIP64_THRESHOLD);
                zw.start_file(e.name.clone(), opts)
                    .with_context(|| format!("zipping {}", e.path.display()))?;
                let mut f = std::fs::File::open(&e.path)
                    .with_context(|| format!("opening {}", e.path.display()))?;
                std::io::copy(&mut f, &mut zw)
                    .with_context(|| format!("reading {}", e.path.display()))?;
            }
        }
    }
    let out = zw.finish().context("finishing the zip archive")?;
    Ok(out.into_inner())
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> anyhow::Result<()> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for item in rd {
        let item = item.with_context(|| format!("reading {}", dir.display()))?;
        let path = item.path();
        let Some(file_name) = item.file_name().to_str().map(str::to_string) else {
            bail!("{}: file name is not valid UTF-8", path.display());
        };
        let name = format!("{prefix}{file_name}");
        // symlink_metadata: a link is stored as a link, never followed.
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .with_context(|| format!("reading link {}", path.display()))?;
            let Some(target) = target.to_str().map(str::to_string) else {
                bail!("{}: link target is not valid UTF-8", path.display());
            };
            out.push(Entry {
                name,
                path,
                kind: Kind::Symlink { target },
            });
        } else if ft.is_dir() {
            let dir_name = format!("{name}/");
            walk(&path, &dir_name, out)?;
            out.push(Entry {
                name: dir_name,
                path,
                kind: Kind::Dir,
            });
        } else if ft.is_file() {
            out.push(Entry {
                name,
                path,
                kind: Kind::File {
                    mode: file_mode(&meta),
                    size: meta.len(),
                },
            });
        } else {
            bail!(
                "{}: only regular files, directories and symlinks can be packaged",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn file_mode(meta: &std::fs::Metadata) -> u32 {
    if meta.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[cfg(unix)]
    #[test]
    fn zipping_is_deterministic_and_keeps_modes_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("bootstrap"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(d.join("bootstrap"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir(d.join("lib")).unwrap();
        std::fs::write(d.join("lib/b.txt"), b"bbb").unwrap();
        std::fs::write(d.join("a.txt"), "x".repeat(10_000)).unwrap();
        std::os::unix::fs::symlink("lib/b.txt", d.join("link")).unwrap();

        let first = zip_dir(d).unwrap();
        // Touch a file's mtime: the bytes must not change.
        std::fs::write(d.join("lib/b.txt"), b"bbb").unwrap();
        let second = zip_dir(d).unwrap();
        assert_eq!(first, second);

        let mut za = zip::ZipArchive::new(Cursor::new(first)).unwrap();
        let names: Vec<String> = (0..za.len())
            .map(|i| za.by_index(i).unwrap().name().to_string())
            .collect();
        assert_eq!(names, ["a.txt", "bootstrap", "lib/", "lib/b.txt", "link"]);

        let f = za.by_name("bootstrap").unwrap();
        assert_eq!(f.unix_mode().unwrap() & 0o777, 0o755);
        drop(f);
        let f = za.by_name("a.txt").unwrap();
        assert_eq!(f.compression(), CompressionMethod::Deflated);
        assert!(f.compressed_size() < 10_000);
        drop(f);
        let mut f = za.by_name("link").unwrap();
        assert!(f.is_symlink());
        let mut target = String::new();
        f.read_to_string(&mut target).unwrap();
        assert_eq!(target, "lib/b.txt");
    }
}
