//! Draining for real: a long request already running on a server set to
//! `drain` keeps running and completes, new requests go elsewhere, and
//! `wait_drained` returns when it has completed, or when the degradation
//! time passes first. Shown by timestamps.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use vesemir_agent::haproxy::State;
use vesemir_testkit::haproxy::{poll_until, Fleet};

static APP: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(vesemir_testkit::haproxy::sample_app);
const T: Duration = Duration::from_secs(10);

/// Start a `/slow?ms=…` request through HAProxy that lands on `web1`, and
/// return once HAProxy counts it in web1's `scur`. The task yields the
/// response status, body and the instant the response was complete.
async fn slow_request_on_web1(
    f: &Fleet,
    ms: u64,
) -> tokio::task::JoinHandle<(u16, String, Instant)> {
    let api = f.haproxy.api();
    // Only web1 may take it.
    api.set_state("app", "web2", State::Maint).await.unwrap();
    let url = format!("http://{}/slow?ms={ms}", f.haproxy.frontend_addr());
    let request = tokio::spawn(async move {
        let resp = reqwest::get(url).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        (status, body, Instant::now())
    });
    poll_until("the slow request to reach web1", T, || {
        let api = api.clone();
        async move { (api.scur("app", "web1").await.unwrap() == 1).then_some(()) }
    })
    .await
    .unwrap();
    api.set_state("app", "web2", State::Ready).await.unwrap();
    f.haproxy
        .wait_for_states("web2 back in rotation", T, |s| s[1].in_rotation())
        .await
        .unwrap();
    request
}

#[tokio::test]
async fn drain_waits_for_the_request_in_flight() {
    let f = Fleet::start(Path::new(&*APP), "app", 2, "v1")
        .await
        .unwrap();
    let api = f.haproxy.api();
    let slow = Duration::from_millis(1500);
    let started = Instant::now();
    let request = slow_request_on_web1(&f, slow.as_millis() as u64).await;

    api.set_state("app", "web1", State::Drain).await.unwrap();
    let drain_started = Instant::now();
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            let out = api
                .wait_drained("app", "web1", T, Duration::from_millis(20))
                .await
                .unwrap();
            (out, Instant::now())
        })
    };

    // While web1 drains, new requests are all served by web2.
    let web2 = f.apps[1].pid();
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let resp = client
            .get(format!("http://{}/", f.haproxy.frontend_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-vesemir-pid"], web2.to_string().as_str());
    }

    let (status, body, completed) = request.await.unwrap();
    let (out, drained) = waiter.await.unwrap();
    let at = |t: Instant| t.duration_since(started);
    eprintln!(
        "request started 0ms, drain set {:?}, request completed {:?}, wait_drained returned {:?}: {out:?}",
        at(drain_started),
        at(completed),
        at(drained)
    );
    // The drained request was not cut: it completed normally.
    assert_eq!((status, body.as_str()), (200, "v1\n"));
    assert!(out.is_drained(), "{out:?}");
    // wait_drained did not return before the request had run its course…
    assert!(at(drained) >= slow, "returned at {:?}", at(drained));
    assert!(
        drained + Duration::from_millis(50) >= completed,
        "returned {:?} before the response arrived",
        completed - drained
    );
    // …and returned promptly after (poll 20 ms).
    assert!(
        drained.duration_since(completed) < Duration::from_millis(500),
        "returned {:?} after the response",
        drained.duration_since(completed)
    );
    assert!(out.waited() + Duration::from_millis(100) >= slow - at(drain_started));
}

#[tokio::test]
async fn drain_gives_up_after_the_degradation_time() {
    let f = Fleet::start(Path::new(&*APP), "app", 2, "v1")
        .await
        .unwrap();
    let api = f.haproxy.api();
    let started = Instant::now();
    let request = slow_request_on_web1(&f, 2500).await;

    api.set_state("app", "web1", State::Drain).await.unwrap();
    let degradation = Duration::from_millis(400);
    let drain_started = Instant::now();
    let out = api
        .wait_drained("app", "web1", degradation, Duration::from_millis(50))
        .await
        .unwrap();
    let gave_up = Instant::now();
    assert!(!out.is_drained(), "{out:?}");
    assert_eq!(out.last_scur(), 1);
    assert!(out.waited() >= degradation, "{out:?}");
    assert!(gave_up.duration_since(drain_started) < degradation + Duration::from_millis(500));

    // Giving up does not cut the request: it still completes, later.
    let (status, body, completed) = request.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "v1\n"));
    assert!(completed > gave_up);
    assert!(completed.duration_since(started) >= Duration::from_millis(2500));
}
