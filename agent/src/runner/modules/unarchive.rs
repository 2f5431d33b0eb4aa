//! `unarchive`: tar.gz into an existing directory, as Ansible does, refusing
//! anything that escapes it.
//!
//! As in Ansible, `dest` must be an existing directory and the archive's
//! entries are extracted into it (files already there and not in the archive
//! stay); the task is `ok` when every entry is already there with the same
//! type, content, mode and link target, `changed` otherwise.
//!
//! The archive is first unpacked into a fresh temporary directory next to
//! `dest` and moved in only when every entry passed, so a refused or broken
//! archive changes nothing in `dest`. Refused (deliberately stricter than
//! Ansible, which hands the archive to GNU tar): absolute paths, `..`
//! components, symlinks whose target leaves the tree, hard links to paths
//! outside it, entries written through a symlink (in the archive or already
//! in `dest`), device nodes and fifos.

use std::fs;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::{ModuleOutput, TaskEnv, UnarchiveArgs};

/// A refused or failed extraction: the message names the entry and why
/// (an unsafe path or link, or the IO error), and nothing was moved into
/// the destination.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refusal(String);

impl From<String> for Refusal {
    fn from(m: String) -> Self {
        Refusal(m)
    }
}

/// The entry path as a safe relative path, after dropping `strip` leading
/// components (None when nothing is left).
fn safe_relative(raw: &Path, strip: usize) -> Result<Option<PathBuf>, Refusal> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("entry `{}` contains `..`", raw.display()).into())
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry `{}` is an absolute path", raw.display()).into())
            }
        }
    }
    if parts.len() <= strip {
        return Ok(None);
    }
    Ok(Some(parts[strip..].iter().collect()))
}

/// Whether a symlink at `rel` pointing to `target` stays inside the tree,
/// judged lexically.
fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: Vec<&std::ffi::OsStr> = rel
        .parent()
        .map(|p| {
            p.components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Refuses writing through a symlink that an earlier entry created.
fn no_symlink_on_the_way(root: &Path, rel: &Path) -> Result<(), Refusal> {
    let mut p = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        p.push(c);
        if let Ok(m) = fs::symlink_metadata(&p) {
            if m.file_type().is_symlink() {
                return Err(format!(
                    "entry `{}` would be written through the symlink `{}`",
                    rel.display(),
                    p.strip_prefix(root).unwrap_or(&p).display()
                )
                .into());
            }
        }
    }
    Ok(())
}

fn prepare(root: &Path, rel: &Path) -> Result<PathBuf, Refusal> {
    no_symlink_on_the_way(root, rel)?;
    let target = root.join(rel);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    if let Ok(m) = fs::symlink_metadata(&target) {
        if !m.is_dir() {
            let _ = fs::remove_file(&target);
        }
    }
    Ok(target)
}

/// Unpacks `src` (tar.gz) into the fresh directory `root`; returns entries unpacked.
pub(crate) fn unpack_into(src: &Path, root: &Path, strip: usize) -> Result<usize, Refusal> {
    let file = fs::File::open(src).map_err(|e| format!("opening {}: {e}", src.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_permissions(false);
    let mut count = 0;
    let mut dir_modes = Vec::new();
    let bad = |e: std::io::Error| format!("reading {}: {e}", src.display());
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let Some(rel) = safe_relative(&raw, strip)? else {
            continue;
        };
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Directory => {
                no_symlink_on_the_way(root, &rel)?;
                fs::create_dir_all(root.join(&rel))
                    .map_err(|e| format!("mkdir {}: {e}", rel.display()))?;
                if let Ok(m) = entry.header().mode() {
                    dir_modes.push((root.join(&rel), m & 0o7777));
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let target = prepare(root, &rel)?;
                entry
                    .unpack(&target)
                    .map_err(|e| format!("unpacking {}: {e}", rel.display()))?;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| format!("symlink `{}` has no target", raw.display()))?
                    .into_owned();
                if !link_stays_inside(&rel, &link) {
                    return Err(format!(
                        "symlink `{}` points outside the destination (`{}`)",
                        raw.display(),
                        link.display()
                    )
                    .into());
                }
                let target = prepare(root, &rel)?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| format!("symlink {}: {e}", rel.display()))?;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| format!("hard link `{}` has no target", raw.display()))?
                    .into_owned();
                let Some(link_rel) = safe_relative(&link, strip).map_err(|e| {
                    format!(
                        "hard link `{}` points outside the destination: {e}",
                        raw.display()
                    )
                })?
                else {
                    return Err(format!("hard link `{}` has an empty target", raw.display()).into());
                };
                no_symlink_on_the_way(root, &link_rel)?;
                let existing = root.join(&link_rel);
                match fs::symlink_metadata(&existing) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(format!(
                            "hard link `{}` must point at a regular file unpacked before it",
                            raw.display()
                        )
                        .into())
                    }
                }
                let target = prepare(root, &rel)?;
                fs::hard_link(&existing, &target)
                    .map_err(|e| format!("hard link {}: {e}", rel.display()))?;
            }
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            other => {
                return Err(
                    format!("entry `{}` has unsupported type {other:?}", raw.display()).into(),
                )
            }
        }
        count += 1;
    }
    // Directory modes last, so a read-only directory does not stop its
    // own entries being written (GNU tar does the same).
    use std::os::unix::fs::PermissionsExt;
    for (p, m) in dir_modes.into_iter().rev() {
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(m));
    }
    check_links_resolve_inside(root)?;
    Ok(count)
}

