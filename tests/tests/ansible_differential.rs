//! The differential suite: every playbook under `tests/fixtures/ansible/`
//! is run by the real `ansible-playbook -c local` (Debian's ansible-core)
//! and by `vesemir-agent playbook run`, each in its own temp root passed as
//! the `root` var, twice. The trees they leave (paths, contents, modes,
//! link targets, with the root replaced by `<root>`), the recap counts
//! (ok/changed/failed/skipped) of both runs and the success of each run must
//! be identical. Downloads come from a local HTTP server this test starts.
//!
//! Where vesemir is deliberately stricter (`refused/`), only vesemir runs
//! and the test asserts the refusal; `playbooks/README.md` lists each.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use vesemir_testkit::fleet::{bin, repo};

/// A static file server over a directory, on a free loopback port, for
/// `get_url`/`uri`. One thread per connection; `Connection: close`.
struct Artifacts {
    url: String,
    /// sha256 of `app.tar.gz`.
    app_sha256: String,
    _dir: tempfile::TempDir,
}

fn serve(dir: PathBuf) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let dir = Arc::new(dir);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let mut reader = BufReader::new(match conn.try_clone() {
                    Ok(c) => c,
                    Err(_) => return,
                });
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/");
                let name = path.trim_start_matches('/');
                let file = dir.join(name);
                let ok = !name.is_empty() && !name.contains("..") && file.is_file();
                let (status, body, ctype) = if ok {
                    let ctype = if name.ends_with(".json") {
                        "application/json"
                    } else {
                        "application/octet-stream"
                    };
                    ("200 OK", std::fs::read(&file).unwrap_or_default(), ctype)
                } else {
                    ("404 Not Found", b"not found\n".to_vec(), "text/plain")
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                if !first.starts_with("HEAD") {
                    let _ = conn.write_all(&body);
                }
            });
        }
    });
    Ok(url)
}

