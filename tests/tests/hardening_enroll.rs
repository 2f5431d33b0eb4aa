//! Issue 11, point 2: enrollment starvation. A real controller process;
//! 500 TCP connections to its enrollment port that never finish a TLS
//! handshake (half silent, half trickling one byte at a time), held open
//! from many loopback source addresses, must not keep a legitimate
//! `vesemir-agent enroll` from completing in under 2 s. Connections over the
//! per-source limit are closed at once, and the slow ones are cut at the
//! handshake deadline.

use anyhow::{Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use vesemir_testkit::fleet::{Controller, ControllerOptions};

/// Slow connections spread over many sources (under the per-source limit each).
const SPREAD_SOURCES: u8 = 100;
const PER_SPREAD_SOURCE: usize = 4;
/// Slow connections from one source, well over the per-source limit.
const FROM_ONE_SOURCE: usize = 100;
/// The controller's limit of unfinished connections per source.
const PER_SOURCE_LIMIT: usize = 32;

async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .with_context(|| format!("connect from {src} timed out: the controller is not accepting"))?
        .with_context(|| format!("connect from {src}"))
}

/// Sends the first bytes of a TLS record that announces 16 KiB, then one
/// byte every 200 ms, forever (until the peer closes).
fn trickle(mut s: TcpStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if s.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(&[0]).await.is_err() {
                return;
            }
        }
    })
}

/// Whether the controller closed `s` within `within` (EOF or reset).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[test]
fn a_legitimate_enrollment_completes_while_500_slow_connections_are_held() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let quic = c.quic;

    // Hold the slow connections open: silent ones and trickling ones,
    // from 127.0.0.2 … 127.0.0.101 (4 each) and 100 from 127.0.0.200.
    let (mut silent, tricklers, mut crowd) = rt.block_on(async {
        let mut silent = Vec::new();
        let mut tricklers = Vec::new();
        for i in 0..SPREAD_SOURCES {
            let src = Ipv4Addr::new(127, 0, 0, 2 + i);
            for j in 0..PER_SPREAD_SOURCE {
                let s = connect_from(src, quic).await?;
                if j % 2 == 0 {
                    silent.push(s);
                } else {
                    tricklers.push(trickle(s));
                }
            }
        }
        let mut crowd = Vec::new();
        for _ in 0..FROM_ONE_SOURCE {
            crowd.push(connect_from(Ipv4Addr::new(127, 0, 0, 200), quic).await?);
        }
        anyhow::Ok((silent, tricklers, crowd))
    })?;
    assert_eq!(
        silent.len() + tricklers.len() + crowd.len(),
        500,
        "the test holds 500 slow connections"
    );

    // The legitimate enrollment, from 127.0.0.1, while all of them are open.
    let t0 = Instant::now();
    let out = c.enroll("legit-1", &token, &[]);
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "enrollment under load failed after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(2),
        "a legitimate enrollment took {took:?} with 500 slow connections open (limit 2 s)"
    );
    eprintln!("legitimate enrollment took {took:?} with 500 slow connections open");

    rt.block_on(async {
        // Over the per-source limit: closed at once, not queued.
        let mut closed = 0;
        for s in crowd.iter_mut() {
            if closed_within(s, Duration::from_millis(200)).await {
                closed += 1;
            }
        }
        assert!(
            closed >= FROM_ONE_SOURCE - PER_SOURCE_LIMIT,
            "only {closed} of {FROM_ONE_SOURCE} connections from one source were refused at once"
        );
        // Silent ones are cut at the handshake deadline, not held for minutes.
        let t = Instant::now();
        for s in silent.iter_mut() {
            assert!(
                closed_within(s, Duration::from_secs(10)).await,
                "a silent connection was still open {:?} after the enrollment",
                t.elapsed()
            );
        }
        // Trickling ones too: each trickler ends when its write fails.
        for h in tricklers {
            tokio::time::timeout(Duration::from_secs(15), h)
                .await
                .context("a trickling connection was never cut")??;
        }
        anyhow::Ok(())
    })?;

    // The controller is still well and answers.
    assert!(c.agent_state("legit-1").is_some());
    Ok(())
}

/// Many VMs behind one NAT look like one source: when its slots are all
/// taken, `vesemir-agent enroll` is closed before the handshake, retries
/// with backoff, and gets through once a slot is free (here: when the
/// handshake deadline cuts the silent connections holding them).
#[test]
fn an_enrollment_shed_by_the_per_source_limit_retries_and_gets_through() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let quic = c.quic;
    // Take every slot of 127.0.0.1 (extra ones are closed at once).
    let _held = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..PER_SOURCE_LIMIT + 8 {
            held.push(connect_from(Ipv4Addr::LOCALHOST, quic).await?);
        }
        anyhow::Ok(held)
    })?;
    let t0 = Instant::now();
    let out = c.enroll("behind-nat-1", &token, &[]);
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It could only get through after the silent ones were cut (5 s).
    assert!(took >= Duration::from_secs(4), "took only {took:?}");
    let log = c.proc.as_ref().expect("started").log_text();
    assert!(
        log.contains("too many unfinished enrollment connections from one source"),
        "{log}"
    );
    Ok(())
}
