//! `copy`, `template` and `file`: content and metadata of paths.
//!
//! Writes go to a temporary file in the destination directory, are fsynced,
//! then renamed over the destination, so readers see the old or the new
//! content, never a partial one. Symlinks are switched the same way.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde_json::Value;

use super::{
    CopyArgs, FileArgs, FileState, InsertBefore, LineinfileArgs, ModuleOutput, TaskEnv,
    TemplateArgs,
};

/// Why a path could not be brought to the state a task asks for. The
/// message is the task's failure message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    /// A filesystem call failed; `doing` names the call and its path.
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
    /// Looking up a user or group name failed (not "no such name").
    #[error("looking up {kind} `{name}`: {source}")]
    Lookup {
        kind: &'static str,
        name: String,
        source: nix::Error,
    },
    /// No user or group has this name: create it first or give a number.
    #[error("no such {kind} `{name}`")]
    NoSuch { kind: &'static str, name: String },
    /// The path is in a state the module will not change; the message
    /// says what is in the way and, where there is one, the way round it.
    #[error("{0}")]
    Refused(String),
}

/// Wraps an IO error with what was being done.
fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> FileError {
    let doing = doing.into();
    move |source| FileError::Io { doing, source }
}

/// Resolves `owner`/`group` (names or numeric ids).
fn ids(owner: Option<&str>, group: Option<&str>) -> Result<(Option<u32>, Option<u32>), FileError> {
    let uid = match owner {
        None => None,
        Some(o) => Some(match o.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::User::from_name(o)
                .map_err(|source| FileError::Lookup {
                    kind: "user",
                    name: o.to_string(),
                    source,
                })?
                .ok_or_else(|| FileError::NoSuch {
                    kind: "user",
                    name: o.to_string(),
                })?
                .uid
                .as_raw(),
        }),
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(g)
                .map_err(|source| FileError::Lookup {
                    kind: "group",
                    name: g.to_string(),
                    source,
                })?
                .ok_or_else(|| FileError::NoSuch {
                    kind: "group",
                    name: g.to_string(),
                })?
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
) -> Result<bool, FileError> {
    let meta = fs::symlink_metadata(path).map_err(io(path.display().to_string()))?;
    let mut changed = false;
    if let Some(m) = mode {
        if meta.mode() & 0o7777 != m {
            fs::set_permissions(path, fs::Permissions::from_mode(m))
                .map_err(io(format!("chmod {}", path.display())))?;
            changed = true;
        }
    }
    let (uid, gid) = ids(owner, group)?;
    let uid = uid.filter(|u| *u != meta.uid());
    let gid = gid.filter(|g| *g != meta.gid());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid)
            .map_err(io(format!("chown {}", path.display())))?;
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
) -> Result<bool, FileError> {
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
        .map_err(io(format!("temporary file in {}", dir.display())))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(io(format!("writing {}", tmp.path().display())))?;
    // Keep an existing file's mode unless one is asked for; tempfile makes 0600.
    let mode = mode.or_else(|| fs::metadata(dest).ok().map(|m| m.mode() & 0o7777));
    let mode = mode.unwrap_or(0o644);
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
    apply_meta(tmp.path(), None, owner, group)?;
    tmp.persist(dest).map_err(|e| FileError::Io {
        doing: format!("renaming into {}", dest.display()),
        source: e.error,
    })?;
    Ok(true)
}

fn outcome(r: Result<bool, FileError>, what: &str) -> ModuleOutput {
    match r {
        Ok(true) => ModuleOutput::changed(what.to_string()),
        Ok(false) => ModuleOutput::ok(what.to_string()),
        Err(e) => ModuleOutput::failed(e.to_string()),
    }
}

