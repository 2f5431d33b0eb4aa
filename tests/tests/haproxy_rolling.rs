//! The HAProxy choreography of a rolling deploy, by hand, against real
//! processes: for each server, drain, wait for its sessions to end, restart
//! the app with a new version through the systemctl stand-in, put it back and
//! ramp its weight, while clients hammer the frontend. Zero requests may
//! fail, and never more than one server is out of rotation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vesemir_agent::haproxy::{OpState, State, Weight};
use vesemir_testkit::haproxy::{free_port, Haproxy, Systemctl};

static APP: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(vesemir_testkit::haproxy::sample_app);
const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_haproxy_loses_no_request() {
    let sc = Systemctl::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names = ["web1", "web2", "web3"];
    let mut servers = Vec::new();
    for name in names {
        let port = free_port().unwrap();
        let version = dir.path().join(format!("{name}.version"));
        std::fs::write(&version, "v1\n").unwrap();
        sc.add_unit(
            name,
            &format!(
                "{} --listen 127.0.0.1:{port} --version-file {}",
                *APP,
                version.display()
            ),
            Some(&format!("exec 3<>/dev/tcp/127.0.0.1/{port}")),
        )
        .unwrap();
        let out = sc.run(&["start", name]).await.unwrap();
        assert!(out.status.success(), "{out:?}");
        servers.push((name, format!("127.0.0.1:{port}").parse().unwrap()));
    }
    let haproxy = Haproxy::start("app", &servers).await.unwrap();
    haproxy.wait_all_up(T).await.unwrap();
    let api = haproxy.api();

    // Clients: 4 keep-alive workers through the frontend.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let last_versions = Arc::new(Mutex::new(Vec::<String>::new()));
    let url = format!("http://{}/", haproxy.frontend_addr());
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, errors, last) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
            last_versions.clone(),
        );
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let resp = client
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    let status = resp.status();
                    let body = resp.text().await.map_err(|e| format!("{e:?}"))?;
                    if status != 200 {
                        return Err(format!("{status}: {body}"));
                    }
                    Ok(body)
                }
                .await;
                match result {
                    Ok(body) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let mut last = last.lock().unwrap();
                        last.push(body);
                        let n = last.len();
                        if n > 20 {
                            last.drain(..n - 20);
                        }
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(e);
                    }
                }
            }
        }));
    }
    // Sampler: the most servers ever out of rotation at once.
    let max_out = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_out, api) = (stop.clone(), max_out.clone(), api.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let states = api.servers_state("app").await.unwrap();
                let out = states.iter().filter(|s| !s.in_rotation()).count() as u64;
                max_out.fetch_max(out, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    for (i, name) in names.iter().enumerate() {
        let before = ok.load(Ordering::Relaxed);
        api.set_state("app", name, State::Drain).await.unwrap();
        let out = api
            .wait_drained("app", name, T, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(out.is_drained(), "{name}: {out:?}");
        let old_pid = sc.main_pid(name).unwrap();
        std::fs::write(dir.path().join(format!("{name}.version")), "v2\n").unwrap();
        let out = sc.run(&["restart", name]).await.unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_ne!(sc.main_pid(name).unwrap(), old_pid);
        // Health checks see the new process before it gets traffic.
        haproxy
            .wait_for_states("restarted server passing checks", T, |s| {
                s[i].op_state == OpState::Running
            })
            .await
            .unwrap();
        api.set_state("app", name, State::Ready).await.unwrap();
        for percent in [10, 50, 100] {
            api.set_weight("app", name, Weight::Percent(percent))
                .await
                .unwrap();
        }
        // Traffic kept flowing during this host's turn.
        assert!(
            ok.load(Ordering::Relaxed) > before,
            "no requests served during {name}"
        );
    }
    // Let the clients see the last host back.
    let settle = ok.load(Ordering::Relaxed) + 200;
    vesemir_testkit::haproxy::poll_until("more requests after the rollout", T, || {
        let ok = ok.clone();
        async move { (ok.load(Ordering::Relaxed) >= settle).then_some(()) }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    sampler.await.unwrap();

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} requests ok, {failed} failed, max out of rotation {max_out:?}");
    assert_eq!(failed, 0, "failed requests: {:?}", errors.lock().unwrap());
    assert!(ok > 100, "only {ok} requests");
    assert_eq!(max_out.load(Ordering::Relaxed), 1);
    let last = last_versions.lock().unwrap();
    assert!(last.iter().all(|v| v == "v2\n"), "{last:?}");
    let calls = sc.calls().unwrap();
    assert_eq!(
        calls
            .iter()
            .filter(|(_, a)| a.starts_with("restart "))
            .count(),
        3
    );
}
