//! HAProxy runtime API client (admin socket).
//!
//! The agent on an HAProxy VM runs these operations when the controller asks,
//! to take a server out of rotation before a deploy and put it back after.
//!
//! Layout:
//! - [`RuntimeApi`]: a typed client for one admin socket. One command per
//!   connection: write the command and `\n`, read to EOF, with a timeout on
//!   connect and on the exchange and a cap on the reply size.
//! - [`execute`]: runs one [`HaproxyOp`] of the wire protocol (its types,
//!   re-exported here, live in `vesemir_protocol::haproxy`) and answers
//!   with its typed [`HaproxyReply`].
//! - Parsers for `show servers state` and `show stat` replies, which are plain
//!   functions over text ([`parse_servers_state`], [`parse_stat`],
//!   [`parse_weight`]) and tested against captured HAProxy 2.6 output.
//!
//! Architecture invariant: a backend or server name is validated
//! ([`validate_name`]) before anything is written to the socket, so a name can
//! never smuggle a second command into HAProxy.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;
pub use vesemir_protocol::haproxy::{
    AdminState, DrainOutcome, HaproxyOp, HaproxyReply, OpState, ServerStat, ServerState, State,
    Weight, WeightReading,
};

/// Default timeout for connecting to the admin socket, and again for the
/// command/reply exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest reply accepted from HAProxy; `show stat` of a big backend is a few
/// hundred KiB, anything beyond this is a runaway.
pub const MAX_REPLY_BYTES: usize = 4 * 1024 * 1024;

/// Longest backend or server name accepted (HAProxy has no hard limit; this
/// keeps error messages and commands bounded).
pub const MAX_NAME_LEN: usize = 255;

/// Shortest poll interval honoured by [`RuntimeApi::wait_drained`].
pub const MIN_POLL: Duration = Duration::from_millis(10);

/// Everything that can go wrong talking to HAProxy's admin socket.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// A backend or server name with characters HAProxy never uses in names.
    #[error(
        "invalid HAProxy {what} name {name:?}: names may only contain A-Z a-z 0-9 _ . : - \
         and be 1 to 255 characters long (nothing was sent to HAProxy)"
    )]
    InvalidName {
        /// `backend` or `server`.
        what: &'static str,
        /// The refused name, as given.
        name: String,
    },
    /// A weight outside what HAProxy accepts.
    #[error("invalid weight {weight}: percent must be 0-100, absolute 0-256 (nothing was sent to HAProxy)")]
    InvalidWeight {
        /// The refused weight, as given (`50%` or `300`).
        weight: String,
    },
    /// The socket file does not exist.
    #[error(
        "HAProxy admin socket {} does not exist: is HAProxy running with \
         `stats socket {} level admin` in its global section, and does the agent \
         config name this path as the HAProxy socket?",
        path.display(), path.display()
    )]
    SocketMissing {
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// The agent's user may not open the socket.
    #[error(
        "permission denied on HAProxy admin socket {}: the agent's user needs read and \
         write access to it (see `mode`, `user` and `group` on the `stats socket` line)",
        path.display()
    )]
    PermissionDenied {
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// The socket file exists but nothing listens on it.
    #[error(
        "connection refused on HAProxy admin socket {}: the file exists but nothing \
         listens on it (stale socket from a stopped HAProxy?)",
        path.display()
    )]
    ConnectionRefused {
        /// The socket path that was tried.
        path: PathBuf,
    },
    /// HAProxy did not accept the connection, or did not finish its reply, in time.
    #[error("timed out after {timeout:?} {during} HAProxy admin socket {}", path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// `connecting to` or `waiting for a reply to <command> on`.
        during: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// Any other I/O failure on the socket.
    #[error("I/O error on HAProxy admin socket {}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The reply was larger than [`MAX_REPLY_BYTES`].
    #[error("HAProxy reply to `{command}` is larger than {limit} bytes; refusing to read it")]
    ReplyTooLarge {
        /// The command sent.
        command: String,
        /// The cap in bytes.
        limit: usize,
    },
    /// HAProxy answered with an error message (reported verbatim).
    #[error("HAProxy refused `{command}`: {message}")]
    Refused {
        /// The command sent.
        command: String,
        /// HAProxy's reply, trimmed, e.g. `No such server.`.
        message: String,
    },
    /// The reply did not have the expected shape.
    #[error("cannot parse HAProxy reply to `{command}`: {reason}")]
    Parse {
        /// The command sent.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// `show stat` of the backend has no row for the server.
    #[error(
        "server {server} is not in backend {backend} (`show stat {backend}` has no row for it)"
    )]
    ServerNotFound {
        /// The backend.
        backend: String,
        /// The missing server.
        server: String,
    },
}

