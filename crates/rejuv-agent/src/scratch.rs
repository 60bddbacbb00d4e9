//! Clearing a scratch directory without ever following a symlink out of it.
//!
//! Checks, in order: the lexical rules of [`rejuv_core::config::check_scratch_dir`] (absolute,
//! no `.`/`..`, never `/`, strictly inside an allowed root); no component of the path is a
//! symlink; the canonical path is the path itself and passes the same rules. Then the
//! directory is opened one component at a time with `O_NOFOLLOW` and its contents are removed
//! with fd-relative calls (`openat`, `fstatat(AT_SYMLINK_NOFOLLOW)`, `unlinkat`), so a
//! component swapped for a symlink after the checks makes the walk fail instead of escaping.
//!
//! # Guarantees
//! - A symlink inside the directory is removed as a link; its target is never touched.
//! - The walk never crosses into another filesystem (a mount point inside is left alone and
//!   reported).
//! - The directory itself stays; only its contents go.
//! - Any depth is cleared: the walk is a loop, not a recursion, and holds two directories
//!   open at most (it comes back up through `..`, checked to be the directory it left).

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("refused to clear {dir}: {reason}")]
    Refused { dir: PathBuf, reason: String },
    #[error("cannot inspect {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cleared {dir} only partly: removed {removed} entries; {} problem(s), first: {}", .problems.len(), .problems.first().map(String::as_str).unwrap_or("-"))]
    Partial {
        dir: PathBuf,
        removed: u64,
        problems: Vec<String>,
    },
}

/// What a successful clear did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleared {
    /// The directory does not exist: nothing to clear.
    Absent,
    Removed {
        entries: u64,
        /// Mount points found inside and left alone.
        skipped_mounts: Vec<PathBuf>,
    },
}

fn refuse(dir: &Path, reason: impl Into<String>) -> ScratchError {
    ScratchError::Refused {
        dir: dir.into(),
        reason: reason.into(),
    }
}

/// Checks that `dir` may be cleared. `Ok(false)` if it does not exist.
pub fn check(dir: &Path, roots: &[PathBuf]) -> Result<bool, ScratchError> {
    rejuv_core::config::check_scratch_dir(dir, roots).map_err(|r| refuse(dir, r))?;
    // The path and every ancestor: none may be a symlink.
    for p in dir.ancestors() {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(
                    dir,
                    format!(
                        "{} is a symlink; scratch paths are never followed through one",
                        p.display()
                    ),
                ));
            }
            Ok(m) if p == dir && !m.is_dir() => return Err(refuse(dir, "not a directory")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && p == dir => return Ok(false),
            Err(source) => {
                return Err(ScratchError::Inspect {
                    path: p.into(),
                    source,
                })
            }
        }
    }
    let canon = std::fs::canonicalize(dir).map_err(|source| ScratchError::Inspect {
        path: dir.into(),
        source,
    })?;
    if canon != dir {
        return Err(refuse(dir, format!("resolves to {}", canon.display())));
    }
    // Roots may themselves sit behind a symlink; compare against their real paths too.
    let canon_roots: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .chain(roots.iter().cloned())
        .collect();
    rejuv_core::config::check_scratch_dir(&canon, &canon_roots)
        .map_err(|r| refuse(dir, format!("real path {}", r)))?;
    Ok(true)
}

/// Opens `dir` from `/`, one component at a time, refusing symlinks at every step.
fn open_nofollow(dir: &Path) -> Result<Dir, ScratchError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur = Dir::open("/", flags, Mode::empty()).map_err(|source| ScratchError::Open {
        path: "/".into(),
        source,
    })?;
    let mut so_far = PathBuf::from("/");
    for comp in dir.components() {
        let Component::Normal(name) = comp else {
            continue;
        };
        so_far.push(name);
        cur = Dir::openat(Some(cur.as_raw_fd()), name, flags, Mode::empty()).map_err(
            |e| match e {
                Errno::ELOOP | Errno::ENOTDIR => refuse(
                    dir,
                    format!("{} became a symlink or a file", so_far.display()),
                ),
                source => ScratchError::Open {
                    path: so_far.clone(),
                    source,
                },
            },
        )?;
    }
    Ok(cur)
}

struct Walk {
    dev: u64,
    removed: u64,
    problems: Vec<String>,
    skipped_mounts: Vec<PathBuf>,
}

