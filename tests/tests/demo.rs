//! `vesemir demo` end to end (issue 5), and the promise behind it: the
//! local fleet stops everything it started.

use anyhow::Result;
use std::process::Command;
use std::time::Duration;
use vesemir_testkit::demo::{pid_alive, Binaries, HaproxyMode, LocalFleet};

/// Pids of running processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(needle) && pid_alive(pid) {
            out.push((pid, cmdline));
        }
    }
    out
}

#[test]
fn vesemir_demo_runs_to_the_end_with_zero_failed_requests() -> Result<()> {
    let bins = Binaries::find(None)?;
    let cli = bins
        .cli
        .expect("the vesemir binary: run `cargo build --workspace`");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("demo");
    let out = Command::new(cli)
        .args(["demo", "--app-hosts", "3", "--dir"])
        .arg(&dir)
        .env_remove("VESEMIR_CONFIG")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("requests: "))
        .unwrap_or_else(|| panic!("no requests line:\n{stdout}"));
    let sent: u64 = line
        .trim_start_matches("requests: ")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(sent > 50, "{line}");
    assert!(line.ends_with(" sent, 0 failed"), "{line}");
    assert!(
        stdout.contains("systemctl stand-in"),
        "the demo must say it uses the stand-in:\n{stdout}"
    );
    assert!(stdout.contains("max servers out of rotation: "), "{stdout}");
    assert!(
        stdout.contains(&format!("kept: {}", dir.display())),
        "{stdout}"
    );
    // Nothing it started is still running.
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "still running: {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_fleet_shutdown_leaves_nothing_running() -> Result<()> {
    let mut f = LocalFleet::builder()
        .app_hosts(2)
        .haproxy(HaproxyMode::Auto)
        .start()
        .await?;
    let cs = f.publish("1.0.0")?;
    let id = f.submit(&f.deploy_request(&cs)).await?;
    let d = f.wait_deployment(&id, Duration::from_secs(60)).await?;
    assert_eq!(d["status"], "succeeded", "{d}");
    let pids = f.pids();
    // controller, 3 agents, the 2 apps (and HAProxy if installed).
    assert!(pids.len() >= 6, "{pids:?}");
    assert!(
        pids.iter().filter(|(n, _)| n.starts_with("app on")).count() == 2,
        "{pids:?}"
    );
    let dir = f.dir().to_owned();
    f.shutdown();
    let alive: Vec<_> = pids.iter().filter(|(_, p)| pid_alive(*p)).collect();
    assert!(alive.is_empty(), "still running after shutdown: {alive:?}");
    assert!(!dir.exists(), "the temp dir must be removed");
    Ok(())
}

#[test]
fn ctrl_c_during_the_demo_stops_everything_it_started() -> Result<()> {
    use std::io::BufRead;
    let bins = Binaries::find(None)?;
    let cli = bins
        .cli
        .expect("the vesemir binary: run `cargo build --workspace`");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("demo");
    let mut child = Command::new(cli)
        .args(["demo", "--app-hosts", "2", "--dir"])
        .arg(&dir)
        .env_remove("VESEMIR_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Interrupt in the middle of the first deploy: everything is running.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let started = line.contains("deployment") && line.contains("started");
                seen.push(line);
                if started {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the demo never started a deployment:\n{}", seen.join("\n"));
            }
        }
    }
    assert!(!processes_mentioning(&dir.display().to_string()).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{}", seen.join("\n"));
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    Ok(())
}
