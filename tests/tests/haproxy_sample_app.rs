//! The sample app HAProxy balances in tests and the demo: HTTP/1.1
//! keep-alive, `Connection: close`, health toggling, and a graceful stop that
//! lets requests in flight finish.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use vesemir_testkit::haproxy::SampleApp;

static APP: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(vesemir_testkit::haproxy::sample_app);

/// Read one response: status line, headers (lowercased names), body by Content-Length.
async fn read_response<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
) -> (u16, Vec<(String, String)>, String) {
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(": ").unwrap();
        headers.push((k.to_ascii_lowercase(), v.to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    &headers.iter().find(|(k, _)| k == name).unwrap().1
}

#[tokio::test]
async fn keep_alive_close_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let app = SampleApp::start(Path::new(&*APP), dir.path(), "v7")
        .await
        .unwrap();
    let mut conn = BufReader::new(TcpStream::connect(app.addr()).await.unwrap());

    // Two pipelined requests on one connection, then one asking to close.
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, headers, body) = read_response(&mut conn).await;
    assert_eq!((status, body.as_str()), (200, "v7\n"));
    assert_eq!(header(&headers, "connection"), "keep-alive");
    assert_eq!(header(&headers, "x-vesemir-pid"), app.pid().to_string());
    let (status, _, body) = read_response(&mut conn).await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    app.set_unhealthy(true).unwrap();
    conn.get_mut()
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, headers, body) = read_response(&mut conn).await;
    assert_eq!((status, body.as_str()), (500, "unhealthy"));
    assert_eq!(header(&headers, "connection"), "close");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "server closed after Connection: close");
    app.set_unhealthy(false).unwrap();

    // HTTP/1.0 without keep-alive closes; a body is skipped; unknown path 404.
    let mut conn = BufReader::new(TcpStream::connect(app.addr()).await.unwrap());
    conn.get_mut()
        .write_all(
            b"GET /nope HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /health HTTP/1.0\r\n\r\n",
        )
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut conn).await;
    assert_eq!(status, 404);
    let (status, headers, body) = read_response(&mut conn).await;
    assert_eq!(
        (status, body.as_str(), header(&headers, "connection")),
        (200, "ok", "close")
    );
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = SampleApp::start(Path::new(&*APP), dir.path(), "v1")
        .await
        .unwrap();
    let addr = app.addr();
    // An idle keep-alive connection, and a slow request in flight.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut busy = BufReader::new(TcpStream::connect(addr).await.unwrap());
    busy.get_mut()
        .write_all(b"GET /slow?ms=700 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The app still answers others meanwhile. (A request already sent when the
    // stop comes is served even if the app had not read it yet.)
    let probe = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(probe.status(), 200);

    let started = std::time::Instant::now();
    app.terminate().unwrap();
    // The in-flight request completes, told the connection closes.
    let (status, headers, body) = read_response(&mut busy).await;
    assert_eq!((status, body.as_str()), (200, "v1\n"));
    assert_eq!(header(&headers, "connection"), "close");
    // The idle connection is closed rather than left hanging.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
    let status = app.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // And it no longer accepts.
    assert!(TcpStream::connect(addr).await.is_err());
}
