//! `copy`, `template` and `file`: content and metadata of paths.
//!
//! Writes go to a temporary file in the destination directory, are fsynced,
//! then renamed over the destination, so readers see the old or the new
//! content, never a partial one. Symlinks are switched the same way.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{CopyArgs, FileArgs, FileState, ModuleOutput, TaskEnv, TemplateArgs};

/// Resolves `owner`/`group` (names or numeric ids).
fn ids(owner: Option<&str>, group: Option<&str>) -> Result<(Option<u32>, Option<u32>), String> {
    let uid = match owner {
        None => None,
        Some(o) => Some(match o.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::User::from_name(o)
                .map_err(|e| format!("looking up user `{o}`: {e}"))?
                .ok_or_else(|| format!("no such user `{o}`"))?
                .uid
                .as_raw(),
        }),
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(g)
                .map_err(|e| format!("looking up group `{g}`: {e}"))?
                .ok_or_else(|| format!("no such group `{g}`"))?
                .gid
                .as_raw(),
        }),
    };
    Ok((uid, gid))
}

/// Applies mode and ownership; true when something changed.
fn apply_meta(
    path: &Path,
    mode: Option<u32>,
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<bool, String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut changed = false;
    if let Some(m) = mode {
        if meta.mode() & 0o7777 != m {
            fs::set_permissions(path, fs::Permissions::from_mode(m))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
            changed = true;
        }
    }
    let (uid, gid) = ids(owner, group)?;
    let uid = uid.filter(|u| *u != meta.uid());
    let gid = gid.filter(|g| *g != meta.gid());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid)
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
        changed = true;
    }
    Ok(changed)
}