/// Run one operation against the admin socket at `socket`, with `timeout`
/// on connect and on each exchange (not on the whole of a `WaitDrained`).
pub async fn execute(
    socket: &Path,
    op: &HaproxyOp,
    timeout: Duration,
) -> Result<HaproxyReply, HaproxyError> {
    let api = RuntimeApi::new(socket).with_timeout(timeout);
    Ok(match op {
        HaproxyOp::SetState {
            backend,
            server,
            state,
        } => {
            api.set_state(backend, server, *state).await?;
            HaproxyReply::Done
        }
        HaproxyOp::SetWeight {
            backend,
            server,
            weight,
        } => {
            api.set_weight(backend, server, *weight).await?;
            HaproxyReply::Done
        }
        HaproxyOp::GetWeight { backend, server } => {
            HaproxyReply::Weight(api.get_weight(backend, server).await?)
        }
        HaproxyOp::ServersState { backend } => {
            HaproxyReply::ServersState(api.servers_state(backend).await?)
        }
        HaproxyOp::Stat { backend } => HaproxyReply::Stat(api.stat(backend).await?),
        HaproxyOp::WaitDrained {
            backend,
            server,
            degradation_ms,
            poll_ms,
        } => HaproxyReply::Drain(
            api.wait_drained(
                backend,
                server,
                Duration::from_millis(*degradation_ms),
                Duration::from_millis(*poll_ms),
            )
            .await?,
        ),
    })
}

/// Refuse a backend or server name HAProxy would never have: only
/// `[A-Za-z0-9_.:-]`, 1 to [`MAX_NAME_LEN`] characters. This is what keeps
/// spaces, newlines and `;` (command separators) out of the socket.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), HaproxyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(HaproxyError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

/// A client for one HAProxy admin socket.
#[derive(Clone, Debug)]
pub struct RuntimeApi {
    /// Path of the `stats socket … level admin` unix socket.
    socket: PathBuf,
    /// Applied to connect, and again to writing the command and reading the reply.
    timeout: Duration,
    /// Replies longer than this are refused instead of buffered.
    max_reply: usize,
}

impl RuntimeApi {
    /// A client for the admin socket at `socket`, with [`DEFAULT_TIMEOUT`]
    /// and [`MAX_REPLY_BYTES`].
    pub fn new(socket: impl Into<PathBuf>) -> RuntimeApi {
        RuntimeApi {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            max_reply: MAX_REPLY_BYTES,
        }
    }