fn run_tar(args: &[&str], cwd: &Path) -> Result<()> {
    let out = Command::new("tar").args(args).current_dir(cwd).output()?;
    if !out.status.success() {
        bail!("tar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Builds the artifacts (with GNU tar, as a release pipeline would) and
/// serves them.
fn artifacts() -> Result<Artifacts> {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src");
    let app = src.join("app-1.0");
    std::fs::create_dir_all(app.join("bin"))?;
    std::fs::create_dir_all(app.join("conf"))?;
    std::fs::write(app.join("bin/run"), "#!/bin/sh\necho running\n")?;
    std::fs::set_permissions(app.join("bin/run"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(app.join("conf/app.conf"), "port=8080\n")?;
    std::fs::set_permissions(
        app.join("conf/app.conf"),
        std::fs::Permissions::from_mode(0o640),
    )?;
    std::fs::write(app.join("README"), "shop 1.0\n")?;
    std::fs::set_permissions(app.join("README"), std::fs::Permissions::from_mode(0o644))?;
    std::os::unix::fs::symlink("conf/app.conf", app.join("active.conf"))?;
    let serve_dir = dir.path().join("www");
    std::fs::create_dir_all(&serve_dir)?;
    let tgz = serve_dir.join("app.tar.gz");
    run_tar(
        &[
            "--owner=0",
            "--group=0",
            "-czf",
            tgz.to_str().unwrap(),
            "app-1.0",
        ],
        &src,
    )?;
    // Deliberately hostile archives: an entry climbing out with `..`, and
    // a link pointing out of the destination.
    std::fs::create_dir_all(src.join("inner"))?;
    std::fs::write(src.join("outside.txt"), "escaped\n")?;
    run_tar(
        &[
            "-czPf",
            serve_dir.join("dotdot.tar.gz").to_str().unwrap(),
            "../outside.txt",
        ],
        &src.join("inner"),
    )?;
    let evil = src.join("evil");
    std::fs::create_dir_all(&evil)?;
    std::os::unix::fs::symlink("../../../etc", evil.join("etc"))?;
    run_tar(
        &[
            "-czf",
            serve_dir.join("escape.tar.gz").to_str().unwrap(),
            "evil",
        ],
        &src,
    )?;
    std::fs::write(
        serve_dir.join("status.json"),
        r#"{"state": "up", "version": "1.0"}"#,
    )?;
    let app_sha256 = hex::encode(Sha256::digest(std::fs::read(&tgz)?));
    let url = serve(serve_dir)?;
    Ok(Artifacts {
        url,
        app_sha256,
        _dir: dir,
    })
}

fn corpus() -> PathBuf {
    repo().join("tests/fixtures/ansible")
}

/// What a run reports: success and the recap counts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recap {
    success: bool,
    counts: BTreeMap<String, u32>,
}

fn recap(out: &Output, who: &str) -> Result<Recap> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("localhost") && l.contains(" ok="))
        .with_context(|| {
            format!(
                "{who}: no recap line in\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let mut counts = BTreeMap::new();
    for w in line.split_whitespace() {
        if let Some((k, v)) = w.split_once('=') {
            if ["ok", "changed", "failed", "skipped"].contains(&k) {
                counts.insert(k.to_string(), v.parse()?);
            }
        }
    }
    Ok(Recap {
        success: out.status.success(),
        counts,
    })
}

fn vars(root: &Path, a: &Artifacts) -> Vec<(String, String)> {
    vec![
        ("root".into(), root.display().to_string()),
        ("artifacts".into(), a.url.clone()),
        ("app_sha256".into(), a.app_sha256.clone()),
    ]
}

fn run_ansible(pb: &Path, root: &Path, home: &Path, a: &Artifacts) -> Result<Output> {
    let mut cmd = Command::new("ansible-playbook");
    cmd.args(["-c", "local", "-i", "localhost,"]);
    for (k, v) in vars(root, a) {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg(pb)
        .env("HOME", home)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
        .env("ANSIBLE_LOCALHOST_WARNING", "0")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "0")
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_REMOTE_TEMP", home.join("remote-tmp"));
    Ok(cmd.output()?)
}

fn run_vesemir(pb: &Path, root: &Path, a: &Artifacts) -> Result<Output> {
    let mut cmd = Command::new(bin("vesemir-agent"));
    cmd.args(["playbook", "run"]).arg(pb);
    for (k, v) in vars(root, a) {
        cmd.arg("--var").arg(format!("{k}={v}"));
    }
    Ok(cmd.output()?)
}

/// One entry of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: String },
    Link { target: String },
}

fn snapshot(root: &Path) -> Result<BTreeMap<String, Entry>> {
    let r = root.display().to_string();
    let norm = |s: &str| s.replace(&r, "<root>");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            let rel = p.strip_prefix(root)?.display().to_string();
            let m = std::fs::symlink_metadata(&p)?;
            let entry = if m.file_type().is_symlink() {
                Entry::Link {
                    target: norm(&std::fs::read_link(&p)?.display().to_string()),
                }
            } else if m.is_dir() {
                stack.push(p.clone());
                Entry::Dir {
                    mode: m.mode() & 0o7777,
                }
            } else {
                let mut content = String::new();
                let mut bytes = Vec::new();
                std::fs::File::open(&p)?.read_to_end(&mut bytes)?;
                match String::from_utf8(bytes) {
                    Ok(s) => content.push_str(&norm(&s)),
                    Err(e) => {
                        content = format!(
                            "<binary sha256 {}>",
                            hex::encode(Sha256::digest(e.as_bytes()))
                        )
                    }
                }
                Entry::File {
                    mode: m.mode() & 0o7777,
                    content,
                }
            };
            out.insert(rel, entry);
        }
    }
    Ok(out)
}

fn show(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `name` with both, twice each (the two sides in parallel), and
/// compares trees and recaps.
fn differential(name: &str) -> Result<()> {
    let a = Arc::new(artifacts()?);
    let pb = corpus().join(name);
    let work = tempfile::tempdir()?;
    let (ans_root, ves_root, home) = (
        work.path().join("ansible"),
        work.path().join("vesemir"),
        work.path().join("home"),
    );
    for d in [&ans_root, &ves_root, &home] {
        std::fs::create_dir_all(d)?;
    }
    let ansible = {
        let (pb, root, home, a) = (pb.clone(), ans_root.clone(), home.clone(), a.clone());
        std::thread::spawn(move || -> Result<(Output, Output)> {
            let first = run_ansible(&pb, &root, &home, &a)?;
            let second = run_ansible(&pb, &root, &home, &a)?;
            Ok((first, second))
        })
    };
    let v1 = run_vesemir(&pb, &ves_root, &a)?;
    let v2 = run_vesemir(&pb, &ves_root, &a)?;
    let (a1, a2) = ansible.join().expect("ansible thread")?;
    for (run, ao, vo) in [("first", &a1, &v1), ("second", &a2, &v2)] {
        let (ar, vr) = (recap(ao, "ansible")?, recap(vo, "vesemir")?);
        assert_eq!(
            ar,
            vr,
            "{name}: {run} run recaps differ (left ansible, right vesemir)\nansible:\n{}\nvesemir:\n{}",
            show(ao),
            show(vo)
        );
    }
    let (at, vt) = (snapshot(&ans_root)?, snapshot(&ves_root)?);
    if at != vt {
        let mut diff = String::new();
        for k in at
            .keys()
            .chain(vt.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if at.get(k) != vt.get(k) {
                diff.push_str(&format!(
                    "  {k}:\n    ansible: {:?}\n    vesemir: {:?}\n",
                    at.get(k),
                    vt.get(k)
                ));
            }
        }
        bail!(
            "{name}: trees differ:\n{diff}\nansible:\n{}\nvesemir:\n{}",
            show(&a2),
            show(&v2)
        );
    }
    Ok(())
}

macro_rules! differential {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() -> Result<()> {
                differential($file)
            }
        )*

        /// Every playbook in the corpus has a test above.
        #[test]
        fn every_corpus_playbook_is_tested() -> Result<()> {
            let listed: Vec<&str> = vec![$($file),*];
            let mut on_disk: Vec<String> = std::fs::read_dir(corpus())?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".yml"))
                .collect();
            on_disk.sort();
            assert_eq!(on_disk, listed, "add a line to the differential! list");
            assert!(listed.len() >= 20);
            Ok(())
        }
    };
}