/// Problems kept for the report (the count goes on beyond it).
const PROBLEMS_KEPT: usize = 64;

/// A directory the walk went down from: where to come back to, and what to leave there.
struct Frame {
    dev: u64,
    ino: u64,
    path: PathBuf,
    /// The child directory entered from here.
    child: CString,
    skip: HashSet<Vec<u8>>,
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl Walk {
    fn problem(&mut self, text: String) {
        if self.problems.len() < PROBLEMS_KEPT {
            self.problems.push(text);
        } else if self.problems.len() == PROBLEMS_KEPT {
            self.problems.push("... more problems not listed".into());
        }
    }

    /// Removes the entries of `dir` that are not directories, and names the first
    /// subdirectory (on this filesystem, not in `skip`) to go down into.
    fn sweep(
        &mut self,
        dir: &mut Dir,
        path: &Path,
        skip: &mut HashSet<Vec<u8>>,
    ) -> Option<CString> {
        let names: Vec<CString> = dir
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .filter(|n| !skip.contains(n.as_bytes()))
            .collect();
        let fd = dir.as_raw_fd();
        for name in names {
            let child = path.join(OsStr::from_bytes(name.as_bytes()));
            let st = match fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => {
                    self.problem(format!("{}: {e}", child.display()));
                    skip.insert(name.as_bytes().to_vec());
                    continue;
                }
            };
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            if !is_dir {
                // Files, sockets, fifos and symlinks: unlink removes the entry itself.
                match unlinkat(Some(fd), name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) => self.removed += 1,
                    Err(Errno::ENOENT) => {}
                    Err(e) => {
                        self.problem(format!("{}: {e}", child.display()));
                        skip.insert(name.as_bytes().to_vec());
                    }
                }
            } else if st.st_dev != self.dev {
                self.skipped_mounts.push(child);
                skip.insert(name.as_bytes().to_vec());
            } else {
                return Some(name);
            }
        }
        None
    }

    /// Removes everything inside the open directory `top` (shown as `path`), at any depth,
    /// without recursion and with two directories open at most: the walk goes down through
    /// `openat(O_NOFOLLOW)` and back up through `..`, checking that `..` is the directory it
    /// came from (a tree moved away during the walk stops it instead of leading it elsewhere).
    fn clear(&mut self, top: Dir, path: &Path) {
        let mut cur = top;
        let mut cur_path = path.to_path_buf();
        let mut skip = HashSet::new();
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            if let Some(name) = self.sweep(&mut cur, &cur_path, &mut skip) {
                let child_path = cur_path.join(OsStr::from_bytes(name.as_bytes()));
                match Dir::openat(
                    Some(cur.as_raw_fd()),
                    name.as_c_str(),
                    dir_flags(),
                    Mode::empty(),
                ) {
                    Ok(sub) => {
                        let Ok(st) = fstat(cur.as_raw_fd()) else {
                            self.problem(format!("{}: cannot stat", cur_path.display()));
                            return;
                        };
                        stack.push(Frame {
                            dev: st.st_dev,
                            ino: st.st_ino,
                            path: std::mem::replace(&mut cur_path, child_path),
                            child: name,
                            skip: std::mem::take(&mut skip),
                        });
                        cur = sub;
                    }
                    Err(e) => {
                        self.problem(format!("{}: {e}", child_path.display()));
                        skip.insert(name.as_bytes().to_vec());
                    }
                }
                continue;
            }
            // `cur` holds nothing more that can go: back up, and remove it if it is empty.
            let Some(frame) = stack.pop() else {
                return;
            };
            let parent = match Dir::openat(Some(cur.as_raw_fd()), c"..", dir_flags(), Mode::empty())
            {
                Ok(p) => p,
                Err(e) => {
                    self.problem(format!("{}/..: {e}", cur_path.display()));
                    return;
                }
            };
            match fstat(parent.as_raw_fd()) {
                Ok(st) if st.st_dev == frame.dev && st.st_ino == frame.ino => {}
                _ => {
                    self.problem(format!(
                        "{} was moved while it was being cleared; stopped",
                        cur_path.display()
                    ));
                    return;
                }
            }
            let emptied = skip.is_empty();
            cur = parent;
            cur_path = frame.path;
            skip = frame.skip;
            if emptied {
                match unlinkat(
                    Some(cur.as_raw_fd()),
                    frame.child.as_c_str(),
                    UnlinkatFlags::RemoveDir,
                ) {
                    Ok(()) => self.removed += 1,
                    Err(Errno::ENOENT) => {}
                    Err(e) => {
                        let child = cur_path.join(OsStr::from_bytes(frame.child.as_bytes()));
                        self.problem(format!("{}: {e}", child.display()));
                        skip.insert(frame.child.as_bytes().to_vec());
                    }
                }
            } else {
                skip.insert(frame.child.as_bytes().to_vec());
            }
        }
    }
}