    /// Use `timeout` for connect and for each command/reply exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> RuntimeApi {
        self.timeout = timeout;
        self
    }

    /// Refuse replies longer than `max_reply` bytes.
    pub fn with_max_reply(mut self, max_reply: usize) -> RuntimeApi {
        self.max_reply = max_reply;
        self
    }

    /// The admin socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Send one raw command and return the whole reply. The command must be
    /// a single line; prefer the typed operations, which validate names.
    pub async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        if command.bytes().any(|b| b.is_ascii_control()) {
            return Err(HaproxyError::Parse {
                command: command.escape_debug().to_string(),
                reason: "a command must be one line without control characters; nothing was sent"
                    .into(),
            });
        }
        let path = &self.socket;
        // A full listen backlog answers a Unix-socket connect with EAGAIN at
        // once (an HAProxy VM serving a hundred hosts in flight gets there):
        // try again shortly, within the same timeout.
        let connect = async {
            loop {
                match UnixStream::connect(path).await {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    other => return other,
                }
            }
        };
        let mut stream = match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => {
                return Err(HaproxyError::Timeout {
                    path: path.clone(),
                    during: "connecting to".into(),
                    timeout: self.timeout,
                })
            }
            Ok(Err(e)) => return Err(connect_error(path, e)),
            Ok(Ok(s)) => s,
        };
        let limit = self.max_reply;
        let exchange = async {
            let mut line = Vec::with_capacity(command.len() + 1);
            line.extend_from_slice(command.as_bytes());
            line.push(b'\n');
            stream.write_all(&line).await?;
            let mut reply = Vec::new();
            (&mut stream)
                .take(limit as u64 + 1)
                .read_to_end(&mut reply)
                .await?;
            Ok::<_, io::Error>(reply)
        };
        let reply = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(HaproxyError::Timeout {
                    path: path.clone(),
                    during: format!("waiting for a reply to `{command}` on"),
                    timeout: self.timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(HaproxyError::Io {
                    path: path.clone(),
                    source: e,
                })
            }
            Ok(Ok(r)) => r,
        };
        if reply.len() > limit {
            return Err(HaproxyError::ReplyTooLarge {
                command: command.to_owned(),
                limit,
            });
        }
        tracing::debug!(socket = %path.display(), command, reply_len = reply.len(), "haproxy command");
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    /// Send a `set …` command; any non-empty reply is HAProxy's error.
    async fn set(&self, command: &str) -> Result<(), HaproxyError> {
        let reply = self.command(command).await?;
        let message = reply.trim();
        if message.is_empty() {
            Ok(())
        } else {
            Err(HaproxyError::Refused {
                command: command.to_owned(),
                message: message.to_owned(),
            })
        }
    }

    /// `set server BACKEND/SERVER state ready|drain|maint`.
    pub async fn set_state(
        &self,
        backend: &str,
        server: &str,
        state: State,
    ) -> Result<(), HaproxyError> {
        validate_name("backend", backend)?;
        validate_name("server", server)?;
        self.set(&format!("set server {backend}/{server} state {state}"))
            .await
    }

    /// `set weight BACKEND/SERVER N%|N`.
    pub async fn set_weight(
        &self,
        backend: &str,
        server: &str,
        weight: Weight,
    ) -> Result<(), HaproxyError> {
        validate_name("backend", backend)?;
        validate_name("server", server)?;
        let arg = weight_arg(weight)?;
        self.set(&format!("set weight {backend}/{server} {arg}"))
            .await
    }

    /// `get weight BACKEND/SERVER`.
    pub async fn get_weight(
        &self,
        backend: &str,
        server: &str,
    ) -> Result<WeightReading, HaproxyError> {
        validate_name("backend", backend)?;
        validate_name("server", server)?;
        let command = format!("get weight {backend}/{server}");
        let reply = self.command(&command).await?;
        parse_weight(&command, &reply)
    }

    /// `show servers state BACKEND`: every server with its states and weights.
    pub async fn servers_state(&self, backend: &str) -> Result<Vec<ServerState>, HaproxyError> {
        validate_name("backend", backend)?;
        let command = format!("show servers state {backend}");
        let reply = self.command(&command).await?;
        parse_servers_state(&command, &reply)
    }

    /// `show stat BACKEND 4 -1`: every server's counters (sessions, status, weight).
    pub async fn stat(&self, backend: &str) -> Result<Vec<ServerStat>, HaproxyError> {
        validate_name("backend", backend)?;
        let command = format!("show stat {backend} 4 -1");
        let reply = self.command(&command).await?;
        parse_stat(&command, &reply)
    }

    /// Current sessions (`scur`) of one server.
    pub async fn scur(&self, backend: &str, server: &str) -> Result<u64, HaproxyError> {
        validate_name("server", server)?;
        self.stat(backend)
            .await?
            .into_iter()
            .find(|s| s.name == server)
            .map(|s| s.scur)
            .ok_or_else(|| HaproxyError::ServerNotFound {
                backend: backend.to_owned(),
                server: server.to_owned(),
            })
    }

    /// Poll `scur` every `poll` (at least [`MIN_POLL`]) until it is 0 or
    /// `degradation` has passed. Does not change the server's state: set
    /// `drain` or `maint` first.
    pub async fn wait_drained(
        &self,
        backend: &str,
        server: &str,
        degradation: Duration,
        poll: Duration,
    ) -> Result<DrainOutcome, HaproxyError> {
        validate_name("backend", backend)?;
        validate_name("server", server)?;
        let poll = poll.max(MIN_POLL);
        let start = Instant::now();
        let deadline = start + degradation;
        loop {
            let scur = self.scur(backend, server).await?;
            let now = Instant::now();
            let after_ms = now.duration_since(start).as_millis() as u64;
            if scur == 0 {
                return Ok(DrainOutcome::Drained { after_ms });
            }
            if now >= deadline {
                return Ok(DrainOutcome::TimedOut {
                    after_ms,
                    last_scur: scur,
                });
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
        }
    }
}

