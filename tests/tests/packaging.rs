//! Packaging: the systemd units in `systemd/` and the Chef cookbook in
//! `cookbook/`. Cheap static checks against the real binaries' `--help`: a
//! unit or recipe that passes a flag the binary does not have fails here,
//! not on a VM at 3 a.m.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use vesemir_testkit::fleet::bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A parsed unit file: section → ordered (key, value) pairs.
#[derive(Debug, Default)]
struct Unit {
    sections: BTreeMap<String, Vec<(String, String)>>,
}

impl Unit {
    fn parse(name: &str, text: &str) -> Unit {
        let mut unit = Unit::default();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let at = format!("{name}:{}", i + 1);
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{at}: line continuations are not used here"
            );
            if let Some(rest) = line.strip_prefix('[') {
                let sect = rest
                    .strip_suffix(']')
                    .unwrap_or_else(|| panic!("{at}: bad section header {line:?}"));
                assert!(
                    !unit.sections.contains_key(sect),
                    "{at}: section [{sect}] appears twice"
                );
                unit.sections.insert(sect.to_string(), Vec::new());
                current = Some(sect.to_string());
                continue;
            }
            let sect = current
                .as_ref()
                .unwrap_or_else(|| panic!("{at}: {line:?} is outside any section"));
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{at}: {line:?} is not KEY=VALUE"));
            let k = k.trim();
            assert!(
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()),
                "{at}: bad key {k:?}"
            );
            unit.sections
                .get_mut(sect)
                .expect("section")
                .push((k.to_string(), v.trim().to_string()));
        }
        unit
    }

    /// All values of KEY in SECTION.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.sections
            .get(section)
            .map(|kv| {
                kv.iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The one value of KEY in SECTION (panics if missing or repeated).
    fn one(&self, section: &str, key: &str) -> &str {
        let v = self.all(section, key);
        assert_eq!(v.len(), 1, "[{section}] {key}= must appear once, got {v:?}");
        v[0]
    }
}

fn unit(name: &str) -> Unit {
    let u = Unit::parse(name, &read(&format!("systemd/{name}")));
    for s in ["Unit", "Service", "Install"] {
        assert!(u.sections.contains_key(s), "{name}: no [{s}] section");
    }
    u
}

/// `BIN [SUB] --help` of a built binary.
fn help(binary: &str, sub: Option<&str>) -> String {
    let mut cmd = Command::new(bin(binary));
    cmd.args(sub).arg("--help");
    let out = cmd.output().expect("run --help");
    assert!(
        out.status.success(),
        "{binary} {sub:?} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Whether `--flag` is an option in a clap help text (as a whole word).
fn help_has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let next = help[i + flag.len()..].chars().next();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Checks an ExecStart command line against the binary it names; returns
/// the flags with their values.
fn check_exec_start(exec: &str, binary: &str, sub: &str) -> BTreeMap<String, String> {
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert!(words.len() >= 2, "ExecStart={exec:?} is too short");
    assert!(
        words[0].starts_with('/'),
        "ExecStart must name an absolute path: {exec:?}"
    );
    assert_eq!(
        Path::new(words[0]).file_name().and_then(|n| n.to_str()),
        Some(binary),
        "ExecStart={exec:?}"
    );
    assert_eq!(words[1], sub, "ExecStart={exec:?}");
    let top = help(binary, None);
    assert!(
        top.lines()
            .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
        "{binary} has no subcommand {sub}:\n{top}"
    );
    let sub_help = help(binary, Some(sub));
    let mut flags = BTreeMap::new();
    let mut i = 2;
    while i < words.len() {
        let w = words[i];
        assert!(
            w.starts_with("--"),
            "ExecStart={exec:?}: {w:?} is not a --flag"
        );
        let (flag, value) = match w.split_once('=') {
            Some((f, v)) => (f, v.to_string()),
            None if words.get(i + 1).is_some_and(|n| !n.starts_with("--")) => {
                i += 1;
                (w, words[i].to_string())
            }
            None => (w, String::new()),
        };
        assert!(
            help_has_flag(&sub_help, flag),
            "ExecStart={exec:?}: {binary} {sub} has no {flag}:\n{sub_help}"
        );
        flags.insert(flag.to_string(), value);
        i += 1;
    }
    flags
}

fn check_restart_policy(name: &str, u: &Unit) {
    let all: Vec<&str> = u
        .all("Service", "RestartPreventExitStatus")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert!(
        all.contains(&"64"),
        "{name}: RestartPreventExitStatus=64 missing (64 = bad config, restarting cannot fix it)"
    );
    assert_eq!(u.one("Service", "Restart"), "on-failure", "{name}");
    assert_eq!(u.one("Service", "RestartSec"), "2s", "{name}");
    assert_eq!(u.one("Service", "KillSignal"), "SIGTERM", "{name}");
    assert_eq!(u.one("Service", "TimeoutStopSec"), "15s", "{name}");
    assert_eq!(
        u.one("Install", "WantedBy"),
        "multi-user.target",
        "{name}: enable would do nothing"
    );
}

#[test]
fn controller_unit_runs_serve_with_real_flags_and_is_hardened() {
    let name = "vesemir-controller.service";
    let u = unit(name);
    let flags = check_exec_start(u.one("Service", "ExecStart"), "vesemir-controller", "serve");
    assert_eq!(
        flags.get("--config").map(String::as_str),
        Some("/var/lib/vesemir/controller.toml")
    );
    assert_eq!(flags.get("--log-format").map(String::as_str), Some("json"));
    check_restart_policy(name, &u);

    assert_eq!(u.one("Service", "User"), "vesemir");
    assert_eq!(u.one("Service", "StateDirectory"), "vesemir");
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(u.one("Service", k), v, "{name}: {k}");
    }
    // With ProtectSystem=strict the data dir of --config must be writable:
    // the database, tokens and the QUIC key file live there.
    let rw: Vec<&str> = u
        .all("Service", "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert!(
        rw.contains(&"/var/lib/vesemir"),
        "{name}: ReadWritePaths lacks /var/lib/vesemir: {rw:?}"
    );
    let nofile: u64 = u
        .one("Service", "LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is a number");
    assert!(nofile >= 4096, "{name}: LimitNOFILE={nofile} is too small");

    // The sysusers file creates the user the unit runs as.
    let sysusers = read("systemd/vesemir.sysusers");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", "vesemir"])),
        "systemd/vesemir.sysusers does not create user vesemir"
    );
}

#[test]
fn agent_unit_runs_run_with_real_flags_as_root() {
    let name = "vesemir-agent.service";
    let u = unit(name);
    let flags = check_exec_start(u.one("Service", "ExecStart"), "vesemir-agent", "run");
    assert_eq!(
        flags.get("--config").map(String::as_str),
        Some("/var/lib/vesemir-agent/agent.toml")
    );
    assert_eq!(flags.get("--log-format").map(String::as_str), Some("json"));
    check_restart_policy(name, &u);
    // Playbooks restart services and write anywhere: no sandbox that would
    // make /etc or /opt read-only.
    assert_eq!(u.one("Service", "User"), "root");
    for k in ["ProtectSystem", "ProtectHome", "NoNewPrivileges"] {
        assert!(
            u.all("Service", k).is_empty(),
            "{name}: {k} would break playbooks"
        );
    }
}

/// `default['vesemir_agent'][...] = 'string'` lines of attributes/default.rb.
fn cookbook_defaults() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in read("cookbook/attributes/default.rb").lines() {
        let Some(rest) = line.trim().strip_prefix("default") else {
            continue;
        };
        let Some((keys, value)) = rest.split_once(" = ") else {
            continue;
        };
        let value = value.trim();
        if let Some(v) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            let key = keys
                .trim_matches(|c| c == '[' || c == ']')
                .split("][")
                .map(|k| k.trim_matches('\''))
                .collect::<Vec<_>>()
                .join(".");
            out.insert(key, v.to_string());
        }
    }
    out
}