/// Second line of defence: links that resolve (through other links) to a
/// place outside the tree are refused even when each looked fine alone.
fn check_links_resolve_inside(root: &Path) -> Result<(), Refusal> {
    let croot = fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_symlink() {
                if let Ok(real) = fs::canonicalize(&p) {
                    if !real.starts_with(&croot) {
                        return Err(format!(
                            "symlink `{}` resolves outside the destination",
                            p.strip_prefix(root).unwrap_or(&p).display()
                        )
                        .into());
                    }
                }
            } else if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(())
}

/// Whether `dest/rel` already is what `staged/rel` is (type, content,
/// mode, link target), for every entry of the staged tree.
fn already_there(staged: &Path, dest: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = fs::read_dir(staged.join(&rel)) else {
            return false;
        };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let (s, d) = (staged.join(&r), dest.join(&r));
            let (Ok(sm), Ok(dm)) = (fs::symlink_metadata(&s), fs::symlink_metadata(&d)) else {
                return false;
            };
            let (st, dt) = (sm.file_type(), dm.file_type());
            if st.is_symlink() {
                if !dt.is_symlink() || fs::read_link(&s).ok() != fs::read_link(&d).ok() {
                    return false;
                }
                continue;
            }
            if sm.mode() & 0o7777 != dm.mode() & 0o7777 {
                return false;
            }
            if st.is_dir() {
                if !dt.is_dir() {
                    return false;
                }
                stack.push(r);
            } else if !dt.is_file()
                || sm.len() != dm.len()
                || fs::read(&s).ok() != fs::read(&d).ok()
            {
                return false;
            }
        }
    }
    true
}

/// Moves the staged tree into `dest`, entry by entry; never through a
/// symlink already in `dest`, never replacing a directory with a file.
fn merge(staged: &Path, dest: &Path, rel: &Path) -> Result<(), Refusal> {
    let rd = fs::read_dir(staged.join(rel)).map_err(|e| format!("{}: {e}", staged.display()))?;
    for e in rd.flatten() {
        let r = rel.join(e.file_name());
        let (s, d) = (staged.join(&r), dest.join(&r));
        let sm = fs::symlink_metadata(&s).map_err(|e| format!("{}: {e}", s.display()))?;
        match fs::symlink_metadata(&d) {
            Ok(dm) if dm.file_type().is_symlink() && sm.is_dir() => {
                return Err(format!(
                    "`{}` in the destination is a symlink; refusing to extract through it",
                    r.display()
                )
                .into())
            }
            Ok(dm) if dm.is_dir() && sm.is_dir() => {
                merge(staged, dest, &r)?;
                let _ = fs::set_permissions(&d, sm.permissions());
                continue;
            }
            Ok(dm) if dm.is_dir() => {
                return Err(format!(
                    "`{}` is a directory in the destination and a file in the archive",
                    r.display()
                )
                .into())
            }
            Ok(_) if sm.is_dir() => {
                fs::remove_file(&d).map_err(|e| format!("removing {}: {e}", d.display()))?;
            }
            _ => {}
        }
        fs::rename(&s, &d).map_err(|e| format!("moving into {}: {e}", d.display()))?;
    }
    Ok(())
}

