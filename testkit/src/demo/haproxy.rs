//! The demo's HAProxy: its configuration, the process, and the few runtime
//! API calls the demo and the tests make on the admin socket (the agent on
//! `lb-1` makes the real ones for the controller).

use crate::procs::Proc;
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the demo's HAProxy is.
#[derive(Clone, Debug)]
pub struct HaproxyInfo {
    /// Where clients send requests.
    pub frontend: SocketAddr,
    /// The admin socket (`level admin`).
    pub socket: PathBuf,
    /// The backend holding the app servers.
    pub backend: String,
    /// Its process id.
    pub pid: u32,
}

/// One row of `show servers state BACKEND`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRow {
    /// Server name.
    pub name: String,
    /// `srv_op_state`: 2 running, 0 stopped.
    pub op_state: u32,
    /// `srv_admin_state` bits: maint 0x01|0x02|0x04|0x20, drain 0x08|0x10.
    pub admin_state: u32,
    /// `srv_uweight`.
    pub weight: u32,
}

impl ServerRow {
    /// Any maintenance flag.
    pub fn is_maint(&self) -> bool {
        self.admin_state & (0x01 | 0x02 | 0x04 | 0x20) != 0
    }
    /// Any drain flag.
    pub fn is_drain(&self) -> bool {
        self.admin_state & (0x08 | 0x10) != 0
    }
    /// New requests can go to it: up, no admin flag, weight above 0.
    pub fn in_rotation(&self) -> bool {
        self.op_state == 2 && !self.is_maint() && !self.is_drain() && self.weight > 0
    }
}

/// Sends one runtime API command and returns the whole reply.
pub async fn command(socket: &Path, cmd: &str) -> Result<String> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "cannot connect to the HAProxy admin socket {}",
                socket.display()
            )
        })?;
    s.write_all(format!("{cmd}\n").as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .with_context(|| format!("HAProxy did not answer `{cmd}` in time"))??;
    Ok(out)
}

/// `show servers state BACKEND`, parsed.
pub async fn servers_state(socket: &Path, backend: &str) -> Result<Vec<ServerRow>> {
    let reply = command(socket, &format!("show servers state {backend}")).await?;
    parse_servers_state(&reply)
}

fn parse_servers_state(reply: &str) -> Result<Vec<ServerRow>> {
    let mut lines = reply.lines();
    if lines.next().map(str::trim) != Some("1") {
        bail!("HAProxy refused `show servers state`: {}", reply.trim());
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .context("`show servers state` without a header")?
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .with_context(|| format!("`show servers state` has no {name} column"))
    };
    let (n, op, admin, w) = (
        col("srv_name")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
    );
    let mut rows = Vec::new();
    for line in lines {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> Result<u32> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("bad `show servers state` row: {line}"))
        };
        rows.push(ServerRow {
            name: f.get(n).unwrap_or(&"").to_string(),
            op_state: num(op)?,
            admin_state: num(admin)?,
            weight: num(w)?,
        });
    }
    Ok(rows)
}

/// `haproxy.cfg` for the demo: admin socket, short timeouts, retries on a
/// server going away, one backend with health checks and `weight 100` (so a
/// percent ramp is not rounded to 0 as on HAProxy's default weight 1).
pub(crate) fn config(
    socket: &Path,
    frontend: SocketAddr,
    backend: &str,
    servers: &[(String, u16)],
) -> String {
    let mut cfg = format!(
        "# Written by vesemir demo.
global
    stats socket {sock} mode 600 level admin
    stats timeout 30s
    nbthread 1

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 2s
    timeout check 1s
    # A request to a server going away is retried on another server.
    option redispatch
    retries 3
    retry-on conn-failure empty-response

frontend fe_demo
    bind {frontend}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk GET /health
",
        sock = socket.display(),
    );
    for (name, port) in servers {
        cfg.push_str(&format!(
            "    server {name} 127.0.0.1:{port} check inter 200ms rise 1 fall 2 weight 100\n"
        ));
    }
    cfg
}

/// Whether `haproxy` is on PATH.
pub fn installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Validates with `haproxy -c`, runs `haproxy -db`, waits until the admin
/// socket answers and the frontend accepts.
pub(crate) async fn start(
    dir: &Path,
    backend: &str,
    servers: &[(String, u16)],
) -> Result<(Proc, HaproxyInfo)> {
    std::fs::create_dir_all(dir)?;
    let socket = dir.join("admin.sock");
    let mut last = None;
    // The free port may be taken between probing and HAProxy's bind: retry.
    for _ in 0..3 {
        let frontend = SocketAddr::from(([127, 0, 0, 1], crate::procs::free_port()?));
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config(&socket, frontend, backend, servers))?;
        let out = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .context("running haproxy -c")?;
        if !out.status.success() {
            bail!(
                "haproxy -c refused {}:\n{}{}",
                cfg.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut d = Proc::daemon(
            "haproxy",
            Command::new("haproxy").arg("-db").arg("-f").arg(&cfg),
            dir.join("haproxy.log"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = loop {
            if let Some(st) = d.exited() {
                break Err(anyhow::anyhow!(
                    "haproxy exited at start ({st}):\n{}",
                    d.log_tail(20)
                ));
            }
            if servers_state(&socket, backend).await.is_ok() && TcpStream::connect(frontend).is_ok()
            {
                break Ok(());
            }
            if Instant::now() > deadline {
                break Err(anyhow::anyhow!(
                    "haproxy not ready after 10s:\n{}",
                    d.log_tail(20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match ready {
            Ok(()) => {
                let info = HaproxyInfo {
                    frontend,
                    socket: socket.clone(),
                    backend: backend.to_string(),
                    pid: d.pid(),
                };
                return Ok((d, info));
            }
            Err(e) => {
                d.stop(Duration::from_secs(2));
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_servers_state() {
        let reply = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight\n3 demo 1 app-1 127.0.0.1 2 0 100 100\n3 demo 2 app-2 127.0.0.1 2 8 100 100\n3 demo 3 app-3 127.0.0.1 0 1 10 100\n\n";
        let rows = parse_servers_state(reply).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].in_rotation());
        assert!(rows[1].is_drain() && !rows[1].in_rotation());
        assert!(rows[2].is_maint() && rows[2].weight == 10);
        assert!(parse_servers_state("Can't find backend.\n").is_err());
    }
}