/// Writes `bytes` to `dest` atomically unless it already holds them.
/// Returns whether anything changed.
pub(crate) fn write_atomic(
    dest: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<bool, String> {
    let same = fs::read(dest).map(|b| b == bytes).unwrap_or(false);
    if same {
        return apply_meta(dest, mode, owner, group);
    }
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".vesemir-")
        .tempfile_in(dir)
        .map_err(|e| format!("temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| format!("writing {}: {e}", tmp.path().display()))?;
    // Keep an existing file's mode unless one is asked for; tempfile makes 0600.
    let mode = mode.or_else(|| fs::metadata(dest).ok().map(|m| m.mode() & 0o7777));
    let mode = mode.unwrap_or(0o644);
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod: {e}"))?;
    apply_meta(tmp.path(), None, owner, group)?;
    tmp.persist(dest)
        .map_err(|e| format!("renaming into {}: {}", dest.display(), e.error))?;
    Ok(true)
}

fn outcome(r: Result<bool, String>, what: &str) -> ModuleOutput {
    match r {
        Ok(true) => ModuleOutput::changed(what.to_string()),
        Ok(false) => ModuleOutput::ok(what.to_string()),
        Err(e) => ModuleOutput::failed(e),
    }
}

/// `copy`: content or a file to `dest`.
pub(crate) async fn copy(a: &CopyArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    let bytes = match (&a.content, &a.src) {
        (Some(c), _) => c.clone().into_bytes(),
        (None, Some(src)) => {
            let p = env.resolve(src);
            match fs::read(&p) {
                Ok(b) => b,
                Err(e) => return ModuleOutput::failed(format!("reading {}: {e}", p.display())),
            }
        }
        (None, None) => return ModuleOutput::failed("nothing to copy"),
    };
    outcome(
        write_atomic(
            &a.dest,
            &bytes,
            a.mode,
            a.owner.as_deref(),
            a.group.as_deref(),
        ),
        &a.dest.display().to_string(),
    )
}

/// `template`: render a minijinja file with the task context to `dest`.
pub(crate) async fn template(a: &TemplateArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    let p = env.resolve(&a.src);
    let src = match fs::read_to_string(&p) {
        Ok(s) => s,
        Err(e) => return ModuleOutput::failed(format!("reading {}: {e}", p.display())),
    };
    let name = p.display().to_string();
    let rendered = match env
        .templates
        .template_from_named_str(&name, &src)
        .and_then(|t| t.render(env.ctx))
    {
        Ok(r) => r,
        Err(e) => return ModuleOutput::failed(format!("rendering {}: {e:#}", p.display())),
    };
    outcome(
        write_atomic(
            &a.dest,
            rendered.as_bytes(),
            a.mode,
            a.owner.as_deref(),
            a.group.as_deref(),
        ),
        &a.dest.display().to_string(),
    )
}

/// Points `link` at `target`, atomically replacing an existing symlink.
pub(crate) fn switch_symlink(link: &Path, target: &Path) -> Result<bool, String> {
    match fs::symlink_metadata(link) {
        Ok(m)
            if m.file_type().is_symlink()
                && fs::read_link(link).map(|t| t == target).unwrap_or(false) =>
        {
            return Ok(false)
        }
        Ok(m) if m.is_dir() => {
            return Err(format!(
                "{} is a directory, refusing to replace it with a link",
                link.display()
            ))
        }
        _ => {}
    }
    let name = link
        .file_name()
        .ok_or_else(|| format!("{} has no file name", link.display()))?;
    let tmp = link.with_file_name(format!(
        ".{}.vesemir-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| format!("creating link {}: {e}", tmp.display()))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(format!("switching {}: {e}", link.display()));
    }
    Ok(true)
}

/// `file`: directory / link / absent / file / touch, plus mode and owner.
pub(crate) async fn file(a: &FileArgs, _env: &TaskEnv<'_>) -> ModuleOutput {
    let p = &a.path;
    let owner = a.owner.as_deref();
    let group = a.group.as_deref();
    let r: Result<bool, String> = (|| match a.state {
        FileState::Directory => {
            let created = match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => false,
                Ok(_) => return Err(format!("{} exists and is not a directory", p.display())),
                Err(_) => {
                    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
                    true
                }
            };
            Ok(apply_meta(p, a.mode, owner, group)? || created)
        }
        FileState::Absent => match fs::symlink_metadata(p) {
            Err(_) => Ok(false),
            Ok(m) if m.is_dir() => fs::remove_dir_all(p)
                .map(|_| true)
                .map_err(|e| format!("removing {}: {e}", p.display())),
            Ok(_) => fs::remove_file(p)
                .map(|_| true)
                .map_err(|e| format!("removing {}: {e}", p.display())),
        },
        FileState::Symlink => {
            let src = a.src.as_ref().expect("checked at parse");
            switch_symlink(p, src)
        }
        FileState::File => {
            if fs::symlink_metadata(p).is_err() {
                return Err(format!("{} does not exist", p.display()));
            }
            apply_meta(p, a.mode, owner, group)
        }
        FileState::Touch => {
            let created = if fs::symlink_metadata(p).is_err() {
                fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
                true
            } else {
                false
            };
            Ok(apply_meta(p, a.mode, owner, group)? || created)
        }
    })();
    outcome(r, &p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_reports_change_once() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.conf");
        assert!(write_atomic(&f, b"x=1\n", Some(0o640), None, None).unwrap());
        assert!(!write_atomic(&f, b"x=1\n", Some(0o640), None, None).unwrap());
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
        assert!(write_atomic(&f, b"x=1\n", Some(0o600), None, None).unwrap());
        assert!(write_atomic(&f, b"x=2\n", None, None, None).unwrap());
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"x=2\n");
    }

    #[test]
    fn symlink_switch() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("current");
        assert!(switch_symlink(&link, Path::new("releases/1")).unwrap());
        assert!(!switch_symlink(&link, Path::new("releases/1")).unwrap());
        assert!(switch_symlink(&link, Path::new("releases/2")).unwrap());
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("releases/2"));
        fs::create_dir(d.path().join("dir")).unwrap();
        assert!(switch_symlink(&d.path().join("dir"), Path::new("x")).is_err());
        // No temporary links are left behind.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