/// Extracts `src` into the existing directory `dest`; `None` when every
/// entry was already there.
pub(crate) fn extract(src: &Path, dest: &Path, strip: usize) -> Result<Option<usize>, Refusal> {
    if !dest.is_dir() {
        return Err(format!(
            "dest `{}` must be an existing directory (as in Ansible: create it first, e.g. with              `file: path={} state=directory`)",
            dest.display(),
            dest.display()
        ).into());
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(dest);
    let tmp = tempfile::Builder::new()
        .prefix(".vesemir-unpack-")
        .tempdir_in(parent)
        .map_err(|e| format!("temporary directory in {}: {e}", parent.display()))?;
    let count = unpack_into(src, tmp.path(), strip)?;
    if already_there(tmp.path(), dest) {
        return Ok(None);
    }
    merge(tmp.path(), dest, Path::new(""))?;
    Ok(Some(count))
}

/// `unarchive` module.
pub(crate) async fn run(a: &UnarchiveArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    if let Some(c) = &a.creates {
        if c.exists() {
            // Ansible reports this one as skipped (unlike command's creates).
            return ModuleOutput {
                status: Some(vesemir_protocol::job::TaskStatus::Skipped),
                msg: format!("skipped, since {} exists", c.display()),
                ..Default::default()
            };
        }
    }
    let src = if a.remote_src {
        a.src.clone()
    } else {
        env.resolve_in(&a.src, "files")
    };
    if !src.is_file() {
        return ModuleOutput::failed(format!(
            "src `{}` does not exist{}",
            src.display(),
            if a.remote_src {
                ""
            } else {
                " (remote_src: false looks next to the playbook and in its files/)"
            }
        ));
    }
    let dest = a.dest.clone();
    let strip = a.strip_components;
    let r = tokio::task::spawn_blocking(move || extract(&src, &dest, strip)).await;
    let mut o = match r {
        Ok(Ok(None)) => ModuleOutput::ok(format!(
            "{} already holds the archive's files",
            a.dest.display()
        )),
        Ok(Ok(Some(n))) => {
            env.log(format!("unpacked {n} entries into {}", a.dest.display()))
                .await;
            ModuleOutput::changed(format!("unpacked into {}", a.dest.display()))
        }
        Ok(Err(e)) => ModuleOutput::failed(format!("refused/failed: {e}")),
        Err(e) => ModuleOutput::failed(format!("unpacking task failed: {e}")),
    };
    o.extra.insert(
        "dest".into(),
        serde_json::Value::String(a.dest.display().to_string()),
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let ok = |s: &str, strip: usize| safe_relative(Path::new(s), strip).unwrap();
        assert_eq!(ok("a/./b", 0), Some(PathBuf::from("a/b")));
        assert_eq!(ok("top/a", 1), Some(PathBuf::from("a")));
        assert_eq!(ok("top", 1), None);
        assert!(safe_relative(Path::new("a/../../x"), 0).is_err());
        assert!(safe_relative(Path::new("/etc/passwd"), 0).is_err());
    }

    #[test]
    fn link_targets() {
        let inside = |rel: &str, t: &str| link_stays_inside(Path::new(rel), Path::new(t));
        assert!(inside("a/b", "c"));
        assert!(inside("a/b", "../c"));
        assert!(!inside("a/b", "../../c"));
        assert!(!inside("b", "/etc"));
        assert!(inside("a/b", "./x/../y"));
    }
}
