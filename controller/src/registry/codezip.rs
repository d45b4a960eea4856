//! Validation of uploaded code packages (zip archives) before they are
//! stored: size limits, zip-slip and symlink escapes, zip bombs, and that
//! the handler's file is present. Pure: works on bytes in memory and never
//! touches the filesystem.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Cursor, Read};

use nubo_proto::Reason;
use sha2::{Digest, Sha256};
use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use crate::error::RegistryError;
use crate::registry::validate::{self, Limits};

/// What we learned about a valid code package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeInfo {
    /// sha256 of the zip bytes, lowercase hex: the blob's address.
    pub sha256: String,
    /// Size of the zip in bytes.
    pub size: u64,
    /// Bytes actually decompressed from all entries.
    pub unzipped_size: u64,
    /// Number of non-directory entries (files and symlinks).
    pub files: usize,
}

/// Entries smaller than this are never called bombs: tiny files of zeros
/// compress extremely well and are harmless.
const BOMB_MIN_BYTES: u64 = 1024 * 1024;
/// Longest symlink target we read (Linux PATH_MAX).
const MAX_LINK_TARGET: u64 = 4096;
/// Symlinks followed while resolving one path (Linux's MAXSYMLINKS).
const MAX_LINK_HOPS: usize = 40;
/// Longest file name (path component) Linux filesystems take (NAME_MAX).
const MAX_NAME_BYTES: usize = 255;
/// Longest entry path: the function sees it under `/var/task/`, and that
/// path with its terminating NUL must fit Linux's PATH_MAX (4096).
const MAX_PATH_BYTES: usize = 4096 - "/var/task/".len() - 1;
/// Root entries listed in a "handler file not found" message.
const ROOT_LISTING: usize = 10;

const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

struct Entry {
    /// Name as stored in the archive, for messages.
    name: String,
    /// Normalized path components (no empty or `.` parts).
    path: Vec<String>,
    kind: Kind,
    compressed: u64,
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::invalid(msg)
}

/// The upload is not a zip archive a function can be built from (the
/// client may say how to build one).
fn bad_package(msg: impl Into<String>) -> RegistryError {
    RegistryError::invalid(msg).with_reason(Reason::BadCodePackage)
}

/// "3267 bytes (3.2 KiB)": exact for comparison, rounded for reading.
fn human(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{bytes} bytes ({:.1} MiB)", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{bytes} bytes ({:.1} KiB)", b / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Names a compression method the way zip tools do.
fn method_name(m: CompressionMethod) -> String {
    let known = [
        (CompressionMethod::BZIP2, "bzip2"),
        (CompressionMethod::LZMA, "lzma"),
        (CompressionMethod::ZSTD, "zstd"),
        (CompressionMethod::XZ, "xz"),
        (CompressionMethod::DEFLATE64, "deflate64"),
        (CompressionMethod::AES, "aes (encrypted)"),
        (CompressionMethod::IMPLODE, "implode"),
        (CompressionMethod::SHRINK, "shrink"),
        (CompressionMethod::PPMD, "ppmd"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == m)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| m.to_string())
}

/// Whether a raw path is absolute on Unix or Windows (`/x`, `\x`, `C:`).
fn is_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with('/')
        || p.starts_with('\\')
        || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':')
}