/// `copy`: content or a file to `dest`.
pub(crate) async fn copy(a: &CopyArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    let bytes = match (&a.content, &a.src) {
        (Some(c), _) => c.clone().into_bytes(),
        (None, Some(src)) => {
            let p = env.resolve_in(src, "files");
            match fs::read(&p) {
                Ok(b) => b,
                Err(e) => return ModuleOutput::failed(format!("reading {}: {e}", p.display())),
            }
        }
        (None, None) => return ModuleOutput::failed("nothing to copy"),
    };
    // As Ansible: a `dest` that is a directory (or ends in `/`) receives
    // the file under the source's name.
    let dir_dest = a.dest.is_dir() || a.dest.as_os_str().to_string_lossy().ends_with('/');
    let dest = match (&a.src, dir_dest) {
        (_, false) => a.dest.clone(),
        (Some(src), true) => match src.file_name() {
            Some(n) => {
                if let Err(e) = fs::create_dir_all(&a.dest) {
                    return ModuleOutput::failed(format!("mkdir {}: {e}", a.dest.display()));
                }
                a.dest.join(n)
            }
            None => return ModuleOutput::failed("`src` has no file name"),
        },
        (None, true) => {
            return ModuleOutput::failed(format!(
                "can not use content with a dir as dest ({})",
                a.dest.display()
            ))
        }
    };
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return ModuleOutput::failed(format!(
                "Destination directory {} does not exist",
                parent.display()
            ));
        }
    }
    let mut o = outcome(
        write_atomic(
            &dest,
            &bytes,
            a.mode,
            a.owner.as_deref(),
            a.group.as_deref(),
        ),
        &dest.display().to_string(),
    );
    o.extra
        .insert("dest".into(), Value::String(dest.display().to_string()));
    o
}

/// `template`: render a minijinja file with the task context to `dest`.
pub(crate) async fn template(a: &TemplateArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    let p = env.resolve_in(&a.src, "templates");
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
pub(crate) fn switch_symlink(link: &Path, target: &Path) -> Result<bool, FileError> {
    match fs::symlink_metadata(link) {
        Ok(m)
            if m.file_type().is_symlink()
                && fs::read_link(link).map(|t| t == target).unwrap_or(false) =>
        {
            return Ok(false)
        }
        Ok(m) if m.is_dir() => {
            return Err(FileError::Refused(format!(
                "{} is a directory, refusing to replace it with a link",
                link.display()
            )))
        }
        _ => {}
    }
    let name = link
        .file_name()
        .ok_or_else(|| FileError::Refused(format!("{} has no file name", link.display())))?;
    let tmp = link.with_file_name(format!(
        ".{}.vesemir-{}",
        name.to_string_lossy(),
        uuid::Uuid::new_v4().simple()
    ));
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(io(format!("creating link {}", tmp.display())))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(io(format!("switching {}", link.display()))(e));
    }
    Ok(true)
}

