//! The agent's HAProxy runtime API client against a real HAProxy 2.6 with
//! real sample apps behind it: states, weights, errors, name validation.

use std::path::Path;
use std::time::Duration;

use vesemir_agent::haproxy::{
    execute, AdminState, HaproxyError, HaproxyOp, HaproxyReply, OpState, RuntimeApi, State, Weight,
    DEFAULT_TIMEOUT,
};
use vesemir_testkit::haproxy::{Fleet, Haproxy};

static APP: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(vesemir_testkit::haproxy::sample_app);
const T: Duration = Duration::from_secs(10);

async fn fleet(n: usize) -> Fleet {
    Fleet::start(Path::new(&*APP), "app", n, "v1")
        .await
        .unwrap()
}

/// Pids (from `X-Vesemir-Pid`) that answered `n` requests sent through the frontend.
async fn answering_pids(haproxy: &Haproxy, n: usize) -> Vec<u32> {
    let client = reqwest::Client::new();
    let mut pids = Vec::new();
    for _ in 0..n {
        let resp = client
            .get(format!("http://{}/", haproxy.frontend_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        pids.push(
            resp.headers()["x-vesemir-pid"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    pids
}

#[tokio::test]
async fn drain_maint_ready_round_trip() {
    let f = fleet(2).await;
    let api = f.haproxy.api();
    let (web1, web2) = (f.apps[0].pid(), f.apps[1].pid());

    api.set_state("app", "web1", State::Drain).await.unwrap();
    let s = f.haproxy.server_state("web1").await.unwrap();
    assert_eq!(s.admin_state, AdminState(8), "{s:?}");
    assert!(s.admin_state.is_drain() && !s.in_rotation());
    let stat = api.stat("app").await.unwrap();
    // "DRAIN", or "DRAIN 1/2" while a health check is failing on a loaded
    // machine: the admin state is what this asserts, not the check's.
    assert!(stat[0].status.starts_with("DRAIN"), "{stat:?}");
    // New requests go to web2 only.
    assert!(answering_pids(&f.haproxy, 6)
        .await
        .iter()
        .all(|p| *p == web2));

    api.set_state("app", "web1", State::Maint).await.unwrap();
    let s = f.haproxy.server_state("web1").await.unwrap();
    assert_eq!(
        (s.admin_state, s.op_state),
        (AdminState(1), OpState::Stopped),
        "{s:?}"
    );
    let stat = api.stat("app").await.unwrap();
    assert!(stat[0].status.starts_with("MAINT"), "{stat:?}");

    api.set_state("app", "web1", State::Ready).await.unwrap();
    f.haproxy.wait_all_up(T).await.unwrap();
    let pids = answering_pids(&f.haproxy, 6).await;
    assert!(pids.contains(&web1) && pids.contains(&web2), "{pids:?}");
}

#[tokio::test]
async fn weight_round_trip() {
    let f = fleet(2).await;
    let api = f.haproxy.api();
    let w = api.get_weight("app", "web2").await.unwrap();
    assert_eq!((w.current, w.initial), (100, 100));
    for (weight, expected) in [
        (Weight::Percent(10), 10),
        (Weight::Percent(50), 50),
        (Weight::Absolute(256), 256),
        (Weight::Absolute(0), 0),
        (Weight::Percent(100), 100),
    ] {
        api.set_weight("app", "web2", weight).await.unwrap();
        assert_eq!(
            api.get_weight("app", "web2").await.unwrap().current,
            expected
        );
        let s = f.haproxy.server_state("web2").await.unwrap();
        assert_eq!((s.weight, s.initial_weight), (expected, 100), "{weight:?}");
        assert_eq!(s.in_rotation(), expected > 0);
    }
}

#[tokio::test]
async fn unknown_backend_or_server_is_reported_verbatim() {
    let f = fleet(1).await;
    let api = f.haproxy.api();
    let check = |err: HaproxyError, expected: &str| assert_eq!(err.to_string(), expected);
    check(
        api.set_state("app", "nope", State::Drain)
            .await
            .unwrap_err(),
        "HAProxy refused `set server app/nope state drain`: No such server.",
    );
    check(
        api.set_state("nope", "web1", State::Drain)
            .await
            .unwrap_err(),
        "HAProxy refused `set server nope/web1 state drain`: No such backend.",
    );
    check(
        api.set_weight("app", "nope", Weight::Percent(10))
            .await
            .unwrap_err(),
        "HAProxy refused `set weight app/nope 10%`: No such server.",
    );
    check(
        api.get_weight("app", "nope").await.unwrap_err(),
        "HAProxy refused `get weight app/nope`: No such server.",
    );
    check(
        api.servers_state("nope").await.unwrap_err(),
        "HAProxy refused `show servers state nope`: Can't find backend.",
    );
    check(
        api.stat("nope").await.unwrap_err(),
        "HAProxy refused `show stat nope 4 -1`: No such proxy.",
    );
    check(
        api.scur("app", "nope").await.unwrap_err(),
        "server nope is not in backend app (`show stat app` has no row for it)",
    );
    assert!(matches!(
        api.set_weight("app", "web1", Weight::Percent(101)).await,
        Err(HaproxyError::InvalidWeight { .. })
    ));
}

#[tokio::test]
async fn bad_names_are_refused_before_sending() {
    let f = fleet(2).await;
    let api = f.haproxy.api();
    for (backend, server) in [
        ("app", "web1\nset server app/web2 state maint"),
        ("app", "web1;set server app/web2 state maint"),
        ("app", "web2 state maint"),
        ("app/web2", "web2"),
        ("app", ""),
        ("app\r", "web2"),
    ] {
        let err = api
            .set_state(backend, server, State::Maint)
            .await
            .unwrap_err();
        assert!(matches!(err, HaproxyError::InvalidName { .. }), "{err}");
        assert!(err.to_string().contains("nothing was sent"), "{err}");
    }
    let err = api.servers_state("app\nshow info").await.unwrap_err();
    assert!(
        matches!(
            err,
            HaproxyError::InvalidName {
                what: "backend",
                ..
            }
        ),
        "{err}"
    );
    // Nothing was injected: both servers are still in rotation.
    let states = f.haproxy.show_servers_state().await.unwrap();
    assert!(states.iter().all(|s| s.in_rotation()), "{states:?}");
}

#[tokio::test]
async fn missing_or_dead_socket_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("haproxy.sock");
    let err = RuntimeApi::new(&missing)
        .servers_state("app")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HaproxyError::SocketMissing { .. }), "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("agent config"), "{msg}");

    // A socket file left behind by a stopped HAProxy.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let err = RuntimeApi::new(&stale)
        .servers_state("app")
        .await
        .unwrap_err();
    assert!(
        matches!(err, HaproxyError::ConnectionRefused { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn serde_ops_execute_against_haproxy() {
    let f = fleet(2).await;
    let socket = f.haproxy.socket_path();
    let run = |op: HaproxyOp| async move {
        // What the wire will carry: the op serialized and back.
        let op: HaproxyOp = serde_json::from_str(&serde_json::to_string(&op).unwrap()).unwrap();
        execute(socket, &op, DEFAULT_TIMEOUT).await
    };
    let reply = run(HaproxyOp::SetState {
        backend: "app".into(),
        server: "web2".into(),
        state: State::Drain,
    })
    .await
    .unwrap();
    assert_eq!(reply, HaproxyReply::Done);
    let reply = run(HaproxyOp::SetWeight {
        backend: "app".into(),
        server: "web2".into(),
        weight: Weight::Percent(50),
    })
    .await
    .unwrap();
    assert_eq!(reply, HaproxyReply::Done);
    let HaproxyReply::ServersState(states) = run(HaproxyOp::ServersState {
        backend: "app".into(),
    })
    .await
    .unwrap() else {
        panic!("wrong reply")
    };
    assert!(
        states[1].admin_state.is_drain() && states[1].weight == 50,
        "{states:?}"
    );
    let HaproxyReply::Drain(out) = run(HaproxyOp::WaitDrained {
        backend: "app".into(),
        server: "web2".into(),
        degradation_ms: 5_000,
        poll_ms: 50,
    })
    .await
    .unwrap() else {
        panic!("wrong reply")
    };
    assert!(out.is_drained(), "{out:?}");
    let err = run(HaproxyOp::SetState {
        backend: "app".into(),
        server: "web9".into(),
        state: State::Ready,
    })
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "HAProxy refused `set server app/web9 state ready`: No such server."
    );
}
