//! Publishing and the cross-process lock.
//!
//! Two layouts, chosen from what `dest` is when the fetch starts:
//! - `dest` does not exist (the usual case: the volume is mounted at the parent, e.g. `/opt/ml`):
//!   the lock is `<parent>/.<name>.mlep-lock`, the model is unpacked into
//!   `<parent>/.<name>.mlep-staging-*` and published with ONE `rename(2)` of the directory.
//!   A reader sees no directory or a complete one.
//! - `dest` already exists as a directory (e.g. an `emptyDir` mounted AT `/opt/ml/model`, which
//!   cannot be renamed over: EBUSY): lock and staging live inside it (`.mlep-lock`,
//!   `.mlep-staging-*`), entries are moved in one by one with `rename(2)` (each file appears
//!   whole), `metadata.json` second to last and the marker [`MARKER_FILE`] last. Readers that
//!   wait for `metadata.json` (mlep-model-server) or the marker (model-init) never see a
//!   partial model. An older model is removed first, marker first.
//!
//! A complete model carries [`MARKER_FILE`] with its sha256: a second replica sharing the
//! volume reuses it instead of downloading again.
//!
//! The lock file holds `pid host nonce`; its holder refreshes its mtime while downloading.
//! It is stale when its mtime is older than `stale_after`, or when it names this host and a
//! pid that no longer exists (a crashed init container restarted in the same pod). A stale
//! lock is renamed away (atomic, only one waiter wins) and re-checked: if what was renamed
//! is not the lock that was judged stale, it is put back.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::{Event, InitError, Progress};

/// Written last into a published model directory: `sha256 <hex>\nuri <uri>\n`.
pub const MARKER_FILE: &str = ".mlep-artifact";
/// Moved in second to last, so a server waiting for it sees every other file.
const METADATA_FILE: &str = "metadata.json";
const POLL: Duration = Duration::from_millis(100);
const HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Layout {
    pub dest: PathBuf,
    pub lock: PathBuf,
    /// Directory holding staging areas, and the file-name prefix they share.
    pub staging_parent: PathBuf,
    pub staging_prefix: String,
    pub in_place: bool,
}

impl Layout {
    pub fn for_dest(dest: &Path) -> Result<Self, InitError> {
        let bad = |reason: &str| InitError::BadDest {
            path: dest.to_path_buf(),
            reason: reason.to_string(),
        };
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad("must end in a directory name"))?;
        let parent = match dest.parent() {
            Some(p) if p.as_os_str().is_empty() => PathBuf::from("."),
            Some(p) => p.to_path_buf(),
            None => return Err(bad("has no parent directory")),
        };
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => Ok(Layout {
                dest: dest.to_path_buf(),
                lock: dest.join(".mlep-lock"),
                staging_parent: dest.to_path_buf(),
                staging_prefix: ".mlep-staging-".into(),
                in_place: true,
            }),
            Ok(_) => Err(bad("exists and is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&parent).map_err(|e| InitError::local(&parent, e))?;
                Ok(Layout {
                    dest: dest.to_path_buf(),
                    lock: parent.join(format!(".{name}.mlep-lock")),
                    staging_parent: parent,
                    staging_prefix: format!(".{name}.mlep-staging-"),
                    in_place: false,
                })
            }
            Err(e) => Err(InitError::local(dest, e)),
        }
    }
}