/// `file`: directory / link / absent / file / touch, plus mode and owner.
pub(crate) async fn file(a: &FileArgs, _env: &TaskEnv<'_>) -> ModuleOutput {
    let p = &a.path;
    let owner = a.owner.as_deref();
    let group = a.group.as_deref();
    let r: Result<bool, FileError> = (|| match a.state {
        FileState::Directory => {
            let created = match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => false,
                Ok(_) => {
                    return Err(FileError::Refused(format!(
                        "{} exists and is not a directory",
                        p.display()
                    )))
                }
                Err(_) => {
                    // As Ansible: every directory created on the way gets
                    // the mode too, not only the last one.
                    let mut missing = Vec::new();
                    let mut cur = Some(p.as_path());
                    while let Some(c) = cur {
                        if c.as_os_str().is_empty() || fs::symlink_metadata(c).is_ok() {
                            break;
                        }
                        missing.push(c.to_path_buf());
                        cur = c.parent();
                    }
                    for d in missing.iter().rev() {
                        fs::create_dir(d).map_err(io(format!("mkdir {}", d.display())))?;
                        if let Some(m) = a.mode {
                            fs::set_permissions(d, fs::Permissions::from_mode(m))
                                .map_err(io(format!("chmod {}", d.display())))?;
                        }
                    }
                    true
                }
            };
            Ok(apply_meta(p, a.mode, owner, group)? || created)
        }
        FileState::Absent => match fs::symlink_metadata(p) {
            Err(_) => Ok(false),
            Ok(m) if m.is_dir() => fs::remove_dir_all(p)
                .map(|_| true)
                .map_err(io(format!("removing {}", p.display()))),
            Ok(_) => fs::remove_file(p)
                .map(|_| true)
                .map_err(io(format!("removing {}", p.display()))),
        },
        FileState::Symlink => {
            let src = a.src.as_ref().expect("checked at parse");
            let meta = fs::symlink_metadata(p);
            if let Ok(m) = &meta {
                if m.is_file() && !a.force {
                    return Err(FileError::Refused(format!(
                        "refusing to convert from file to symlink for {} (set `force: true` to replace it)",
                        p.display()
                    )));
                }
            }
            let resolved = if src.is_absolute() {
                src.clone()
            } else {
                p.parent().unwrap_or(Path::new("/")).join(src)
            };
            if !a.force && fs::symlink_metadata(&resolved).is_err() {
                return Err(FileError::Refused(format!(
                    "src file does not exist, use \"force=yes\" if you really want to create the link: {}",
                    resolved.display()
                )));
            }
            switch_symlink(p, src)
        }
        FileState::File => {
            if fs::symlink_metadata(p).is_err() {
                return Err(FileError::Refused(format!(
                    "{} does not exist",
                    p.display()
                )));
            }
            apply_meta(p, a.mode, owner, group)
        }
        FileState::Touch => {
            // Ansible's touch always reports changed: it updates the times.
            if fs::symlink_metadata(p).is_err() {
                fs::File::create(p).map_err(io(format!("creating {}", p.display())))?;
            } else {
                let f = fs::OpenOptions::new()
                    .append(true)
                    .open(p)
                    .map_err(io(format!("touching {}", p.display())))?;
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            apply_meta(p, a.mode, owner, group)?;
            Ok(true)
        }
    })();
    outcome(r, &p.display().to_string())
}

/// `stat`'s registered `stat` value (None: the check-time placeholder).
pub(crate) fn stat_value(p: Option<&Path>) -> Value {
    let Some(p) = p else {
        return serde_json::json!({
            "exists": false, "path": "", "mode": "0000", "isdir": false, "isreg": false,
            "islnk": false, "size": 0, "uid": 0, "gid": 0, "lnk_target": "", "checksum": "",
        });
    };
    let Ok(m) = fs::symlink_metadata(p) else {
        return serde_json::json!({ "exists": false });
    };
    let ft = m.file_type();
    let mut v = serde_json::json!({
        "exists": true,
        "path": p.display().to_string(),
        "mode": format!("{:04o}", m.mode() & 0o7777),
        "isdir": ft.is_dir(),
        "isreg": ft.is_file(),
        "islnk": ft.is_symlink(),
        "size": m.size(),
        "uid": m.uid(),
        "gid": m.gid(),
    });
    let o = v.as_object_mut().expect("an object");
    if ft.is_symlink() {
        if let Ok(t) = fs::read_link(p) {
            o.insert("lnk_target".into(), Value::String(t.display().to_string()));
        }
    }
    if ft.is_file() {
        if let Ok(b) = fs::read(p) {
            use sha1::Digest;
            o.insert(
                "checksum".into(),
                Value::String(hex::encode(sha1::Sha1::digest(&b))),
            );
        }
    }
    v
}

/// `stat`: facts about a path, registered as `stat`; never changes anything.
pub(crate) async fn stat(p: &Path) -> ModuleOutput {
    let mut o = ModuleOutput::ok(p.display().to_string());
    o.extra.insert("stat".into(), stat_value(Some(p)));
    o
}

