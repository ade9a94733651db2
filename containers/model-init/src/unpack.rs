//! Safe unpacking of `.tar.gz`, `.tar` and `.zip`, or placing a single file.
//!
//! Every entry path must be relative with no `..` and no root/prefix component; entries are
//! created fresh (`create_new`) and never written through a symlink (each parent directory is
//! checked with `symlink_metadata`). Symlinks are allowed only with a relative target; after
//! unpacking, every symlink in the tree is resolved on the real file system and must land
//! inside the target directory (this catches chains such as `a -> b/..`, `c -> a/..` that a
//! purely lexical check would let through). Hard links, devices and FIFOs are refused. The
//! unpacked size is bounded by counting the bytes actually written, not the sizes the headers
//! claim.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::InitError;

/// Archive kind, decided from the file's first bytes (URIs may carry query strings or lie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TarGz,
    Tar,
    Zip,
    /// Anything else is placed as one file.
    Single,
}

pub fn detect(head: &[u8]) -> Kind {
    if head.starts_with(&[0x1f, 0x8b]) {
        Kind::TarGz
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Kind::Zip
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Kind::Tar
    } else {
        Kind::Single
    }
}

/// Limits applied while unpacking.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}

fn unsafe_entry(entry: &str, reason: &str) -> InitError {
    InitError::UnsafeArchive {
        entry: entry.to_string(),
        reason: reason.to_string(),
    }
}

/// A relative path with only normal components, or the reason it is refused.
pub fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("empty path");
    }
    Ok(out)
}

struct Budget {
    limits: UnpackLimits,
    written: u64,
    entries: u64,
}

impl Budget {
    fn entry(&mut self, name: &str) -> Result<(), InitError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(InitError::TooLarge {
                what: "archive entries",
                limit: self.limits.max_entries,
                detail: format!("at {name}"),
            });
        }
        Ok(())
    }

    /// Copy at most the remaining budget; one byte more is a refusal.
    fn copy(&mut self, name: &str, reader: &mut dyn Read, to: &mut File) -> Result<(), InitError> {
        let remaining = self.limits.max_unpacked_bytes.saturating_sub(self.written);
        let mut limited = reader.take(remaining.saturating_add(1));
        let n = io::copy(&mut limited, to).map_err(|e| corrupt(name, e))?;
        self.written += n;
        if self.written > self.limits.max_unpacked_bytes {
            return Err(InitError::TooLarge {
                what: "unpacked size",
                limit: self.limits.max_unpacked_bytes,
                detail: format!("exceeded while writing {name}"),
            });
        }
        Ok(())
    }
}

fn corrupt(entry: &str, e: impl std::fmt::Display) -> InitError {
    InitError::CorruptArchive {
        reason: format!("{entry}: {e}"),
    }
}

/// Refuse to go through a symlink placed by an earlier entry; create missing directories.
fn prepare_parent(root: &Path, rel: &Path, name: &str) -> Result<PathBuf, InitError> {
    let mut cur = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_entry(name, "path goes through a symlink"))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(unsafe_entry(name, "a parent of this entry is a file")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(|e| InitError::local(&cur, e))?
                }
                Err(e) => return Err(InitError::local(&cur, e)),
            }
        }
    }
    Ok(root.join(rel))
}

fn create_file(root: &Path, rel: &Path, name: &str) -> Result<File, InitError> {
    let path = prepare_parent(root, rel, name)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                unsafe_entry(name, "duplicate entry")
            } else {
                InitError::local(&path, e)
            }
        })
}

fn make_dir(root: &Path, rel: &Path, name: &str) -> Result<(), InitError> {
    let path = prepare_parent(root, rel, name)?;
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(unsafe_entry(
            name,
            "directory entry collides with a file or symlink",
        )),
        Err(_) => fs::create_dir(&path).map_err(|e| InitError::local(&path, e)),
    }
}

fn make_symlink(root: &Path, rel: &Path, target: &Path, name: &str) -> Result<(), InitError> {
    if target.is_absolute() {
        return Err(unsafe_entry(name, "symlink with an absolute target"));
    }
    // Lexical check first (cheap, clear message); the real check runs after unpacking.
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_entry(name, "symlink with an absolute target"))
            }
        }
        if depth < 0 {
            return Err(unsafe_entry(
                name,
                "symlink points outside the target directory",
            ));
        }
    }
    let path = prepare_parent(root, rel, name)?;
    std::os::unix::fs::symlink(target, &path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            unsafe_entry(name, "duplicate entry")
        } else {
            InitError::local(&path, e)
        }
    })
}

/// Resolve every symlink under `root` on the real file system; all must stay inside.
pub fn check_symlinks(root: &Path) -> Result<(), InitError> {
    let canon_root = fs::canonicalize(root).map_err(|e| InitError::local(root, e))?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| InitError::local(&dir, e))? {
            let entry = entry.map_err(|e| InitError::local(&dir, e))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| InitError::local(&path, e))?;
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            if ft.is_symlink() {
                match fs::canonicalize(&path) {
                    Ok(real) if real.starts_with(&canon_root) => {}
                    Ok(_) => {
                        return Err(unsafe_entry(
                            &name,
                            "symlink resolves outside the target directory",
                        ))
                    }
                    Err(_) => return Err(unsafe_entry(&name, "dangling or looping symlink")),
                }
            } else if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Unpack `archive` (already verified) into the empty directory `root`.