/// The runtime API argument of a weight, or why HAProxy would refuse it.
pub fn weight_arg(weight: Weight) -> Result<String, HaproxyError> {
    weight.to_arg().ok_or_else(|| HaproxyError::InvalidWeight {
        weight: weight.label(),
    })
}

fn connect_error(path: &Path, e: io::Error) -> HaproxyError {
    let path = path.to_owned();
    match e.kind() {
        io::ErrorKind::NotFound => HaproxyError::SocketMissing { path },
        io::ErrorKind::PermissionDenied => HaproxyError::PermissionDenied { path },
        io::ErrorKind::ConnectionRefused => HaproxyError::ConnectionRefused { path },
        _ => HaproxyError::Io { path, source: e },
    }
}

fn parse_error(command: &str, reason: impl Into<String>) -> HaproxyError {
    HaproxyError::Parse {
        command: command.to_owned(),
        reason: reason.into(),
    }
}

fn refused(command: &str, reply: &str) -> HaproxyError {
    HaproxyError::Refused {
        command: command.to_owned(),
        message: reply.trim().to_owned(),
    }
}

/// Parse the reply of `get weight B/S`: `50 (initial 100)`.
pub fn parse_weight(command: &str, reply: &str) -> Result<WeightReading, HaproxyError> {
    let line = reply.trim();
    let parsed = (|| {
        let (current, rest) = line.split_once(" (initial ")?;
        let initial = rest.strip_suffix(')')?;
        Some(WeightReading {
            current: current.trim().parse().ok()?,
            initial: initial.trim().parse().ok()?,
        })
    })();
    parsed.ok_or_else(|| refused(command, reply))
}

/// Parse the reply of `show servers state [BACKEND]`: a version line (`1`),
/// a `# be_id be_name …` header, then one space-separated row per server.
/// Columns are looked up by header name.
pub fn parse_servers_state(command: &str, reply: &str) -> Result<Vec<ServerState>, HaproxyError> {
    let mut lines = reply.lines();
    let version = lines.next().unwrap_or("").trim();
    if version != "1" {
        // Not the format: HAProxy's error text (`Can't find backend.`).
        return Err(refused(command, reply));
    }
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or_else(|| parse_error(command, "missing `#` header line"))?;
    let columns: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| parse_error(command, format!("header has no `{name}` column")))
    };
    let (be_name, srv_name, srv_addr, op, admin, uweight, iweight) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_iweight")?,
    );
    let srv_port = columns.iter().position(|c| *c == "srv_port");
    let mut servers = Vec::new();
    for line in lines {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |i: usize| {
            fields.get(i).copied().ok_or_else(|| {
                parse_error(
                    command,
                    format!("row has {} fields: {line:?}", fields.len()),
                )
            })
        };
        let number = |i: usize| -> Result<u32, HaproxyError> {
            let f = field(i)?;
            f.parse().map_err(|_| {
                parse_error(command, format!("`{}` is not a number: {f:?}", columns[i]))
            })
        };
        servers.push(ServerState {
            backend: field(be_name)?.to_owned(),
            name: field(srv_name)?.to_owned(),
            addr: field(srv_addr)?.to_owned(),
            port: srv_port
                .and_then(|i| fields.get(i))
                .and_then(|p| p.parse().ok()),
            op_state: OpState::from_code(number(op)?),
            admin_state: AdminState(number(admin)?),
            weight: number(uweight)?,
            initial_weight: number(iweight)?,
        });
    }
    Ok(servers)
}