/// Removes the contents of scratch directory `dir`. Blocking.
pub fn clear(dir: &Path, roots: &[PathBuf]) -> Result<Cleared, ScratchError> {
    if !check(dir, roots)? {
        return Ok(Cleared::Absent);
    }
    let d = open_nofollow(dir)?;
    let dev = fstat(d.as_raw_fd())
        .map_err(|source| ScratchError::Open {
            path: dir.into(),
            source,
        })?
        .st_dev;
    let mut walk = Walk {
        dev,
        removed: 0,
        problems: vec![],
        skipped_mounts: vec![],
    };
    walk.clear(d, dir);
    if walk.problems.is_empty() {
        Ok(Cleared::Removed {
            entries: walk.removed,
            skipped_mounts: walk.skipped_mounts,
        })
    } else {
        Err(ScratchError::Partial {
            dir: dir.into(),
            removed: walk.removed,
            problems: walk.problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn clears_contents_and_keeps_link_targets() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let scratch = root.join("scratch");
        std::fs::create_dir_all(scratch.join("a/b/c")).unwrap();
        std::fs::write(scratch.join("a/b/c/f"), "x").unwrap();
        std::fs::write(scratch.join("top"), "x").unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "keep").unwrap();
        symlink(&outside, scratch.join("link-to-dir")).unwrap();
        symlink(outside.join("victim"), scratch.join("a/link-to-file")).unwrap();
        let got = clear(&scratch, std::slice::from_ref(&root)).unwrap();
        // a, a/b, a/b/c, a/b/c/f, top, link-to-dir, a/link-to-file
        assert_eq!(
            got,
            Cleared::Removed {
                entries: 7,
                skipped_mounts: vec![]
            }
        );
        assert!(scratch.is_dir());
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn a_scratch_tree_deeper_than_128_levels_is_cleared() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let scratch = root.join("scratch");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "keep").unwrap();
        let mut deep = scratch.clone();
        for i in 0..1000 {
            deep.push("d");
            if i % 100 == 0 {
                std::fs::create_dir_all(&deep).unwrap();
                std::fs::write(deep.join("f"), "x").unwrap();
                std::fs::create_dir_all(deep.join("side")).unwrap();
            }
        }
        std::fs::create_dir_all(&deep).unwrap();
        symlink(&outside, deep.join("out")).unwrap();
        // 1000 d's, 10 files, 10 side dirs, one link.
        let got = clear(&scratch, std::slice::from_ref(&root)).unwrap();
        assert_eq!(
            got,
            Cleared::Removed {
                entries: 1021,
                skipped_mounts: vec![]
            }
        );
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "keep"
        );
        // And the next clear, of an empty directory, is a success too.
        assert!(clear(&scratch, std::slice::from_ref(&root)).is_ok());
    }

    #[test]
    fn refuses_symlinked_paths_and_outsiders() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "keep").unwrap();
        // The scratch dir itself is a symlink.
        symlink(&outside, root.join("scratch")).unwrap();
        let e = clear(&root.join("scratch"), std::slice::from_ref(&root)).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // An ancestor is a symlink.
        symlink(&outside, root.join("via")).unwrap();
        std::fs::create_dir_all(outside.join("inner")).unwrap();
        std::fs::write(outside.join("inner/victim2"), "keep").unwrap();
        let e = clear(&root.join("via/inner"), std::slice::from_ref(&root)).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        // Outside the roots.
        let e = clear(&outside, std::slice::from_ref(&root)).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(outside.join("victim").exists() && outside.join("inner/victim2").exists());
        // Absent is fine.
        assert_eq!(
            clear(&root.join("nope"), std::slice::from_ref(&root)).unwrap(),
            Cleared::Absent
        );
    }
}