/// `single_name` is the file name used when the artifact is not an archive.
pub fn unpack(
    archive: &Path,
    root: &Path,
    single_name: &str,
    limits: UnpackLimits,
) -> Result<u64, InitError> {
    let mut head = [0u8; 512];
    let n = read_head(archive, &mut head)?;
    let mut budget = Budget {
        limits,
        written: 0,
        entries: 0,
    };
    let file = File::open(archive).map_err(|e| InitError::local(archive, e))?;
    match detect(&head[..n]) {
        Kind::TarGz => unpack_tar(flate2::read::GzDecoder::new(file), root, &mut budget)?,
        Kind::Tar => unpack_tar(file, root, &mut budget)?,
        Kind::Zip => unpack_zip(file, root, &mut budget)?,
        Kind::Single => {
            let rel =
                safe_relative(Path::new(single_name)).map_err(|r| unsafe_entry(single_name, r))?;
            budget.entry(single_name)?;
            let mut out = create_file(root, &rel, single_name)?;
            let mut input = file;
            budget.copy(single_name, &mut input, &mut out)?;
            out.sync_all().map_err(|e| InitError::local(&rel, e))?;
        }
    }
    check_symlinks(root)?;
    Ok(budget.written)
}

fn read_head(path: &Path, buf: &mut [u8]) -> Result<usize, InitError> {
    let mut f = File::open(path).map_err(|e| InitError::local(path, e))?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(InitError::local(path, e)),
        }
    }
    Ok(n)
}

fn unpack_tar<R: Read>(reader: R, root: &Path, budget: &mut Budget) -> Result<(), InitError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| corrupt("tar", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt("tar", e))?;
        let raw = entry
            .path()
            .map_err(|e| corrupt("tar entry", e))?
            .into_owned();
        let name = raw.display().to_string();
        budget.entry(&name)?;
        let kind = entry.header().entry_type();
        // `pax_global_header` and GNU long-name records are handled by the tar crate itself.
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        // "./" (the archive root, as `tar czf x.tgz -C dir .` writes it) is harmless.
        if kind.is_dir() && raw.components().all(|c| matches!(c, Component::CurDir)) {
            continue;
        }
        let rel = safe_relative(&raw).map_err(|r| unsafe_entry(&name, r))?;
        if kind.is_file() || kind.is_contiguous() {
            let mut out = create_file(root, &rel, &name)?;
            budget.copy(&name, &mut entry, &mut out)?;
        } else if kind.is_dir() {
            make_dir(root, &rel, &name)?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| corrupt(&name, e))?
                .ok_or_else(|| corrupt(&name, "symlink without target"))?
                .into_owned();
            make_symlink(root, &rel, &target, &name)?;
        } else if kind.is_hard_link() {
            return Err(unsafe_entry(&name, "hard links are not allowed"));
        } else {
            return Err(unsafe_entry(
                &name,
                "only files, directories and relative symlinks are allowed",
            ));
        }
    }
    Ok(())
}

fn unpack_zip(file: File, root: &Path, budget: &mut Budget) -> Result<(), InitError> {
    let mut archive = zip::ZipArchive::new(file).map_err(|e| corrupt("zip", e))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| corrupt("zip", e))?;
        let name = entry
            .name()
            .map_err(|e| corrupt("zip entry", e))?
            .into_owned();
        budget.entry(&name)?;
        if name.contains('\\') {
            return Err(unsafe_entry(&name, "backslash in path"));
        }
        let rel = safe_relative(Path::new(&name)).map_err(|r| unsafe_entry(&name, r))?;
        if entry.encrypted() {
            return Err(unsafe_entry(&name, "encrypted entries are not supported"));
        }
        if entry.is_dir() {
            make_dir(root, &rel, &name)?;
        } else if entry.is_symlink() {
            let mut target = String::new();
            (&mut entry)
                .take(4096)
                .read_to_string(&mut target)
                .map_err(|e| corrupt(&name, e))?;
            make_symlink(root, &rel, Path::new(&target), &name)?;
        } else {
            let mut out = create_file(root, &rel, &name)?;
            budget.copy(&name, &mut entry, &mut out)?;
            out.flush().map_err(|e| InitError::local(&rel, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_with_parent_or_root_components_are_refused() {
        assert!(safe_relative(Path::new("a/b.onnx")).is_ok());
        assert_eq!(safe_relative(Path::new("./a")).unwrap(), PathBuf::from("a"));
        assert_eq!(safe_relative(Path::new("../x")), Err("path contains `..`"));
        assert_eq!(
            safe_relative(Path::new("a/../../x")),
            Err("path contains `..`")
        );
        assert_eq!(
            safe_relative(Path::new("/etc/passwd")),
            Err("absolute path")
        );
        assert_eq!(safe_relative(Path::new(".")), Err("empty path"));
    }

    #[test]
    fn archive_kind_is_detected_from_magic_bytes() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Kind::TarGz);
        assert_eq!(detect(b"PK\x03\x04rest"), Kind::Zip);
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&tar), Kind::Tar);
        assert_eq!(detect(b"\x08\x07onnx"), Kind::Single);
    }

    #[test]
    fn symlink_chains_that_resolve_outside_are_caught_on_the_real_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("b")).unwrap();
        std::os::unix::fs::symlink("b/..", root.join("a")).unwrap();
        std::os::unix::fs::symlink("a/..", root.join("c")).unwrap();
        let err = check_symlinks(&root).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
    }
}