differential! {
    release_layout => "01-release-layout.yml",
    unarchive_creates => "02-unarchive-creates.yml",
    template => "03-template.yml",
    copy => "04-copy.yml",
    links => "05-links.yml",
    handlers => "06-handlers.yml",
    loops => "07-loops.yml",
    block_rescue => "08-block-rescue.yml",
    register_when => "09-register-when.yml",
    lineinfile => "10-lineinfile.yml",
    stat => "11-stat.yml",
    set_fact_assert => "12-set-fact-assert.yml",
    command_args => "13-command-args.yml",
    changed_failed_when => "14-changed-failed-when.yml",
    ignore_errors => "15-ignore-errors.yml",
    include_tasks => "16-include-tasks.yml",
    until => "17-until.yml",
    file_states => "18-file-states.yml",
    get_url => "19-get-url.yml",
    uri => "20-uri.yml",
    vars_tags => "21-vars-tags.yml",
    block_when => "22-block-when.yml",
    play_keys_fqcn => "23-play-keys-fqcn.yml",
    filters => "24-filters.yml",
}

/// Deliberate strictness and unsupported features: vesemir refuses, with
/// the message checked (check-time refusals also carry file:line:col).
fn refused(file: &str, exit: i32, want: &[&str]) -> Result<()> {
    let a = artifacts()?;
    let work = tempfile::tempdir()?;
    let root = work.path().join("root");
    std::fs::create_dir_all(&root)?;
    let pb = corpus().join("refused").join(file);
    let out = run_vesemir(&pb, &root, &a)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(exit), "{file}: exit code\n{text}");
    for w in want {
        let w = w.replace("<pb>", &pb.display().to_string());
        assert!(text.contains(&w), "{file}: expected `{w}` in\n{text}");
    }
    // Nothing escaped the destination.
    assert!(!work.path().join("outside.txt").exists());
    assert!(!root.join("outside.txt").exists());
    Ok(())
}

#[test]
fn refuses_tar_entry_with_dotdot() -> Result<()> {
    refused(
        "tar-dotdot.yml",
        2,
        &["entry `../outside.txt` contains `..`"],
    )
}

#[test]
fn refuses_link_leaving_dest() -> Result<()> {
    refused(
        "tar-link-escape.yml",
        2,
        &["symlink `evil/etc` points outside the destination"],
    )
}

#[test]
fn refuses_unsupported_keyword_at_check_time() -> Result<()> {
    refused(
        "delegate-to.yml",
        64,
        &["<pb>:6:7: task 1 (elsewhere): keyword `delegate_to` is not supported by vesemir"],
    )
}

#[test]
fn refuses_unsupported_module_at_check_time() -> Result<()> {
    refused(
        "apt.yml",
        64,
        &["<pb>:5:7: task 1 (install): unknown or unsupported module `apt`"],
    )
}

#[test]
fn refuses_unarchive_extra_opts_at_check_time() -> Result<()> {
    refused(
        "extra-opts.yml",
        64,
        &["<pb>:5:7: task 1 (opts): unarchive: `extra_opts` is not supported"],
    )
}

#[test]
fn refuses_retries_without_until_at_check_time() -> Result<()> {
    refused(
        "retries-without-until.yml",
        64,
        &["<pb>:6:7: task 1 (flaky): `retries` without `until`"],
    )
}

#[test]
fn refuses_unarchive_into_missing_dest_like_ansible() -> Result<()> {
    refused(
        "unarchive-missing-dest.yml",
        2,
        &["must be an existing directory"],
    )
}