#[test]
fn cookbook_unit_template_renders_to_the_systemd_unit() {
    let d = cookbook_defaults();
    let get = |k: &str| {
        d.get(k)
            .unwrap_or_else(|| panic!("attributes/default.rb has no {k}: {d:?}"))
            .clone()
    };
    let config = format!("{}/agent.toml", get("vesemir_agent.data_dir"));
    let tpl = read("cookbook/templates/vesemir-agent.service.erb");
    let rendered = tpl
        .replace("<%= @binary %>", &get("vesemir_agent.binary.path"))
        .replace("<%= @config %>", &config)
        .replace("<%= @log_format %>", &get("vesemir_agent.log_format"));
    assert!(
        !rendered.contains("<%"),
        "template uses a variable this test does not know:\n{rendered}"
    );
    // The template starts with a "managed by Chef" header; the rest is the
    // repository's unit with the default attributes.
    let body: String = rendered
        .lines()
        .skip_while(|l| !l.starts_with("# vesemir agent:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        body,
        read("systemd/vesemir-agent.service"),
        "cookbook/templates/vesemir-agent.service.erb drifted from systemd/vesemir-agent.service"
    );
}

/// Every `'--flag'` string literal in a Ruby file.
fn ruby_flag_literals(text: &str) -> Vec<String> {
    text.match_indices("'--")
        .filter_map(|(i, _)| {
            let lit = &text[i + 1..];
            let lit = &lit[..lit.find('\'')?];
            let name = &lit[2..];
            (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .then(|| lit.to_string())
        })
        .collect()
}

#[test]
fn cookbook_enroll_uses_real_flags_and_keeps_the_token_out_of_argv() {
    let helpers = read("cookbook/libraries/helpers.rb");
    let recipe = read("cookbook/recipes/default.rb");
    let enroll_help = help("vesemir-agent", Some("enroll"));

    let flags = ruby_flag_literals(&helpers);
    for required in [
        "--controller",
        "--ca-cert",
        "--name",
        "--data-dir",
        "--playbook-dir",
    ] {
        assert!(
            flags.iter().any(|f| f == required),
            "cookbook enroll command lacks {required}: {flags:?}"
        );
    }
    for f in flags.iter().chain(ruby_flag_literals(&recipe).iter()) {
        assert!(
            help_has_flag(&enroll_help, f),
            "cookbook passes {f}, which `vesemir-agent enroll` does not have:\n{enroll_help}"
        );
    }
    // The agent is named after the Chef node (the inventory finds it by that).
    assert!(
        helpers.contains("'--name', node.name,"),
        "enroll --name must be node.name"
    );
    // The token travels in the environment, never as --token.
    for (file, text) in [("helpers.rb", &helpers), ("default.rb", &recipe)] {
        assert!(
            !text.contains("'--token'") && !text.contains("--token "),
            "{file} passes the token in argv"
        );
    }
    assert!(
        enroll_help.contains("VESEMIR_ENROLL_TOKEN"),
        "vesemir-agent enroll no longer reads VESEMIR_ENROLL_TOKEN:\n{enroll_help}"
    );
    let enroll = recipe
        .split("execute 'vesemir-agent enroll' do")
        .nth(1)
        .and_then(|r| r.split("\nend").next())
        .expect("recipe has execute 'vesemir-agent enroll'");
    for needle in [
        "'VESEMIR_ENROLL_TOKEN' =>",
        "sensitive true",
        "creates agent_toml",
    ] {
        assert!(
            enroll.contains(needle),
            "enroll resource lacks {needle:?}:\n{enroll}"
        );
    }
    // The binary is verified before it is installed.
    let binary = recipe
        .split("remote_file attrs['binary']['path'] do")
        .nth(1)
        .and_then(|r| r.split("\nend").next())
        .expect("recipe installs the binary with remote_file");
    assert!(binary.contains("checksum attrs['binary']['checksum']"));
    let metadata = read("cookbook/metadata.rb");
    assert!(
        metadata
            .lines()
            .any(|l| l.split_whitespace().eq(["name", "'vesemir_agent'"])),
        "metadata.rb: cookbook must be named vesemir_agent"
    );
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).expect("under root").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cookbook_ships_the_repository_playbooks() {
    let src = repo().join("playbooks");
    let copy = repo().join("cookbook/files/default/playbooks");
    let want: Vec<PathBuf> = files_under(&src)
        .into_iter()
        .filter(|p| p != Path::new("README.md"))
        .collect();
    let have = files_under(&copy);
    let hint = "run: cp -r playbooks/*.yml playbooks/templates cookbook/files/default/playbooks/";
    assert_eq!(
        have, want,
        "cookbook playbooks differ from playbooks/; {hint}"
    );
    for p in &want {
        assert!(
            std::fs::read(src.join(p)).expect("read") == std::fs::read(copy.join(p)).expect("read"),
            "cookbook/files/default/playbooks/{} differs from playbooks/; {hint}",
            p.display()
        );
    }
}

#[test]
fn cookbook_ruby_files_parse() {
    let rb: Vec<PathBuf> = files_under(&repo().join("cookbook"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rb"))
        .collect();
    for want in [
        "metadata.rb",
        "attributes/default.rb",
        "recipes/default.rb",
        "libraries/helpers.rb",
    ] {
        assert!(
            rb.iter().any(|p| p == Path::new(want)),
            "cookbook/{want} missing"
        );
    }
    let ruby_ok = Command::new("ruby")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ruby_ok {
        println!(
            "ruby is not installed: skipping `ruby -c` of {} cookbook files",
            rb.len()
        );
        return;
    }
    for p in &rb {
        let full = repo().join("cookbook").join(p);
        let out = Command::new("ruby")
            .arg("-c")
            .arg(&full)
            .output()
            .expect("run ruby -c");
        assert!(
            out.status.success(),
            "ruby -c {}: {}{}",
            full.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---- Debian packages (scripts/package) ----

/// Runs a command, returning (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `scripts/package --bin-dir` on the test build's binaries (CI packages
/// the debug build: a release build of three binaries costs minutes on two
/// cores; README documents `scripts/package` for the release packages).
fn build_packages(out: &Path, only: Option<&str>) -> (PathBuf, PathBuf) {
    let bin_dir = bin("vesemir-agent")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let (ok, stdout, stderr) = run(Command::new(repo().join("scripts/package"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out)
        .args(only.map(|p| ["--only", p]).into_iter().flatten()));
    assert!(ok, "scripts/package failed:\n{stdout}{stderr}");
    let version = env!("CARGO_PKG_VERSION");
    let arch = run(Command::new("dpkg").arg("--print-architecture"))
        .1
        .trim()
        .to_string();
    let deb = |p: &str| {
        let f = out.join(format!("{p}_{version}_{arch}.deb"));
        assert!(f.exists(), "{} not built; output:\n{stdout}", f.display());
        f
    };
    let want = |p: &str| only.is_none_or(|o| o == p);
    (
        if want("controller") {
            deb("vesemir-controller")
        } else {
            PathBuf::new()
        },
        if want("agent") {
            deb("vesemir-agent")
        } else {
            PathBuf::new()
        },
    )
}

/// The regular files a package holds, as absolute paths.
fn deb_files(deb: &Path) -> Vec<String> {
    let (ok, listing, err) = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    assert!(ok, "dpkg-deb -c: {err}");
    listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

/// One installer at a time on this machine (several checkouts may run the
/// suite at once): an exclusive lock, waited for with a deadline.
struct MachineLock {
    /// Holds the flock until dropped.
    _file: std::fs::File,
}

impl MachineLock {
    fn take() -> MachineLock {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/vesemir-packaging-test.lock")
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(std::env::temp_dir().join("vesemir-packaging-test.lock"))
            })
            .expect("lock file");
        vesemir_testkit::fleet::wait_for(
            "the machine-wide packaging lock",
            std::time::Duration::from_secs(300),
            || {
                // SAFETY: flock on an fd we own; no memory involved.
                let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                (r == 0).then_some(())
            },
        )
        .expect("packaging lock");
        MachineLock { _file: f }
    }
}

/// `dpkg ARGS`, retried while apt or another dpkg holds dpkg's own lock.
fn dpkg(args: &[&str]) -> (bool, String) {
    let mut last = String::new();
    let found = vesemir_testkit::fleet::wait_for(
        "dpkg's lock",
        std::time::Duration::from_secs(120),
        || {
            let (ok, out, err) = run(Command::new("dpkg").args(args));
            last = format!("{out}{err}");
            let locked = !ok && err.contains("lock");
            (!locked).then_some(ok)
        },
    );
    (found.unwrap_or(false), last)
}

#[test]
fn debian_packages_hold_what_they_should() {
    if !have("dpkg-deb") {
        eprintln!("SKIPPED: dpkg-deb not installed (Debian package dpkg)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (controller, agent) = build_packages(&dir.path().join("out"), None);
    let files = deb_files(&controller);
    for want in [
        "/usr/bin/vesemir-controller",
        "/usr/bin/vesemir",
        "/usr/bin/vesemir-demo",
        "/usr/bin/vesemir-sample-app",
        "/lib/systemd/system/vesemir-controller.service",
        "/usr/lib/sysusers.d/vesemir.conf",
        "/usr/lib/tmpfiles.d/vesemir.conf",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "controller .deb lacks {want}: {files:?}"
        );
    }
    let files = deb_files(&agent);
    for want in [
        "/usr/bin/vesemir-agent",
        "/lib/systemd/system/vesemir-agent.service",
        "/usr/share/vesemir/playbooks/deploy.yml",
        "/usr/share/vesemir/playbooks/rollback.yml",
        "/usr/share/vesemir/playbooks/restart.yml",
        "/usr/share/vesemir/playbooks/templates/app.env.j2",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "agent .deb lacks {want}: {files:?}"
        );
    }
    // The files are the repository's, byte for byte, and the binaries run.
    let x = dir.path().join("x");
    for deb in [&controller, &agent] {
        let (ok, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x));
        assert!(ok, "dpkg-deb -x: {err}");
    }
    for (inside, ours) in [
        (
            "lib/systemd/system/vesemir-controller.service",
            "systemd/vesemir-controller.service",
        ),
        (
            "lib/systemd/system/vesemir-agent.service",
            "systemd/vesemir-agent.service",
        ),
        (
            "usr/lib/sysusers.d/vesemir.conf",
            "systemd/vesemir.sysusers",
        ),
        (
            "usr/share/vesemir/playbooks/deploy.yml",
            "playbooks/deploy.yml",
        ),
    ] {
        assert_eq!(
            std::fs::read_to_string(x.join(inside)).expect(inside),
            read(ours),
            "{inside} differs from {ours}"
        );
    }
    let tmpfiles = std::fs::read_to_string(x.join("usr/lib/tmpfiles.d/vesemir.conf")).unwrap();
    assert!(
        tmpfiles.lines().any(|l| l.split_whitespace().eq([
            "d",
            "/var/lib/vesemir",
            "0750",
            "vesemir",
            "vesemir",
            "-"
        ])),
        "tmpfiles.d does not create the data dir for user vesemir:\n{tmpfiles}"
    );
    for b in ["vesemir-controller", "vesemir", "vesemir-demo"] {
        let (ok, out, err) = run(Command::new(x.join("usr/bin").join(b)).arg("--version"));
        assert!(
            ok && out.contains(env!("CARGO_PKG_VERSION")),
            "{b} --version: {out}{err}"
        );
    }
    let (_, info, _) = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&controller)
        .args(["Package", "Version", "Depends"]));
    assert!(
        info.contains("Package: vesemir-controller")
            && info.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
}

/// CI's install check: the agent .deb installs with `dpkg -i`, its binary
/// and installed playbooks work, its unit verifies at the installed path,
/// and `dpkg --purge` leaves nothing behind. Installs on this machine, so
/// it runs only as root with dpkg (CI); elsewhere it says it skipped.
#[test]
fn agent_deb_installs_runs_and_purges_cleanly() {
    if !nix::unistd::Uid::effective().is_root() || !have("dpkg") {
        eprintln!("SKIPPED: needs root and dpkg (CI runs it)");
        return;
    }
    let enrolled = Path::new("/var/lib/vesemir-agent");
    assert!(
        !enrolled.exists(),
        "{} exists: this machine has an enrolled agent, which purging the package would delete; \
         run this test on a CI machine",
        enrolled.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, agent) = build_packages(&dir.path().join("out"), Some("agent"));
    let files = deb_files(&agent);
    let _lock = MachineLock::take();

    let (ok, out) = dpkg(&["-i", agent.to_str().expect("utf-8 path")]);
    assert!(ok, "dpkg -i {}:\n{out}", agent.display());
    let installed = || {
        let (_, status, _) = run(Command::new("dpkg-query").args([
            "-W",
            "-f=${Status} ${Version}",
            "vesemir-agent",
        ]));
        assert_eq!(
            status,
            format!("install ok installed {}", env!("CARGO_PKG_VERSION"))
        );
        let (ok, out, err) = run(Command::new("/usr/bin/vesemir-agent").arg("--version"));
        assert!(
            ok && out.contains(env!("CARGO_PKG_VERSION")),
            "vesemir-agent --version: {out}{err}"
        );
        let playbooks: Vec<PathBuf> = std::fs::read_dir("/usr/share/vesemir/playbooks")
            .expect("installed playbook dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml"))
            .collect();
        assert_eq!(playbooks.len(), 3, "{playbooks:?}");
        for p in &playbooks {
            let (ok, out, err) = run(Command::new("/usr/bin/vesemir-agent")
                .args(["playbook", "check"])
                .arg(p));
            assert!(ok, "playbook check {}: {out}{err}", p.display());
        }
        if have("systemd-analyze") {
            // The installed unit at its installed path, binary in /usr/bin.
            let (ok, out, err) = run(Command::new("systemd-analyze")
                .args(["verify", "/lib/systemd/system/vesemir-agent.service"]));
            assert!(ok && err.trim().is_empty(), "installed unit: {out}{err}");
        }
    };
    let result = std::panic::catch_unwind(installed);

    // Whatever happened, remove it, then check nothing is left.
    let (ok, out) = dpkg(&["--purge", "vesemir-agent"]);
    assert!(ok, "dpkg --purge vesemir-agent:\n{out}");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    let (_, status, _) =
        run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "vesemir-agent"]));
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "after purge dpkg still knows vesemir-agent: {status:?}"
    );
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left behind after purge: {left:?}");
    for d in [
        "/usr/share/vesemir/playbooks",
        "/usr/share/doc/vesemir-agent",
        "/var/lib/vesemir-agent",
    ] {
        assert!(!Path::new(d).exists(), "{d} left behind after purge");
    }
}