/// Checks an entry name against zip-slip and returns its components.
fn entry_path(name: &str) -> Result<Vec<String>, RegistryError> {
    let bad = |why: &str| bad_package(format!("code package entry {name:?} {why}"));
    if name.is_empty() {
        return Err(bad("has an empty name"));
    }
    if name.contains('\0') {
        return Err(bad("contains a NUL byte in its path"));
    }
    if is_absolute(name) {
        return Err(bad(
            "has an absolute path: entries must be relative to the package root",
        ));
    }
    // Split on both separators so `..\..\x` is caught as well as `../../x`.
    if name.split(['/', '\\']).any(|c| c == "..") {
        return Err(bad(
            "contains a '..' component that would escape the package root",
        ));
    }
    if name.contains('\\') {
        // On Linux a backslash is part of the file name, so `pkg\mod.py`
        // would not be importable as pkg/mod.py.
        return Err(bad("uses '\\' as a path separator: zip paths must use '/'"));
    }
    let path: Vec<String> = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect();
    // What the worker could never create: refused here rather than failing
    // every invoke's extraction.
    if let Some(c) = path.iter().find(|c| c.len() > MAX_NAME_BYTES) {
        return Err(bad(&format!(
            "has a path component of {} bytes ({:?}...): file names are at most {MAX_NAME_BYTES} bytes",
            c.len(),
            c.chars().take(32).collect::<String>()
        )));
    }
    let len = path
        .iter()
        .map(|c| c.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    if len > MAX_PATH_BYTES {
        return Err(bad(&format!(
            "has a path of {len} bytes: paths are at most {MAX_PATH_BYTES} bytes \
             (/var/task/ plus the path must fit Linux's PATH_MAX of 4096)"
        )));
    }
    Ok(path)
}

/// The first entry name the central directory lists twice. The zip reader
/// keeps only the last entry of a name, so duplicates are invisible through
/// it; the directory is walked here (its records are 46 bytes plus name,
/// extra field and comment).
fn duplicate_raw_name(zip: &[u8], start: u64) -> Option<String> {
    const CENTRAL: [u8; 4] = 0x0201_4b50u32.to_le_bytes();
    let u16_at = |i: usize| {
        zip.get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut i = usize::try_from(start).ok()?;
    while zip.get(i..i + 4) == Some(&CENTRAL[..]) {
        let (n, m, k) = (u16_at(i + 28)?, u16_at(i + 30)?, u16_at(i + 32)?);
        let name = zip.get(i + 46..i + 46 + n)?;
        if !seen.insert(name) {
            return Some(String::from_utf8_lossy(name).into_owned());
        }
        i += 46 + n + m + k;
    }
    None
}

/// Why resolving a symlink failed.
enum Unsafe {
    Absolute(String),
    Escapes,
    Loop,
}

/// Resolves `components` (relative to the package root) as a filesystem
/// would, following the archive's symlinks, and fails if the walk leaves the
/// root. Resolving lexically alone is not enough: `l -> s/..` with `s -> .`
/// escapes even though `s/..` looks like the root.
fn resolve(links: &HashMap<String, String>, components: &[&str]) -> Result<Vec<String>, Unsafe> {
    let mut pending: Vec<String> = components.iter().rev().map(|c| c.to_string()).collect();
    let mut stack: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err(Unsafe::Escapes);
                }
            }
            _ => {
                stack.push(c);
                if let Some(target) = links.get(&stack.join("/")) {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(Unsafe::Loop);
                    }
                    if is_absolute(target) {
                        return Err(Unsafe::Absolute(target.clone()));
                    }
                    // The target is relative to the link's directory.
                    stack.pop();
                    pending.extend(target.split('/').rev().map(str::to_string));
                }
            }
        }
    }
    Ok(stack)
}

fn corrupt(name: &str, e: impl std::fmt::Display) -> RegistryError {
    bad_package(format!(
        "code package is corrupt: entry {name:?} cannot be read ({e})"
    ))
}

/// `at_least` is set when reading stopped early, so `unzipped` is a floor.
fn bomb(
    name: &str,
    unzipped: u64,
    compressed: u64,
    at_least: bool,
    limits: &Limits,
) -> RegistryError {
    let ratio = unzipped / compressed.max(1);
    let (to, or_more) = if at_least {
        ("at least ", " or more")
    } else {
        ("", "")
    };
    invalid(format!(
        "code package entry {name:?} expands from {compressed} to {to}{unzipped} bytes \
         (ratio {ratio}:1{or_more}): entries over 1 MiB with a ratio above {}:1 are refused as \
         zip bombs; store such data uncompressed or generate it at run time",
        limits.max_compression_ratio
    ))
}

fn too_big_unzipped(what: String, limits: &Limits) -> RegistryError {
    invalid(format!(
        "code package {what}: must be at most {} unzipped; \
         remove files the function does not need (tests, caches, docs)",
        human(limits.max_unzipped_bytes)
    ))
}

/// Whether `unzipped` from `compressed` exceeds the allowed ratio.
fn is_bomb(unzipped: u64, compressed: u64, limits: &Limits) -> bool {
    unzipped > BOMB_MIN_BYTES && unzipped > compressed.saturating_mul(limits.max_compression_ratio)
}