/// Parse the CSV reply of `show stat BACKEND 4 -1`: a `# pxname,svname,…`
/// header, then one row per server. Columns are looked up by header name;
/// empty counters read as 0; `FRONTEND`/`BACKEND` rows are skipped.
pub fn parse_stat(command: &str, reply: &str) -> Result<Vec<ServerStat>, HaproxyError> {
    let mut lines = reply.lines();
    let header = match lines.next().and_then(|h| h.strip_prefix("# ")) {
        Some(h) => h,
        None => return Err(refused(command, reply)),
    };
    let columns = split_csv(header);
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| parse_error(command, format!("CSV header has no `{name}` column")))
    };
    let (px, sv, scur, qcur, status, weight) = (
        col("pxname")?,
        col("svname")?,
        col("scur")?,
        col("qcur")?,
        col("status")?,
        col("weight")?,
    );
    let mut servers = Vec::new();
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv(line);
        let field = |i: usize| fields.get(i).map(String::as_str).unwrap_or("");
        if matches!(field(sv), "FRONTEND" | "BACKEND") {
            continue;
        }
        let number = |i: usize| -> Result<u64, HaproxyError> {
            let f = field(i);
            if f.is_empty() {
                return Ok(0);
            }
            f.parse().map_err(|_| {
                parse_error(command, format!("`{}` is not a number: {f:?}", columns[i]))
            })
        };
        servers.push(ServerStat {
            backend: field(px).to_owned(),
            name: field(sv).to_owned(),
            scur: number(scur)?,
            qcur: number(qcur)?,
            status: field(status).to_owned(),
            weight: number(weight)? as u32,
        });
    }
    Ok(servers)
}