/// `lineinfile`, following Ansible 2.14's algorithm: with `regexp` the last
/// matching line is replaced, otherwise an identical line means no change;
/// a missing line goes after the last `insertafter` match (or EOF) or before
/// the last `insertbefore` match.
pub(crate) fn edit_lines(text: &str, a: &LineinfileArgs) -> (String, bool, &'static str) {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let strip = |l: &str| l.trim_end_matches(['\r', '\n']).to_string();
    if !a.present {
        let before = lines.len();
        lines.retain(|l| {
            let cur = strip(l);
            let hit = match (&a.regexp, &a.line) {
                (Some(r), _) => r.is_match(&cur),
                (None, Some(line)) => &cur == line,
                (None, None) => false,
            };
            !hit
        });
        let changed = lines.len() != before;
        return (
            lines.concat(),
            changed,
            if changed { "line(s) removed" } else { "" },
        );
    }
    let line = a.line.clone().unwrap_or_default();
    let (mut found, mut ins): (Option<usize>, Option<usize>) = (None, None);
    let ins_re = a.insert_after.as_ref().or(match &a.insert_before {
        Some(InsertBefore::Regex(r)) => Some(r),
        _ => None,
    });
    for (i, l) in lines.iter().enumerate() {
        let cur = strip(l);
        let hit = match &a.regexp {
            Some(r) => r.is_match(&cur),
            None => cur == line,
        };
        if hit {
            found = Some(i);
        } else if let Some(r) = ins_re {
            if r.is_match(&cur) {
                ins = Some(if a.insert_after.is_some() { i + 1 } else { i });
            }
        }
    }
    let new_line = format!("{line}\n");
    if let Some(i) = found {
        if lines[i] != new_line {
            lines[i] = new_line;
            return (lines.concat(), true, "line replaced");
        }
        return (lines.concat(), false, "");
    }
    if a.insert_before == Some(InsertBefore::Bof) {
        lines.insert(0, new_line);
        return (lines.concat(), true, "line added");
    }
    match ins {
        None => {
            if lines
                .last()
                .is_some_and(|l| !l.ends_with('\n') && !l.ends_with('\r'))
            {
                lines.push("\n".into());
            }
            lines.push(new_line);
            (lines.concat(), true, "line added")
        }
        Some(i) if a.insert_after.is_some() => {
            if i == lines.len() {
                if strip(&lines[i - 1]) != line {
                    lines.push(new_line);
                    return (lines.concat(), true, "line added");
                }
                (lines.concat(), false, "")
            } else if strip(&lines[i]) != line {
                lines.insert(i, new_line);
                (lines.concat(), true, "line added")
            } else {
                (lines.concat(), false, "")
            }
        }
        Some(i) => {
            lines.insert(i, new_line);
            (lines.concat(), true, "line added")
        }
    }
}

/// `lineinfile` module.
pub(crate) async fn lineinfile(a: &LineinfileArgs) -> ModuleOutput {
    let p = &a.path;
    let text = match fs::read(p) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !a.present {
                return ModuleOutput::ok("file not present");
            }
            if !a.create {
                let mut o = ModuleOutput::failed(format!(
                    "Destination {} does not exist ! (set `create: true` to create it)",
                    p.display()
                ));
                o.rc = Some(257);
                return o;
            }
            if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Err(e) = fs::create_dir_all(d) {
                    return ModuleOutput::failed(format!("mkdir {}: {e}", d.display()));
                }
            }
            String::new()
        }
        Err(e) => return ModuleOutput::failed(format!("reading {}: {e}", p.display())),
    };
    let (out, changed, msg) = edit_lines(&text, a);
    let r = if changed || !p.exists() {
        write_atomic(p, out.as_bytes(), a.mode, None, None)
    } else {
        apply_meta(p, a.mode, None, None)
    };
    let mut o = match r {
        Ok(c) if c || changed => ModuleOutput::changed(msg),
        Ok(_) => ModuleOutput::ok(msg),
        Err(e) => ModuleOutput::failed(e.to_string()),
    };
    o.extra
        .insert("backup".into(), Value::String(String::new()));
    o
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