/// Checks a code package and returns its digest and sizes.
pub fn inspect(
    zip_bytes: &[u8],
    runtime: &str,
    handler: &str,
    limits: &Limits,
) -> Result<CodeInfo, RegistryError> {
    let not_zip =
        |why: String| bad_package(format!("code package is not a valid zip archive: {why}"));
    if zip_bytes.is_empty() {
        return Err(not_zip("it is empty".into()));
    }
    let size = zip_bytes.len() as u64;
    if size > limits.max_zipped_bytes {
        return Err(invalid(format!(
            "code package is {} zipped: must be at most {}; \
             remove files the function does not need",
            human(size),
            human(limits.max_zipped_bytes)
        )));
    }
    let sha256 = hex::encode(Sha256::digest(zip_bytes));
    let mut archive =
        ZipArchive::new(Cursor::new(zip_bytes)).map_err(|e| not_zip(e.to_string()))?;

    if let Some(name) = duplicate_raw_name(zip_bytes, archive.central_directory_start()) {
        return Err(bad_package(format!(
            "code package entry {name:?} appears more than once: each path may appear once"
        )));
    }

    // Pass 1: headers only. Refuse what is unsafe before decompressing
    // anything.
    let mut entries = Vec::with_capacity(archive.len());
    // Normalized path -> (entry name, whether a directory): two entries
    // for one path (`a/b` and `a//b`, or a file and a directory) cannot
    // both be extracted.
    let mut paths: HashMap<String, (String, Kind)> = HashMap::new();
    let mut declared: u64 = 0;
    for i in 0..archive.len() {
        let file = archive
            .by_index_raw(i)
            .map_err(|e| not_zip(format!("entry {i}: {e}")))?;
        let name = file.name().to_string();
        if file.name_raw().contains(&0) {
            return Err(bad_package(format!(
                "code package entry {name:?} contains a NUL byte in its path"
            )));
        }
        let path = entry_path(&name)?;
        let method = file.compression();
        if file.encrypted() || method == CompressionMethod::AES {
            return Err(invalid(format!(
                "code package entry {name:?} is encrypted: upload an unencrypted zip"
            )));
        }
        if method != CompressionMethod::Stored && method != CompressionMethod::Deflated {
            return Err(invalid(format!(
                "code package entry {name:?} uses compression method {}: only stored and deflate \
                 entries are supported; rebuild with `zip -r function.zip .`",
                method_name(method)
            )));
        }
        let is_link = file.unix_mode().is_some_and(|m| m & S_IFMT == S_IFLNK);
        let kind = if is_link {
            Kind::Symlink
        } else if name.ends_with('/') {
            Kind::Dir
        } else {
            Kind::File
        };
        if path.is_empty() && kind != Kind::Dir {
            return Err(bad_package(format!(
                "code package entry {name:?} has no file name"
            )));
        }
        let key = path.join("/");
        if let Some((first, was)) = paths.get(&key) {
            if !(*was == Kind::Dir && kind == Kind::Dir) {
                return Err(bad_package(format!(
                    "code package entries {first:?} and {name:?} are the same path: each path may appear once"
                )));
            }
        } else {
            paths.insert(key, (name.clone(), kind));
        }
        let (unzipped, compressed) = (file.size(), file.compressed_size());
        if is_bomb(unzipped, compressed, limits) {
            return Err(bomb(&name, unzipped, compressed, false, limits));
        }
        declared = declared.saturating_add(unzipped);
        if declared > limits.max_unzipped_bytes {
            return Err(too_big_unzipped(
                format!("declares at least {} uncompressed", human(declared)),
                limits,
            ));
        }
        entries.push(Entry {
            name,
            path,
            kind,
            compressed,
        });
    }

    // A file cannot also be a directory on the way to another entry.
    for entry in &entries {
        for end in 1..entry.path.len() {
            if let Some((file, Kind::File)) = paths.get(&entry.path[..end].join("/")) {
                return Err(bad_package(format!(
                    "code package entry {:?} needs {file:?} to be a directory, but it is a file",
                    entry.name
                )));
            }
        }
    }

    // Pass 2: decompress everything, counting real bytes: headers can lie.
    let mut unzipped_size: u64 = 0;
    let mut links: HashMap<String, String> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (i, entry) in entries.iter().enumerate() {
        if entry.kind == Kind::Dir {
            continue;
        }
        let mut file = archive.by_index(i).map_err(|e| match e {
            ZipError::UnsupportedArchive(_) => bad_package(format!(
                "code package entry {:?} cannot be read: {e}",
                entry.name
            )),
            _ => corrupt(&entry.name, e),
        })?;
        let mut target = Vec::new();
        let mut read: u64 = 0;
        loop {
            let n = file.read(&mut buf).map_err(|e| corrupt(&entry.name, e))?;
            if n == 0 {
                break;
            }
            read += n as u64;
            unzipped_size += n as u64;
            if unzipped_size > limits.max_unzipped_bytes {
                return Err(too_big_unzipped(
                    format!(
                        "unzips to more than the limit (stopped reading at entry {:?})",
                        entry.name
                    ),
                    limits,
                ));
            }
            if is_bomb(read, entry.compressed, limits) {
                return Err(bomb(&entry.name, read, entry.compressed, true, limits));
            }
            if entry.kind == Kind::Symlink {
                if read > MAX_LINK_TARGET {
                    return Err(invalid(format!(
                        "code package symlink {:?} has a target longer than {MAX_LINK_TARGET} bytes: \
                         replace it with the file it points to",
                        entry.name
                    )));
                }
                target.extend_from_slice(&buf[..n]);
            }
        }
        if entry.kind == Kind::Symlink {
            let target = String::from_utf8(target).map_err(|_| {
                invalid(format!(
                    "code package symlink {:?} has a target that is not UTF-8: replace it with the file it points to",
                    entry.name
                ))
            })?;
            links.insert(entry.path.join("/"), target);
        }
    }

    // Pass 3: every symlink must stay inside the root once resolved.
    for entry in entries.iter().filter(|e| e.kind == Kind::Symlink) {
        let target = &links[&entry.path.join("/")];
        let escape = |why: String| {
            invalid(format!(
                "code package symlink {:?} -> {target:?} {why}: symlinks must point inside the package; \
                 replace it with the file it points to",
                entry.name
            ))
        };
        if target.is_empty() {
            return Err(escape("has an empty target".into()));
        }
        if target.contains('\0') {
            return Err(escape("has a NUL byte in its target".into()));
        }
        if is_absolute(target) {
            return Err(escape("has an absolute target".into()));
        }
        let parent = &entry.path[..entry.path.len() - 1];
        let walk: Vec<&str> = parent
            .iter()
            .map(String::as_str)
            .chain(target.split('/'))
            .collect();
        match resolve(&links, &walk) {
            Ok(_) => {}
            Err(Unsafe::Escapes) => return Err(escape("escapes the package root".into())),
            Err(Unsafe::Absolute(t)) => {
                return Err(escape(format!(
                    "leads through a symlink to the absolute path {t:?}"
                )))
            }
            Err(Unsafe::Loop) => {
                return Err(escape(
                    "is part of a symlink loop (too many levels of symbolic links)".into(),
                ))
            }
        }
    }

    check_handler_file(&entries, &links, runtime, handler)?;

    Ok(CodeInfo {
        sha256,
        size,
        unzipped_size,
        files: entries.iter().filter(|e| e.kind != Kind::Dir).count(),
    })
}