/// Split one CSV line as HAProxy writes it: fields with a comma or quote are
/// double-quoted, quotes inside doubled.
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from HAProxy 2.6.12 (Debian 12): backend `app`, web1 set to
    // `drain`, web2 weight set to 100; both failing health checks.
    const SERVERS_STATE_DRAIN: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 app 1 web1 127.0.0.1 0 8 1 1 1 17 2 0 6 0 0 0 - 18081 - 0 0 - - 0\n3 app 2 web2 127.0.0.1 0 0 100 1 10 17 2 0 6 0 0 0 - 18082 - 0 0 - - 0\n\n";
    // Same, web1 in `maint`, web2 up with weight 3.
    const SERVERS_STATE_MAINT: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 app 1 web1 127.0.0.1 0 1 1 1 0 8 2 0 14 0 0 0 - 18081 - 0 0 - - 0\n3 app 2 web2 127.0.0.1 2 0 3 1 2 8 2 0 6 0 0 0 - 18082 - 0 0 - - 0\n\n";
    const STAT_HEADER: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\n";
    const STAT_ROW_MAINT: &str = "app,web1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,2,2,1,1,,1,3,1,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,2,3,0,,,,127.0.0.1:18081,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n";
    const STAT_ROW_DOWN: &str = "app,web2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,256,1,0,1,1,3,3,,1,3,2,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,2,3,0,,,,127.0.0.1:18082,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,256,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n";
    // An up server with one session in flight, a quoted check_desc with a comma.
    const STAT_ROW_BUSY: &str = "app,web3,0,2,1,3,,40,4000,9000,,0,,0,0,0,0,UP 1/3,100,1,0,0,0,5,0,,1,3,3,,40,,2,0,,4,L7OK,200,1,0,40,0,0,0,0,,,,40,0,0,,,,,0,\"OK, fine\",,0,0,0,1,,,,Layer7 check passed,,2,3,3,,,,127.0.0.1:18083,,http,,,,,,,,0,40,0,,,0,,0,0,0,2001,0,0,0,0,1,100,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n";

    fn server(name: &str, port: u16, op: OpState, admin: u32, weight: u32) -> ServerState {
        ServerState {
            backend: "app".into(),
            name: name.into(),
            addr: "127.0.0.1".into(),
            port: Some(port),
            op_state: op,
            admin_state: AdminState(admin),
            weight,
            initial_weight: 1,
        }
    }

    fn check_servers_state(reply: &str, expected: Result<Vec<ServerState>, &str>) {
        let got = parse_servers_state("show servers state app", reply);
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected),
            (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg),
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn servers_state() {
        check_servers_state(
            SERVERS_STATE_DRAIN,
            Ok(vec![
                server("web1", 18081, OpState::Stopped, 8, 1),
                server("web2", 18082, OpState::Stopped, 0, 100),
            ]),
        );
        check_servers_state(
            SERVERS_STATE_MAINT,
            Ok(vec![
                server("web1", 18081, OpState::Stopped, 1, 1),
                server("web2", 18082, OpState::Running, 0, 3),
            ]),
        );
        check_servers_state(
            "Can't find backend.\n\n",
            Err("HAProxy refused `show servers state app`: Can't find backend."),
        );
        check_servers_state(
            "1\n3 app 1 web1\n",
            Err("cannot parse HAProxy reply to `show servers state app`: missing `#` header line"),
        );
    }

    #[test]
    fn admin_state_flags() {
        let states = parse_servers_state("x", SERVERS_STATE_MAINT).unwrap();
        assert!(states[0].admin_state.is_maint() && !states[0].admin_state.is_drain());
        assert!(!states[0].in_rotation());
        assert!(states[1].in_rotation());
        assert!(AdminState(8).is_drain() && !AdminState(8).is_ready());
        assert!(AdminState(0).is_ready());
    }

    fn stat(name: &str, scur: u64, status: &str, weight: u32) -> ServerStat {
        ServerStat {
            backend: "app".into(),
            name: name.into(),
            scur,
            qcur: 0,
            status: status.into(),
            weight,
        }
    }

    fn check_stat(reply: &str, expected: Result<Vec<ServerStat>, &str>) {
        let got = parse_stat("show stat app 4 -1", reply);
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(got, expected),
            (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg),
            (got, expected) => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn stat_csv() {
        check_stat(
            &format!("{STAT_HEADER}{STAT_ROW_MAINT}{STAT_ROW_DOWN}{STAT_ROW_BUSY}\n"),
            Ok(vec![
                stat("web1", 0, "MAINT", 1),
                stat("web2", 0, "DOWN", 256),
                stat("web3", 1, "UP 1/3", 100),
            ]),
        );
        check_stat(&format!("{STAT_HEADER}\n"), Ok(vec![]));
        check_stat(
            "No such proxy.\n\n",
            Err("HAProxy refused `show stat app 4 -1`: No such proxy."),
        );
        check_stat(
            "# pxname,svname,status\napp,web1,UP\n",
            Err("cannot parse HAProxy reply to `show stat app 4 -1`: CSV header has no `scur` column"),
        );
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(
            split_csv(r#"a,"b,c",,"d""e","#),
            vec!["a", "b,c", "", "d\"e", ""]
        );
    }

    #[test]
    fn weight_reply() {
        let check = |reply: &str, expected: Result<(u32, u32), &str>| {
            let got = parse_weight("get weight app/web1", reply)
                .map(|w| (w.current, w.initial))
                .map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned));
        };
        check("50 (initial 100)\n\n", Ok((50, 100)));
        check("256 (initial 1)\n\n", Ok((256, 1)));
        check(
            "No such server.\n\n",
            Err("HAProxy refused `get weight app/web1`: No such server."),
        );
    }

    #[test]
    fn names() {
        for ok in ["app", "web-1.prod_eu:8080", "A9"] {
            assert!(validate_name("server", ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "a b",
            "a\nshow info",
            "a;b",
            "a/b",
            "é",
            "a\t",
            "a\0",
            &long,
        ] {
            assert!(validate_name("server", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn weights() {
        assert_eq!(weight_arg(Weight::Percent(50)).unwrap(), "50%");
        assert_eq!(weight_arg(Weight::Absolute(256)).unwrap(), "256");
        assert!(weight_arg(Weight::Percent(101)).is_err());
        assert!(weight_arg(Weight::Absolute(257)).is_err());
    }

    #[test]
    fn op_round_trips_through_json() {
        let op = HaproxyOp::WaitDrained {
            backend: "app".into(),
            server: "web1".into(),
            degradation_ms: 30_000,
            poll_ms: 250,
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(serde_json::from_str::<HaproxyOp>(&json).unwrap(), op);
        let op = HaproxyOp::SetWeight {
            backend: "app".into(),
            server: "web1".into(),
            weight: Weight::Percent(10),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(
            json,
            r#"{"SetWeight":{"backend":"app","server":"web1","weight":{"percent":10}}}"#
        );
    }

    /// A fake admin socket that answers each connection with the next reply
    /// and records the commands received.
    async fn fake_haproxy(
        replies: Vec<&'static str>,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        tokio::task::JoinHandle<Vec<String>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let mut commands = Vec::new();
            for reply in replies {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                loop {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap() == 0 || b[0] == b'\n' {
                        break;
                    }
                    buf.push(b[0]);
                }
                commands.push(String::from_utf8(buf).unwrap());
                s.write_all(reply.as_bytes()).await.unwrap();
            }
            commands
        });
        (dir, path, task)
    }

    #[tokio::test]
    async fn set_reports_haproxy_error_verbatim() {
        let (_dir, path, task) = fake_haproxy(vec!["\n", "No such server.\n\n"]).await;
        let api = RuntimeApi::new(&path);
        api.set_state("app", "web1", State::Drain).await.unwrap();
        let err = api
            .set_weight("app", "nope", Weight::Percent(10))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "HAProxy refused `set weight app/nope 10%`: No such server."
        );
        assert_eq!(
            task.await.unwrap(),
            vec!["set server app/web1 state drain", "set weight app/nope 10%"]
        );
    }

    #[tokio::test]
    async fn bad_name_is_refused_before_connecting() {
        // No socket at all: the name check must come first.
        let api = RuntimeApi::new("/nonexistent/haproxy.sock");
        let err = api
            .set_state("app", "web1\nset server app/web2 state maint", State::Ready)
            .await
            .unwrap_err();
        assert!(
            matches!(err, HaproxyError::InvalidName { what: "server", .. }),
            "{err}"
        );
        let err = api.servers_state("app backend").await.unwrap_err();
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
    }

    #[tokio::test]
    async fn missing_socket_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let err = RuntimeApi::new(&path)
            .servers_state("app")
            .await
            .unwrap_err();
        assert!(matches!(err, HaproxyError::SocketMissing { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("agent config"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn silent_socket_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.sock");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        // Accepted by the kernel backlog, never answered.
        let err = RuntimeApi::new(&path)
            .with_timeout(Duration::from_millis(100))
            .servers_state("app")
            .await
            .unwrap_err();
        assert!(matches!(err, HaproxyError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn oversized_reply_is_refused() {
        let (_dir, path, _task) = fake_haproxy(vec![STAT_HEADER]).await;
        let err = RuntimeApi::new(&path)
            .with_max_reply(100)
            .stat("app")
            .await
            .unwrap_err();
        assert!(
            matches!(err, HaproxyError::ReplyTooLarge { limit: 100, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wait_drained_polls_until_zero() {
        let busy: &'static str =
            Box::leak(format!("{STAT_HEADER}{STAT_ROW_BUSY}").into_boxed_str());
        let idle: &'static str = Box::leak(
            format!(
                "{STAT_HEADER}{}",
                STAT_ROW_BUSY.replacen(",0,2,1,3,", ",0,2,0,3,", 1)
            )
            .into_boxed_str(),
        );
        let (_dir, path, task) = fake_haproxy(vec![busy, busy, idle]).await;
        let out = RuntimeApi::new(&path)
            .wait_drained(
                "app",
                "web3",
                Duration::from_secs(10),
                Duration::from_millis(10),
            )
            .await
            .unwrap();
        assert!(out.is_drained(), "{out:?}");
        assert_eq!(task.await.unwrap().len(), 3);

        let (_dir, path, _task) = fake_haproxy(vec![busy; 100]).await;
        let out = RuntimeApi::new(&path)
            .wait_drained(
                "app",
                "web3",
                Duration::from_millis(50),
                Duration::from_millis(10),
            )
            .await
            .unwrap();
        assert!(!out.is_drained() && out.last_scur() == 1, "{out:?}");
        assert!(out.waited() >= Duration::from_millis(50), "{out:?}");
    }

    #[tokio::test]
    async fn execute_maps_ops() {
        let (_dir, path, _task) = fake_haproxy(vec!["\n", "50 (initial 100)\n\n"]).await;
        let op = HaproxyOp::SetState {
            backend: "app".into(),
            server: "web1".into(),
            state: State::Maint,
        };
        assert_eq!(
            execute(&path, &op, DEFAULT_TIMEOUT).await.unwrap(),
            HaproxyReply::Done
        );
        let op = HaproxyOp::GetWeight {
            backend: "app".into(),
            server: "web1".into(),
        };
        assert_eq!(
            execute(&path, &op, DEFAULT_TIMEOUT).await.unwrap(),
            HaproxyReply::Weight(WeightReading {
                current: 50,
                initial: 100
            })
        );
    }
}