/// `dest` holds a complete model with this sha256.
pub fn is_complete(dest: &Path, sha: &str) -> bool {
    fs::read_to_string(dest.join(MARKER_FILE))
        .map(|m| m.lines().next() == Some(&format!("sha256 {sha}")))
        .unwrap_or(false)
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Held while downloading and publishing; removes the lock file on drop if it is still ours.
pub struct LockGuard {
    path: PathBuf,
    file: File,
    content: String,
    last_beat: Mutex<Instant>,
}

impl LockGuard {
    /// Refresh the lock's mtime (at most once a second) so waiters do not think it is stale.
    pub fn heartbeat(&self) {
        let Ok(mut last) = self.last_beat.lock() else {
            return;
        };
        if last.elapsed() >= HEARTBEAT {
            *last = Instant::now();
            if let Err(e) = self.file.set_modified(SystemTime::now()) {
                tracing::warn!(lock = %self.path.display(), error = %e, "could not refresh lock");
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if fs::read_to_string(&self.path).is_ok_and(|c| c == self.content) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn is_stale(lock: &Path, content: &str, stale_after: Duration) -> bool {
    let age = fs::metadata(lock)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if age.is_some_and(|a| a > stale_after) {
        return true;
    }
    let mut parts = content.split_whitespace();
    let (pid, host) = (parts.next(), parts.next());
    match (pid.and_then(|p| p.parse::<u32>().ok()), host) {
        (Some(pid), Some(host)) if host == hostname() => {
            !Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

fn break_stale(lock: &Path, judged: &str) {
    let aside = lock.with_extension(format!("stale-{}", nonce()));
    if fs::rename(lock, &aside).is_err() {
        return; // someone else broke it first
    }
    let moved = fs::read_to_string(&aside).unwrap_or_default();
    if moved != judged {
        // A fresh lock was taken between our check and the rename: put it back.
        let _ = fs::hard_link(&aside, lock);
    } else {
        tracing::warn!(lock = %lock.display(), holder = %judged.trim(), "took over a stale lock");
    }
    let _ = fs::remove_file(&aside);
}

/// Take the lock for `layout.dest`, or return `None` if a complete copy with `sha` appeared
/// while waiting.
pub fn acquire(
    layout: &Layout,
    sha: &str,
    stale_after: Duration,
    wait: Duration,
    progress: &dyn Progress,
) -> Result<Option<LockGuard>, InitError> {
    let started = Instant::now();
    let mut announced = false;
    loop {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&layout.lock)
        {
            Ok(mut file) => {
                let content = format!("{} {} {}\n", std::process::id(), hostname(), nonce());
                file.write_all(content.as_bytes())
                    .map_err(|e| InitError::local(&layout.lock, e))?;
                let guard = LockGuard {
                    path: layout.lock.clone(),
                    file,
                    content,
                    last_beat: Mutex::new(Instant::now()),
                };
                if is_complete(&layout.dest, sha) {
                    return Ok(None);
                }
                remove_leftovers(layout);
                return Ok(Some(guard));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if is_complete(&layout.dest, sha) {
                    return Ok(None);
                }
                let holder = fs::read_to_string(&layout.lock).unwrap_or_default();
                if is_stale(&layout.lock, &holder, stale_after) {
                    break_stale(&layout.lock, &holder);
                    continue;
                }
                if !announced {
                    announced = true;
                    progress.event(&Event::Waiting {
                        holder: holder.trim().to_string(),
                    });
                }
                if started.elapsed() > wait {
                    return Err(InitError::LockTimeout {
                        lock: layout.lock.clone(),
                        holder: holder.trim().to_string(),
                        waited: started.elapsed(),
                    });
                }
                std::thread::sleep(POLL);
            }
            Err(e) => return Err(InitError::local(&layout.lock, e)),
        }
    }
}

/// Staging areas left by a crashed fetch (only called with the lock held).
fn remove_leftovers(layout: &Layout) {
    let Ok(entries) = fs::read_dir(&layout.staging_parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&layout.staging_prefix)
        {
            tracing::info!(path = %entry.path().display(), "removing a leftover staging directory");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh staging directory next to (or inside, for in-place layouts) the destination.
pub fn staging_dir(layout: &Layout) -> Result<PathBuf, InitError> {
    let dir = layout
        .staging_parent
        .join(format!("{}{}", layout.staging_prefix, nonce()));
    fs::create_dir(&dir).map_err(|e| InitError::local(&dir, e))?;
    Ok(dir)
}

/// Publish the unpacked `model` directory as `layout.dest`.
pub fn publish(model: &Path, layout: &Layout, sha: &str, uri: &str) -> Result<(), InitError> {
    let marker = model.join(MARKER_FILE);
    fs::write(&marker, format!("sha256 {sha}\nuri {uri}\n"))
        .map_err(|e| InitError::local(&marker, e))?;
    if !layout.in_place {
        return fs::rename(model, &layout.dest).map_err(|e| InitError::local(&layout.dest, e));
    }
    let dest = &layout.dest;
    // Same file system by construction (staging is inside dest); check to fail clearly.
    let (d1, d2) = (
        fs::metadata(model).map(|m| m.dev()),
        fs::metadata(dest).map(|m| m.dev()),
    );
    if d1.ok() != d2.ok() {
        return Err(InitError::BadDest {
            path: dest.clone(),
            reason: "staging and destination are on different devices".into(),
        });
    }
    // Remove an older model: marker first, so nobody takes it for complete meanwhile.
    let _ = fs::remove_file(dest.join(MARKER_FILE));
    let _ = fs::remove_file(dest.join(METADATA_FILE));
    for entry in fs::read_dir(dest)
        .map_err(|e| InitError::local(dest, e))?
        .flatten()
    {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.path() == layout.lock || name.starts_with(&layout.staging_prefix) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| InitError::local(&path, e))?;
    }
    let mut last = Vec::new();
    for entry in fs::read_dir(model)
        .map_err(|e| InitError::local(model, e))?
        .flatten()
    {
        let name = entry.file_name();
        if name == METADATA_FILE || name == MARKER_FILE {
            last.push(name);
            continue;
        }
        let to = dest.join(&name);
        fs::rename(entry.path(), &to).map_err(|e| InitError::local(&to, e))?;
    }
    last.sort_by_key(|n| n == MARKER_FILE); // metadata.json, then the marker
    for name in last {
        let to = dest.join(&name);
        fs::rename(model.join(&name), &to).map_err(|e| InitError::local(&to, e))?;
    }
    Ok(())
}
