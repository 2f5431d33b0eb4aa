//! A tiny HTTP/1.1 application for demos and tests: what vesemir deploys.
//!
//! ```text
//! vesemir-sample-app --listen ADDR (--version-file PATH | --version V) [--unhealthy-file PATH]
//! ```
//!
//! - `GET /` → 200, body `<version>\n`. The version is read once at start, so
//!   a new version is served only after a restart, like a real deploy.
//! - `GET /health` → 200 `ok`, or 500 `unhealthy` while the unhealthy file
//!   exists (default: `unhealthy` next to the version file). Tests create it
//!   to make a host fail its health check.
//! - `GET /slow?ms=N` → sleeps N ms (at most 10 minutes), then 200 `<version>\n`.
//! - Every response carries `X-Vesemir-Version` and `X-Vesemir-Pid`.
//!
//! Prints `listening on ADDR` (the bound address, useful with port 0) on
//! stdout once it accepts connections. On SIGTERM or SIGINT it stops
//! accepting, lets requests in flight finish (answering them with
//! `Connection: close`), closes idle keep-alive connections and exits 0.
//! Bad arguments exit 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Longest request body accepted (and discarded).
const MAX_BODY: u64 = 1024 * 1024;
/// Longest `/slow` sleep.
const MAX_SLOW: Duration = Duration::from_secs(600);
/// How long a graceful stop waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(660);

struct Config {
    /// Address to bind.
    listen: SocketAddr,
    /// What `GET /` answers.
    version: String,
    /// When this file exists, `/health` answers 500.
    unhealthy_file: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: vesemir-sample-app --listen ADDR (--version-file PATH | --version V) [--unhealthy-file PATH]"
}

fn parse_args() -> anyhow::Result<Config> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut version, mut version_file, mut unhealthy) = (None, None, None, None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse::<SocketAddr>().context("--listen")?),
            "--version" => version = Some(value()?),
            "--version-file" => version_file = Some(PathBuf::from(value()?)),
            "--unhealthy-file" => unhealthy = Some(PathBuf::from(value()?)),
            "-h" | "--help" => bail!("{}", usage()),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let listen = listen.context("--listen is required")?;
    let (version, unhealthy_file) = match (version, version_file) {
        (Some(v), None) => (v, unhealthy),
        (None, Some(path)) => {
            let v = std::fs::read_to_string(&path)
                .with_context(|| format!("reading version file {}", path.display()))?;
            let next_to = path.parent().map(|d| d.join("unhealthy"));
            (v.trim().to_owned(), unhealthy.or(next_to))
        }
        _ => bail!("give exactly one of --version and --version-file"),
    };
    Ok(Config {
        listen,
        version,
        unhealthy_file,
    })
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vesemir-sample-app: {e:#}\n{}", usage());
            return ExitCode::from(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vesemir-sample-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr()?;
    println!("listening on {local}");
    eprintln!(
        "vesemir-sample-app: pid {} version {} listening on {local}",
        std::process::id(),
        config.version
    );
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                conns.spawn(serve(stream, config.clone(), stop_rx.clone()));
            }
            // Reap finished connections so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(listener);
    eprintln!(
        "vesemir-sample-app: stopping, {} connection(s) open",
        conns.len()
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        bail!("requests still running after {STOP_GRACE:?}");
    }
    eprintln!("vesemir-sample-app: stopped");
    Ok(())
}

/// A parsed request head.
struct Request {
    /// `GET`, `HEAD`…
    method: String,
    /// Path and query.
    target: String,
    /// Whether the connection stays open after the response.
    keep_alive: bool,
    /// Request body length to skip.
    content_length: u64,
    /// `Transfer-Encoding` present: not supported.
    chunked: bool,
}

fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut keep_alive = version == "HTTP/1.1";
    let (mut content_length, mut chunked) = (0, false);
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" => {
                for token in value.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                    match token.as_str() {
                        "close" => keep_alive = false,
                        "keep-alive" => keep_alive = true,
                        _ => {}
                    }
                }
            }
            "content-length" => content_length = value.parse().ok()?,
            "transfer-encoding" => chunked = true,
            _ => {}
        }
    }
    Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        keep_alive,
        content_length,
        chunked,
    })
}

/// Serve one connection until the client closes, asks to close, or we stop.
async fn serve(mut stream: TcpStream, config: Arc<Config>, mut stop: watch::Receiver<bool>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // Read a complete head; while idle, a stop closes the connection.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                let _ = respond(&mut stream, 431, "head too large\n", false, false, &config).await;
                return;
            }
            let mut chunk = [0u8; 4096];
            let n = if buf.is_empty() {
                let read = if *stop.borrow() {
                    None
                } else {
                    tokio::select! {
                        n = stream.read(&mut chunk) => Some(n),
                        _ = stop.changed() => None,
                    }
                };
                match read {
                    Some(n) => n,
                    // Stopping while idle: serve a request already in the
                    // socket buffer (sent before the stop), else close.
                    None if has_pending_data(&stream) => stream.read(&mut chunk).await,
                    None => return,
                }
            } else {
                stream.read(&mut chunk).await
            };
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let Some(req) = parse_head(&head) else {
            let _ = respond(&mut stream, 400, "bad request\n", false, false, &config).await;
            return;
        };
        if req.chunked || req.content_length > MAX_BODY {
            let _ = respond(
                &mut stream,
                501,
                "chunked or large bodies are not supported\n",
                false,
                false,
                &config,
            )
            .await;
            return;
        }
        // Skip the body.
        let mut left = req.content_length;
        while left > 0 {
            if !buf.is_empty() {
                let n = left.min(buf.len() as u64) as usize;
                buf.drain(..n);
                left -= n as u64;
                continue;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let (status, body) = handle(&req, &config).await;
        let keep_alive = req.keep_alive && !*stop.borrow();
        let head_only = req.method == "HEAD";
        if respond(&mut stream, status, &body, head_only, keep_alive, &config)
            .await
            .is_err()
            || !keep_alive
        {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Whether the client already sent bytes we have not read (a peek that
/// bypasses tokio's cached readiness).
fn has_pending_data(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a valid local buffer on an open socket.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

async fn handle(req: &Request, config: &Config) -> (u16, String) {
    if req.method != "GET" && req.method != "HEAD" {
        return (405, "method not allowed\n".into());
    }
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    match path {
        "/" => (200, format!("{}\n", config.version)),
        "/health" => match &config.unhealthy_file {
            Some(f) if f.exists() => (500, "unhealthy".into()),
            _ => (200, "ok".into()),
        },
        "/slow" => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok());
            let Some(ms) = ms else {
                return (400, "usage: /slow?ms=N\n".into());
            };
            tokio::time::sleep(Duration::from_millis(ms).min(MAX_SLOW)).await;
            (200, format!("{}\n", config.version))
        }
        _ => (404, "not found\n".into()),
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    head_only: bool,
    keep_alive: bool,
    config: &Config,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Not Implemented",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: {}\r\nX-Vesemir-Version: {}\r\nX-Vesemir-Pid: {}\r\n\r\n{}",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
        config.version,
        std::process::id(),
        if head_only { "" } else { body },
    );
    stream.write_all(response.as_bytes()).await
}
