//! `vesemir-agent playbook check|run` as a real process (the binary itself),
//! so exit codes, output and kill -9 mid-job are what an operator gets.

#[path = "fixtures/common.rs"]
mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// `vesemir-agent playbook ARGS…`, output piped.
fn cli(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vesemir-agent"));
    c.arg("playbook")
        .args(args)
        // Keep the agent's own log lines out of stderr assertions.
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cli(args).output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn run_prints_live_output_and_recap() {
    let tmp = tempfile::tempdir().unwrap();
    let pb = tmp.path().join("hello.yml");
    std::fs::write(
        &pb,
        "name: hello\ntasks:\n  - name: Say hello\n    command: echo hello {{ who }}\n  - name: Complain\n    shell: echo oops >&2\n  - name: Never\n    command: 'true'\n    when: false\n",
    )
    .unwrap();
    let p = pb.to_str().unwrap();
    let (code, out, err) = run(&["run", p, "--var", "who=world"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("TASK [Say hello] ****"), "{out}");
    assert!(out.contains("  | hello world"), "{out}");
    assert!(out.contains("  ! oops"), "{out}");
    assert!(out.contains("skipping: [localhost]"), "{out}");
    assert!(
        out.contains("localhost : ok=2 changed=2 failed=0 skipped=1"),
        "{out}"
    );

    std::fs::write(&pb, "tasks:\n  - command: 'false'\n").unwrap();
    let (code, out, _) = run(&["run", p]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("failed: [localhost]") && out.contains("failed=1"),
        "{out}"
    );
}

#[test]
fn check_reports_file_line_column() {
    let tmp = tempfile::tempdir().unwrap();
    let pb = tmp.path().join("bad.yml");
    std::fs::write(&pb, "tasks:\n  - name: x\n    frob: 1\n").unwrap();
    let p = pb.to_str().unwrap();
    let (code, _, err) = run(&["check", p]);
    assert_eq!(code, 64);
    assert!(
        err.contains(&format!(
            "{p}:3:5: task 1 (x): unknown or unsupported module `frob`"
        )),
        "{err}"
    );
    let (code, _, err) = run(&["run", p]);
    assert_eq!(code, 64, "{err}");
    // The shipped playbooks pass `check` alone.
    for name in ["deploy.yml", "rollback.yml", "restart.yml"] {
        let p = playbooks_dir().join(name);
        let (code, out, err) = run(&["check", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {out}{err}");
    }
}

#[test]
fn killed_mid_job_then_rerun_reports_interrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("counter");
    let pidfile = tmp.path().join("sleep.pid");
    let pb = tmp.path().join("slow.yml");
    std::fs::write(
        &pb,
        format!(
            "tasks:\n  - shell: echo ran >> {c}; sleep 30 & echo $! > {p}; wait\n",
            c = counter.display(),
            p = pidfile.display()
        ),
    )
    .unwrap();
    let journal = tmp.path().join("journal");
    let args = [
        "run",
        pb.to_str().unwrap(),
        "--journal-dir",
        journal.to_str().unwrap(),
        "--job-id",
        "job-k",
    ];
    let mut child = cli(&args).spawn().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(eventually("job started", Duration::from_secs(30), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    }));
    child.kill().unwrap(); // SIGKILL: the agent dies mid-job.
    child.wait().unwrap();
    // The task's own process group survives an agent kill -9; clean it up.
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);

    let (code, out, err) = run(&args);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(out.contains("job job-k: interrupted"), "{out}");
    assert!(out.contains("not running it again"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap().lines().count(),
        1
    );
}
