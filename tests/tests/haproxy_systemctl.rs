//! The recording `systemctl` stand-in (systemd is not PID 1 on these
//! machines): it records every call and really restarts a sample app.

use std::path::Path;
use std::time::Duration;

use vesemir_testkit::haproxy::{free_port, poll_until, Systemctl};

static APP: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(vesemir_testkit::haproxy::sample_app);

async fn get(url: &str) -> Option<(String, u32)> {
    let resp = reqwest::get(url).await.ok()?;
    let pid = resp
        .headers()
        .get("x-vesemir-pid")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some((resp.text().await.ok()?, pid))
}

#[tokio::test]
async fn restart_runs_a_new_process_with_the_new_version() {
    let sc = Systemctl::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("version");
    std::fs::write(&version, "v1\n").unwrap();
    let port = free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    sc.add_unit(
        "sample",
        &format!(
            "{} --listen 127.0.0.1:{port} --version-file {}",
            *APP,
            version.display()
        ),
        // Ready once it accepts connections (bash only, no curl needed).
        Some(&format!("exec 3<>/dev/tcp/127.0.0.1/{port}")),
    )
    .unwrap();

    let out = sc.run(&["is-active", "sample"]).await.unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inactive\n");

    let out = sc.run(&["start", "sample.service"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let first = sc.main_pid("sample").unwrap();
    // The ready check passed, so it serves right away.
    assert_eq!(get(&url).await, Some(("v1\n".into(), first)));

    std::fs::write(&version, "v2\n").unwrap();
    let out = sc.run(&["--no-block", "restart", "sample"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let second = sc.main_pid("sample").unwrap();
    assert_ne!(first, second);
    assert_eq!(get(&url).await, Some(("v2\n".into(), second)));
    // The old process is gone (it stopped gracefully on SIGTERM).
    assert!(
        !Path::new(&format!("/proc/{first}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{first}/stat"))
                .unwrap()
                .contains(") Z ")
    );

    let out = sc.run(&["is-active", "sample"]).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    for args in [["daemon-reload", ""], ["enable", "sample"]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        assert!(sc.run(&args).await.unwrap().status.success(), "{args:?}");
    }

    let out = sc.run(&["stop", "sample"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        sc.run(&["is-active", "sample"])
            .await
            .unwrap()
            .status
            .code(),
        Some(3)
    );
    poll_until(
        "the app to stop answering",
        Duration::from_secs(5),
        || async { get(&url).await.is_none().then_some(()) },
    )
    .await
    .unwrap();

    let out = sc.run(&["restart", "nope"]).await.unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.service not found"));

    let calls = sc.calls().unwrap();
    let args: Vec<&str> = calls.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        args,
        [
            "is-active sample",
            "start sample.service",
            "--no-block restart sample",
            "is-active sample",
            "daemon-reload",
            "enable sample",
            "stop sample",
            "is-active sample",
            "restart nope",
        ]
    );
    assert!(
        calls.windows(2).all(|w| w[0].0 <= w[1].0),
        "timestamps in order"
    );
}

#[tokio::test]
async fn a_start_that_crashes_fails() {
    let sc = Systemctl::new().unwrap();
    sc.add_unit(
        "broken",
        &format!("{} --listen not-an-address --version v1", *APP),
        None,
    )
    .unwrap();
    let out = sc.run(&["restart", "broken"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exited at start"),
        "{out:?}"
    );
    assert_eq!(
        sc.run(&["is-active", "broken"])
            .await
            .unwrap()
            .status
            .code(),
        Some(3)
    );
    // The app's own complaint is in the unit's log.
    let log = std::fs::read_to_string(sc.units_dir().join("broken.log")).unwrap();
    assert!(log.contains("--listen"), "{log}");
}