/// Lists the entries at the root of the package for a message.
fn root_listing(entries: &[Entry]) -> String {
    let root: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| {
            let first = e.path.first()?;
            let is_dir = e.path.len() > 1 || e.kind == Kind::Dir;
            Some(if is_dir {
                format!("{first}/")
            } else {
                first.clone()
            })
        })
        .collect();
    if root.is_empty() {
        return "(none: the archive is empty)".into();
    }
    let mut listing: Vec<String> = root.iter().take(ROOT_LISTING).cloned().collect();
    if root.len() > ROOT_LISTING {
        listing.push(format!("... ({} more)", root.len() - ROOT_LISTING));
    }
    listing.join(", ")
}

/// Requires the file the runtime starts from: the handler's module for
/// Python, `bootstrap` for `provided*`.
fn check_handler_file(
    entries: &[Entry],
    links: &HashMap<String, String>,
    runtime: &str,
    handler: &str,
) -> Result<(), RegistryError> {
    let present: HashSet<String> = entries
        .iter()
        .filter(|e| e.kind != Kind::Dir)
        .map(|e| e.path.join("/"))
        .collect();
    // A file is present if listed as is, or once symlinked directories on
    // its way are followed.
    let has = |p: &str| {
        present.contains(p)
            || resolve(links, &p.split('/').collect::<Vec<_>>())
                .is_ok_and(|r| present.contains(&r.join("/")))
    };
    // The common mistake of zipping the folder instead of its contents.
    let single_top_dir = {
        let tops: BTreeSet<&str> = entries
            .iter()
            .filter_map(|e| e.path.first().map(String::as_str))
            .collect();
        let all_nested = entries
            .iter()
            .all(|e| e.path.len() > 1 || e.kind == Kind::Dir);
        match (tops.len(), all_nested) {
            (1, true) => tops.into_iter().next(),
            _ => None,
        }
    };
    let nested_hint = |candidates: &[String]| -> String {
        match single_top_dir {
            Some(top) if candidates.iter().any(|c| has(&format!("{top}/{c}"))) => format!(
                "; everything is inside the folder {top}/: zip the folder's contents, not the folder \
                 (cd {top} && zip -r ../function.zip .)"
            ),
            _ => String::new(),
        }
    };

    if validate::is_python(runtime) {
        let Some((module, _)) = validate::python_module_path(handler) else {
            // The handler itself is malformed; `validate::handler` says how.
            return validate::handler(runtime, handler);
        };
        let file = format!("{module}.py");
        let package = format!("{module}/__init__.py");
        if has(&file) || has(&package) {
            return Ok(());
        }
        return Err(invalid(format!(
            "handler file {file} not found in the code package (handler {handler}): add {file} \
             (or {package}) at the package root, or change the handler; files at the root: {}{}",
            root_listing(entries),
            nested_hint(&[file.clone(), package.clone()])
        )));
    }
    if validate::is_provided(runtime) {
        let bootstrap = entries.iter().find(|e| e.path == ["bootstrap"]);
        return match bootstrap {
            Some(e) if e.kind != Kind::Dir => Ok(()),
            Some(_) => Err(invalid(format!(
                "bootstrap is a directory in the code package: runtime {runtime} runs an executable \
                 file named bootstrap at the package root"
            ))),
            None => Err(invalid(format!(
                "bootstrap not found at the root of the code package: runtime {runtime} runs an \
                 executable file named bootstrap at the package root; add it; files at the root: {}{}",
                root_listing(entries),
                nested_hint(&["bootstrap".to_string()])
            ))),
        };
    }
    validate::runtime(runtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    use zip::ZipWriter;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Stored(&'a str, &'a [u8]),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn build(entries: &[E]) -> Vec<u8> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        let deflate = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for e in entries {
            match e {
                E::File(name, data) => {
                    w.start_file(*name, deflate).unwrap();
                    w.write_all(data).unwrap();
                }
                E::Stored(name, data) => {
                    w.start_file(*name, stored).unwrap();
                    w.write_all(data).unwrap();
                }
                E::Dir(name) => w.add_directory(*name, deflate).unwrap(),
                E::Link(name, target) => w.add_symlink(*name, *target, deflate).unwrap(),
            }
        }
        w.finish().unwrap().into_inner()
    }

    fn err(r: Result<CodeInfo, RegistryError>) -> String {
        match r {
            Err(RegistryError::InvalidArgument(m)) => m.message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn assert_err(r: Result<CodeInfo, RegistryError>, needles: &[&str]) {
        let m = err(r);
        for n in needles {
            assert!(m.contains(n), "message {m:?} should contain {n:?}");
        }
    }

    const PY: &str = "python3.12";
    const H: &str = "app.lambda_handler";

    fn py(zip: &[u8]) -> Result<CodeInfo, RegistryError> {
        inspect(zip, PY, H, &Limits::default())
    }

    /// Overwrites a little-endian u16/u32 at `off` in every header whose
    /// signature is `sig` (to craft archives ZipWriter refuses to write).
    fn patch(zip: &mut [u8], sig: u32, off: usize, value: &[u8]) {
        let sig = sig.to_le_bytes();
        let mut i = 0;
        while i + 4 <= zip.len() {
            if zip[i..i + 4] == sig {
                zip[i + off..i + off + value.len()].copy_from_slice(value);
            }
            i += 1;
        }
    }
    const LOCAL: u32 = 0x0403_4b50;
    const CENTRAL: u32 = 0x0201_4b50;

    #[test]
    fn valid_python_package() {
        let zip = build(&[
            E::File("app.py", b"def lambda_handler(e, c):\n    return e\n"),
            E::Dir("lib/"),
            E::Stored("lib/util.py", b"X = 1\n"),
        ]);
        let info = py(&zip).unwrap();
        assert_eq!(info.size, zip.len() as u64);
        assert_eq!(info.files, 2);
        assert_eq!(
            info.unzipped_size,
            (b"def lambda_handler(e, c):\n    return e\n".len() + 6) as u64
        );
        assert_eq!(info.sha256, hex::encode(Sha256::digest(&zip)));
        assert_eq!(info.sha256.len(), 64);
        assert!(info
            .sha256
            .chars()
            .all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    }

    #[test]
    fn python_module_forms() {
        let zip = build(&[
            E::File("pkg/mod.py", b""),
            E::File("pkg2/sub/__init__.py", b""),
            E::File("./dot.py", b""),
        ]);
        let l = Limits::default();
        inspect(&zip, PY, "pkg/mod.handler", &l).unwrap();
        inspect(&zip, PY, "pkg.mod.handler", &l).unwrap();
        inspect(&zip, PY, "pkg2.sub.handler", &l).unwrap();
        inspect(&zip, PY, "pkg2/sub.handler", &l).unwrap();
        inspect(&zip, PY, "dot.handler", &l).unwrap();
        assert_err(
            inspect(&zip, PY, "pkg.other.handler", &l),
            &[
                "handler file pkg/other.py not found",
                "pkg/other/__init__.py",
            ],
        );
        // A malformed handler is reported by the handler rules.
        assert_err(inspect(&zip, PY, "nodot", &l), &["handler \"nodot\""]);
    }

    #[test]
    fn handler_through_symlinked_dir() {
        let zip = build(&[E::File("real/app.py", b""), E::Link("pkg", "real")]);
        inspect(&zip, PY, "pkg.app.handler", &Limits::default()).unwrap();
    }

    #[test]
    fn valid_provided_with_bootstrap() {
        let zip = build(&[
            E::File("bootstrap", b"#!/bin/sh\n"),
            E::File("lib/x.so", b""),
        ]);
        for rt in ["provided", "provided.al2", "provided.al2023"] {
            let info = inspect(&zip, rt, "ignored", &Limits::default()).unwrap();
            assert_eq!(info.files, 2);
        }
        // A symlink named bootstrap pointing inside the package is fine.
        let zip = build(&[
            E::File("bin/app", b"\x7fELF"),
            E::Link("bootstrap", "bin/app"),
        ]);
        inspect(&zip, "provided.al2023", "x", &Limits::default()).unwrap();
    }

    #[test]
    fn provided_without_bootstrap() {
        let zip = build(&[E::File("main", b""), E::File("bin/bootstrap", b"")]);
        assert_err(
            inspect(&zip, "provided.al2023", "x", &Limits::default()),
            &[
                "bootstrap not found",
                "provided.al2023",
                "files at the root: bin/, main",
            ],
        );
        let zip = build(&[E::Dir("bootstrap/"), E::File("bootstrap/x", b"")]);
        assert_err(
            inspect(&zip, "provided", "x", &Limits::default()),
            &["bootstrap is a directory"],
        );
    }

    #[test]
    fn unknown_runtime_is_reported() {
        let zip = build(&[E::File("app.py", b"")]);
        assert_err(
            inspect(&zip, "ruby3.2", "app.h", &Limits::default()),
            &["runtime \"ruby3.2\" is not supported"],
        );
    }

    #[test]
    fn not_a_zip() {
        // How to build a zip is the client's advice, keyed by the reason.
        let r = py(b"");
        assert_eq!(
            r.as_ref().err().and_then(|e| e.reason()),
            Some(Reason::BadCodePackage)
        );
        assert_err(r, &["not a valid zip archive", "empty"]);
        let r = py(b"this is not a zip file at all");
        assert_eq!(
            r.as_ref().err().and_then(|e| e.reason()),
            Some(Reason::BadCodePackage)
        );
        assert_err(r, &["not a valid zip archive"]);
        let mut zip = build(&[E::File("app.py", b"x")]);
        zip.truncate(zip.len() / 2);
        assert_err(py(&zip), &["not a valid zip archive"]);
    }

    #[test]
    fn corrupt_data_is_reported() {
        let mut zip = build(&[E::Stored("app.py", b"hello world, this is python")]);
        // Flip a data byte: the CRC check fails while reading.
        let pos = zip.windows(5).position(|w| w == b"hello").unwrap();
        zip[pos] = b'j';
        assert_err(py(&zip), &["corrupt", "\"app.py\""]);
    }

    #[test]
    fn zipped_size_limit() {
        let zip = build(&[E::File("app.py", b"")]);
        let limits = Limits {
            max_zipped_bytes: zip.len() as u64 - 1,
            ..Limits::default()
        };
        assert_err(
            inspect(&zip, PY, H, &limits),
            &[&format!("{} bytes", zip.len()), "zipped", "at most"],
        );
        let limits = Limits {
            max_zipped_bytes: zip.len() as u64,
            ..Limits::default()
        };
        inspect(&zip, PY, H, &limits).unwrap();
    }

    #[test]
    fn parent_dir_paths_are_refused() {
        for name in [
            "../evil.py",
            "a/../../evil.py",
            "a/..",
            "..\\evil.py",
            "a\\..\\..\\x",
        ] {
            let zip = build(&[E::File("app.py", b""), E::File(name, b"x")]);
            assert_err(py(&zip), &["'..'", &format!("{name:?}")]);
        }
    }

    #[test]
    fn absolute_paths_are_refused() {
        for name in ["/etc/passwd", "\\evil", "C:\\evil", "c:/evil"] {
            let zip = build(&[E::File("app.py", b""), E::Stored(name, b"x")]);
            assert_err(py(&zip), &["absolute path", &format!("{name:?}")]);
        }
    }

    #[test]
    fn backslash_and_nul_are_refused() {
        let zip = build(&[E::File("app.py", b""), E::File("pkg\\mod.py", b"")]);
        assert_err(py(&zip), &["\"pkg\\\\mod.py\"", "'/'"]);
        let zip = build(&[E::File("app.py", b""), E::File("evil\0.py", b"")]);
        assert_err(py(&zip), &["NUL"]);
    }

    #[test]
    fn symlink_escaping_root_is_refused() {
        let cases: &[(&str, &str, &str)] = &[
            ("ln", "../../etc/passwd", "escapes the package root"),
            ("a/b/ln", "../../../x", "escapes the package root"),
            ("ln", "/etc/passwd", "absolute target"),
            ("ln", "..", "escapes the package root"),
            ("ln", "", "empty target"),
        ];
        for (name, target, why) in cases {
            let zip = build(&[E::File("app.py", b""), E::Link(name, target)]);
            assert_err(py(&zip), &[&format!("symlink {name:?} -> {target:?}"), why]);
        }
    }

    #[test]
    fn symlink_escaping_through_another_symlink_is_refused() {
        // Lexically `s/../x` is inside, but `s` is the root itself.
        let zip = build(&[
            E::File("app.py", b""),
            E::Link("s", "."),
            E::Link("l", "s/../x"),
        ]);
        assert_err(py(&zip), &["symlink \"l\"", "escapes"]);
        // A link placed under a symlinked directory resolves from there.
        let zip = build(&[
            E::File("app.py", b""),
            E::Link("p", "."),
            E::Link("p/q", "../x"),
        ]);
        assert_err(py(&zip), &["symlink \"p/q\"", "escapes"]);
        // Through a link to an absolute path.
        let zip = build(&[
            E::File("app.py", b""),
            E::Link("a", "/etc"),
            E::Link("b", "a/x"),
        ]);
        assert_err(py(&zip), &["absolute"]);
    }

    #[test]
    fn symlink_loop_is_refused() {
        let zip = build(&[E::File("app.py", b""), E::Link("a", "b"), E::Link("b", "a")]);
        assert_err(py(&zip), &["loop"]);
    }

    #[test]
    fn symlinks_inside_root_are_allowed() {
        let zip = build(&[
            E::File("app.py", b""),
            E::File("lib/real.py", b""),
            E::Link("lib/alias.py", "real.py"),
            E::Link("top.py", "lib/./real.py"),
            E::Link("deep/x/y", "../../lib/real.py"),
            E::Link("self", "."),
            E::Link("dangling", "missing/inside"),
        ]);
        let info = py(&zip).unwrap();
        assert_eq!(info.files, 7);
        // The handler module itself may be a symlink.
        let zip = build(&[E::File("src/app.py", b""), E::Link("app.py", "src/app.py")]);
        py(&zip).unwrap();
    }

    #[test]
    fn unzipped_size_limit_from_headers() {
        let zip = build(&[
            E::File("app.py", &[b'a'; 600]),
            E::File("b.py", &[b'b'; 600]),
        ]);
        let small = Limits {
            max_unzipped_bytes: 1000,
            ..Limits::default()
        };
        assert_err(
            inspect(&zip, PY, H, &small),
            &["uncompressed", "at most 1000 bytes", "unzipped"],
        );
        let enough = Limits {
            max_unzipped_bytes: 1200,
            ..Limits::default()
        };
        assert_eq!(inspect(&zip, PY, H, &enough).unwrap().unzipped_size, 1200);
    }

    #[test]
    fn unzipped_size_counts_real_bytes_not_headers() {
        let mut zip = build(&[E::File("app.py", b""), E::File("big.bin", &[7u8; 5000])]);
        // Lie about big.bin's size (and app.py's, harmlessly) in both headers.
        patch(&mut zip, LOCAL, 22, &10u32.to_le_bytes());
        patch(&mut zip, CENTRAL, 24, &10u32.to_le_bytes());
        let small = Limits {
            max_unzipped_bytes: 1000,
            ..Limits::default()
        };
        assert_err(
            inspect(&zip, PY, H, &small),
            &[
                "unzips to more than the limit",
                "\"big.bin\"",
                "at most 1000 bytes",
            ],
        );
    }

    #[test]
    fn zip_bomb_is_refused() {
        let zeros = vec![0u8; 2 * 1024 * 1024];
        let zip = build(&[E::File("app.py", b""), E::File("zeros.bin", &zeros)]);
        assert_err(py(&zip), &["\"zeros.bin\"", "zip bomb", "200:1"]);
        // Same entry with a generous ratio passes.
        let lax = Limits {
            max_compression_ratio: 100_000,
            ..Limits::default()
        };
        inspect(&zip, PY, H, &lax).unwrap();
        // Small highly compressible files are not bombs.
        let zip = build(&[E::File("app.py", &[0u8; 1024 * 1024])]);
        py(&zip).unwrap();
        // Stored entries have ratio 1.
        let zip = build(&[E::File("app.py", b""), E::Stored("zeros.bin", &zeros)]);
        py(&zip).unwrap();
    }

    #[test]
    fn zip_bomb_detected_while_reading_despite_lying_headers() {
        let zeros = vec![0u8; 2 * 1024 * 1024];
        let mut zip = build(&[E::File("zeros.bin", &zeros)]);
        patch(&mut zip, LOCAL, 22, &10u32.to_le_bytes());
        patch(&mut zip, CENTRAL, 24, &10u32.to_le_bytes());
        assert_err(py(&zip), &["\"zeros.bin\"", "zip bomb"]);
    }

    #[test]
    fn unsupported_compression_method() {
        let mut zip = build(&[E::Stored("app.py", b"x")]);
        // Method 12 is bzip2, which this build cannot decompress.
        patch(&mut zip, LOCAL, 8, &12u16.to_le_bytes());
        patch(&mut zip, CENTRAL, 10, &12u16.to_le_bytes());
        assert_err(
            py(&zip),
            &[
                "\"app.py\"",
                "compression method bzip2",
                "stored and deflate",
            ],
        );
    }

    #[test]
    fn missing_handler_file_names_it() {
        let zip = build(&[
            E::File("a.py", b""),
            E::File("b.txt", b""),
            E::File("lib/c.py", b""),
        ]);
        assert_eq!(
            err(py(&zip)),
            "handler file app.py not found in the code package (handler app.lambda_handler): \
             add app.py (or app/__init__.py) at the package root, or change the handler; \
             files at the root: a.py, b.txt, lib/"
        );
        // Long listings are cut at 10 names.
        let names: Vec<String> = (0..15).map(|i| format!("f{i:02}.txt")).collect();
        let entries: Vec<E> = names.iter().map(|n| E::File(n, b"")).collect();
        let m = err(py(&build(&entries)));
        assert!(m.contains("f09.txt, ... (5 more)"), "{m}");
        assert!(!m.contains("f10.txt"), "{m}");
        // An empty archive says so.
        assert_err(
            py(&build(&[])),
            &["app.py not found", "(none: the archive is empty)"],
        );
    }

    #[test]
    fn zipped_folder_instead_of_contents_gets_a_hint() {
        let zip = build(&[E::Dir("myfunc/"), E::File("myfunc/app.py", b"")]);
        assert_err(
            py(&zip),
            &[
                "app.py not found",
                "files at the root: myfunc/",
                "cd myfunc && zip -r",
            ],
        );
        let zip = build(&[E::File("myfunc/bootstrap", b"")]);
        assert_err(
            inspect(&zip, "provided", "x", &Limits::default()),
            &["bootstrap not found", "cd myfunc"],
        );
    }

    fn bad_reason(r: Result<CodeInfo, RegistryError>, needles: &[&str]) {
        assert_eq!(
            r.as_ref().err().and_then(|e| e.reason()),
            Some(Reason::BadCodePackage),
            "{r:?}"
        );
        assert_err(r, needles);
    }

    /// What no worker could extract is refused at deploy, naming the
    /// entry: a file name over 255 bytes, a path over 4085 bytes (4096
    /// with `/var/task/` and the NUL), a NUL in a name (also one written
    /// into the raw headers, which ZipWriter would not do).
    #[test]
    fn names_and_paths_linux_cannot_hold_are_refused() {
        let ok = format!("{}.py", "n".repeat(252));
        py(&build(&[E::File("app.py", b""), E::File(&ok, b"")])).expect("255 bytes");
        let long = format!("lib/{}.py", "n".repeat(297));
        bad_reason(
            py(&build(&[E::File("app.py", b""), E::File(&long, b"")])),
            &["lib/nnn", "path component of 300 bytes", "at most 255"],
        );
        let deep = |parts: usize| {
            let mut p = vec!["d".repeat(200); parts].join("/");
            p.push_str("/x.py");
            p
        };
        // 20 x 201 + 4 = 4024 bytes: fine; 21 x 201 + 4 = 4225: too long.
        py(&build(&[E::File("app.py", b""), E::File(&deep(20), b"")])).expect("4024 bytes");
        bad_reason(
            py(&build(&[E::File("app.py", b""), E::File(&deep(21), b"")])),
            &["path of 4225 bytes", "at most 4085"],
        );
        let mut zip = build(&[E::File("app.py", b""), E::File("evilx.py", b"")]);
        let at = zip.windows(8).position(|w| w == b"evilx.py").unwrap();
        zip[at + 4] = 0;
        let at = zip.windows(8).rposition(|w| w == b"evilx.py").unwrap();
        zip[at + 4] = 0;
        bad_reason(py(&zip), &["NUL"]);
    }

    /// Two entries for one path are refused (the zip reader would keep the
    /// last one silently): the same raw name (crafted: ZipWriter refuses
    /// to write it), names that normalize to one path, a file that another
    /// entry needs as its directory; a directory listed twice is harmless.
    #[test]
    fn duplicate_entries_are_refused() {
        let mut zip = build(&[
            E::File("app.py", b"def lambda_handler(e, c): return 1\n"),
            E::File("apq.py", b"def lambda_handler(e, c): return 2\n"),
        ]);
        for (i, _) in zip
            .clone()
            .windows(6)
            .enumerate()
            .filter(|(_, w)| *w == b"apq.py")
        {
            zip[i + 2] = b'p';
        }
        assert_eq!(
            ZipArchive::new(Cursor::new(&zip[..])).unwrap().len(),
            1,
            "the reader sees one entry"
        );
        bad_reason(py(&zip), &["\"app.py\" appears more than once"]);
        bad_reason(
            py(&build(&[E::File("app.py", b""), E::File("./app.py", b"")])),
            &["\"app.py\" and \"./app.py\" are the same path"],
        );
        bad_reason(
            py(&build(&[
                E::File("app.py", b""),
                E::File("lib", b""),
                E::File("lib/x.py", b""),
            ])),
            &["\"lib/x.py\" needs \"lib\" to be a directory"],
        );
        py(&build(&[
            E::File("app.py", b""),
            E::Dir("lib/"),
            E::Dir("./lib/"),
            E::File("lib/x.py", b""),
        ]))
        .expect("a directory listed twice");
    }

    #[test]
    fn sha256_matches_sha2_of_bytes() {
        let zip = build(&[E::File("app.py", b"print('hi')")]);
        let info = py(&zip).unwrap();
        let mut h = Sha256::new();
        h.update(&zip);
        assert_eq!(info.sha256, format!("{:x}", h.finalize()));
    }
}
