//! The fleet simulator: N agents in one process, each with its own enrolled
//! certificate and its own QUIC connection to a real controller, speaking the
//! real protocol (enrollment over TLS/TCP, hello/welcome, heartbeats with
//! facts, job streams, renewal at 2/3 of the certificate's lifetime,
//! reconnect with the agent's own full-jitter backoff).
//!
//! What is simulated is only the work: a job for `noop.yml` finishes at once
//! with one `ok` task; a job for `sleep.yml` prints `lines` log lines and
//! sleeps `seconds` (vars of the request), then reports one `changed` task.
//! Any other playbook, and every HAProxy job, fails with a message saying
//! so. The controller sends these jobs through its real job path (a
//! deployment, or `POST /v1/agents/{name}/run`); the simulated agents list
//! `noop.yml` and `sleep.yml` in their facts, as a real agent lists its
//! playbook directory, so the controller's playbook check passes.
//!
//! Layout: [`enroll_all`] enrolls (or loads from the cache dir) the
//! identities; [`SimFleet::start`] runs them; [`SimStats`] counts what
//! happened. Connections share a few quinn client `Endpoint`s (one UDP socket
//! carries thousands of connections, each with its own `ClientConfig`
//! holding that agent's certificate), so 10,000 agents need no 10,000
//! sockets.
//!
//! Invariant: nothing here forks the agent's logic that matters to the
//! controller: frames come from `vesemir_protocol`/`vesemir_wire`, keys and
//! CSRs from `vesemir_agent::identity`, the backoff from
//! `vesemir_agent::session::backoff`.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use vesemir_agent::identity::{enroll_tls, new_key_and_csr, validity};
use vesemir_agent::session::backoff;
use vesemir_protocol::control::{AgentMessage, CloseReason, ControllerMessage, Facts};
use vesemir_protocol::enroll::{EnrollRequest, EnrollResponse};
use vesemir_protocol::handshake::{Hello, Welcome};
use vesemir_protocol::job::{
    JobEvent, JobKind, JobOutcome, JobRequest, JobStatus, LogStream, Stats, TaskResult, TaskStatus,
};
use vesemir_protocol::PROTOCOL_VERSION;
use vesemir_wire::{read_frame, write_frame};

/// Playbook a simulated agent finishes at once.
pub const NOOP_PLAYBOOK: &str = "noop.yml";
/// Playbook a simulated agent answers with `lines` log lines and `seconds` of sleep.
pub const SLEEP_PLAYBOOK: &str = "sleep.yml";
/// Version simulated agents report.
pub const SIM_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-sim");

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Files of the identity cache.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TLS material.
    #[error("TLS: {0}")]
    Tls(String),
    /// The UDP socket of an endpoint.
    #[error("cannot open a UDP socket for the simulated agents: {0}")]
    Socket(std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One simulated agent's identity, as cached on disk.
#[derive(Clone)]
pub struct SimIdentity {
    /// Node name (the certificate's CN).
    pub name: String,
    /// Its certificate.
    pub cert_pem: String,
    /// Its private key (generated here, never sent).
    pub key_pem: String,
}

/// Where the identities of simulated agents are cached: `DIR/NAME.pem`
/// and `DIR/NAME.key`, valid for the controller whose CA is `DIR/ca.pem`.
#[derive(Debug, Clone)]
pub struct IdentityCache {
    /// The directory.
    pub dir: PathBuf,
}

impl IdentityCache {
    /// A cache in `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        IdentityCache { dir: dir.into() }
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }

    /// The cached identity of `name`, if both files are there and the
    /// certificate is valid for a few more seconds (one past 2/3 of its
    /// lifetime is renewed on the first heartbeat).
    pub fn load(&self, name: &str) -> Option<SimIdentity> {
        let (cert, key) = self.paths(name);
        let cert_pem = std::fs::read_to_string(cert).ok()?;
        let key_pem = std::fs::read_to_string(key).ok()?;
        let (_, not_after) = validity(&cert_pem)?;
        if not_after < time::OffsetDateTime::now_utc().unix_timestamp() + 5 {
            return None;
        }
        Some(SimIdentity {
            name: name.to_string(),
            cert_pem,
            key_pem,
        })
    }

    /// Writes an identity (key 0600).
    pub fn store(&self, id: &SimIdentity) -> Result<(), SimError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let (cert, key) = self.paths(&id.name);
        vesemir_agent::identity::write_atomic(&key, id.key_pem.as_bytes(), 0o600)
            .map_err(|e| SimError::Tls(e.to_string()))?;
        vesemir_agent::identity::write_atomic(&cert, id.cert_pem.as_bytes(), 0o644)
            .map_err(|e| SimError::Tls(e.to_string()))
    }
}

/// What an enrollment run gave.
#[derive(Debug, Default)]
pub struct EnrollReport {
    /// Identities enrolled now.
    pub enrolled: usize,
    /// Identities found in the cache.
    pub cached: usize,
    /// Names the controller refused, with its reason (or the connection error).
    pub refused: Vec<(String, String)>,
    /// Wall time of the enrollments made now.
    pub elapsed: Duration,
}

/// Enrolls `names` against the controller at `addr` (`in_flight` at once),
/// taking what the cache already has. Returns the identities in `names`
/// order (refused names are missing) and a report.
pub async fn enroll_all(
    addr: SocketAddr,
    ca_pem: &str,
    token: &str,
    names: &[String],
    in_flight: usize,
    cache: Option<&IdentityCache>,
) -> Result<(Vec<SimIdentity>, EnrollReport), SimError> {
    let tls = enroll_tls(ca_pem, Path::new("ca.pem")).map_err(|e| SimError::Tls(e.to_string()))?;
    let mut report = EnrollReport::default();
    let mut have: HashMap<String, SimIdentity> = HashMap::new();
    let mut todo = Vec::new();
    for n in names {
        match cache.and_then(|c| c.load(n)) {
            Some(id) => {
                have.insert(n.clone(), id);
                report.cached += 1;
            }
            None => todo.push(n.clone()),
        }
    }
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, name) in todo.into_iter().enumerate() {
        let (tls, token, permits) = (tls.clone(), token.to_string(), permits.clone());
        set.spawn(async move {
            let _p = permits.acquire_owned().await.expect("semaphore open");
            let r = enroll_one(addr, source_of(addr, i), tls, &token, &name).await;
            (name, r)
        });
    }
    while let Some(res) = set.join_next().await {
        let (name, r) = res.expect("enrollment task");
        match r {
            Ok(id) => {
                if let Some(c) = cache {
                    c.store(&id)?;
                }
                have.insert(name, id);
                report.enrolled += 1;
            }
            Err(why) => report.refused.push((name, why)),
        }
    }
    report.elapsed = started.elapsed();
    report.refused.sort();
    let ids = names.iter().filter_map(|n| have.remove(n)).collect();
    Ok((ids, report))
}

/// The address the `i`-th simulated agent enrolls from. A fleet's agents
/// come from as many addresses as they are VMs, and the controller limits
/// the unfinished enrollments of one source; against a loopback controller
/// each simulated agent therefore takes its own address of 127.0.0.0/8
/// (all of it is local on Linux), else the system chooses.
fn source_of(controller: SocketAddr, i: usize) -> Option<SocketAddr> {
    match controller {
        SocketAddr::V4(a) if a.ip().is_loopback() => {
            let ip = std::net::Ipv4Addr::new(127, 1 + (i / 250 % 200) as u8, (i % 250) as u8, 1);
            Some(SocketAddr::new(ip.into(), 0))
        }
        _ => None,
    }
}

/// One enrollment exchange, exactly as `vesemir-agent enroll` does it.
async fn enroll_one(
    addr: SocketAddr,
    source: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    token: &str,
    name: &str,
) -> Result<SimIdentity, String> {
    let (key_pem, csr_pem) = new_key_and_csr(name).map_err(|e| e.to_string())?;
    let server_name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let resp = tokio::time::timeout(Duration::from_secs(20), async {
        let tcp = match source {
            Some(src) => {
                let s = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
                s.bind(src).map_err(|e| format!("bind {src}: {e}"))?;
                s.connect(addr).await
            }
            None => tokio::net::TcpStream::connect(addr).await,
        }
        .map_err(|e| format!("connect: {e}"))?;
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let req = EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: token.to_string(),
            node: name.to_string(),
            csr_pem,
        };
        write_frame(&mut stream, &req)
            .await
            .map_err(|e| e.to_string())?;
        read_frame::<EnrollResponse, _>(&mut stream)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "closed without an answer".to_string())
    })
    .await
    .map_err(|_| "timed out after 20s".to_string())??;
    match resp {
        EnrollResponse::Accepted { cert_pem, .. } => Ok(SimIdentity {
            name: name.to_string(),
            cert_pem,
            key_pem,
        }),
        EnrollResponse::Refused { reason } => Err(reason),
    }
}

/// Counters of a running simulated fleet (all monotonic except `connected`
/// and `running_jobs`).
#[derive(Debug, Default)]
pub struct SimStats {
    /// Agents with a welcomed connection right now.
    pub connected: AtomicUsize,
    /// Welcomed connections made, in total.
    pub connects: AtomicU64,
    /// Connection attempts that failed before the welcome.
    pub connection_errors: AtomicU64,
    /// Welcomed sessions that ended without being asked to (the controller
    /// went away: a kill is detected this way once per agent).
    pub sessions_lost: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
    /// Jobs received.
    pub jobs: AtomicU64,
    /// Jobs finished with success.
    pub jobs_succeeded: AtomicU64,
    /// Jobs running right now.
    pub running_jobs: AtomicUsize,
    /// Most jobs running at once so far.
    pub max_running_jobs: AtomicUsize,
    /// Certificates renewed.
    pub renewals: AtomicU64,
    /// Longest backoff delay chosen, ms.
    pub max_backoff_ms: AtomicU64,
    /// Last error texts (bounded).
    pub errors: Mutex<Vec<String>>,
}

impl SimStats {
    fn error(&self, e: String) {
        self.connection_errors.fetch_add(1, Ordering::Relaxed);
        self.note(e);
    }

    fn note(&self, e: String) {
        let mut v = self.errors.lock().expect("errors lock");
        if v.len() < 64 {
            v.push(e);
        }
    }

    /// Resets `max_running_jobs` (between two measured deployments).
    pub fn reset_max_running(&self) {
        self.max_running_jobs.store(0, Ordering::Relaxed);
    }
}

/// Options of a simulated fleet.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Controller QUIC address.
    pub controller: SocketAddr,
    /// Name in the controller's certificate (its IP when it has no DNS name).
    pub server_name: String,
    /// Agents per UDP socket.
    pub agents_per_endpoint: usize,
    /// Reconnect backoff base and cap (the agent's defaults: 1 s, 60 s).
    pub reconnect_base: Duration,
    /// See `reconnect_base`.
    pub reconnect_cap: Duration,
    /// Where renewed identities are written (the enrollment cache).
    pub cache: Option<IdentityCache>,
    /// The controller's CA certificate.
    pub ca_pem: String,
}

/// A running simulated fleet; stops on [`SimFleet::stop`] or drop.
pub struct SimFleet {
    /// Counters.
    pub stats: Arc<SimStats>,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    endpoints: Vec<quinn::Endpoint>,
}

impl SimFleet {
    /// Starts one task per identity. Connections open in the background;
    /// poll [`SimStats::connected`].
    pub fn start(opts: SimOptions, ids: Vec<SimIdentity>) -> Result<SimFleet, SimError> {
        let stats = Arc::new(SimStats::default());
        let stop = CancellationToken::new();
        let per = opts.agents_per_endpoint.max(1);
        let mut endpoints = Vec::new();
        for _ in 0..ids.len().div_ceil(per).max(1) {
            let bind: SocketAddr = if opts.controller.is_ipv6() {
                "[::1]:0".parse().expect("addr")
            } else {
                "127.0.0.1:0".parse().expect("addr")
            };
            // One socket carries thousands of connections: a large buffer,
            // or a burst of handshakes overflows it (see the controller's).
            let socket = std::net::UdpSocket::bind(bind).map_err(SimError::Socket)?;
            vesemir_controller::quic::grow_udp_buffers(
                &socket,
                vesemir_controller::quic::UDP_BUFFER_BYTES,
            );
            endpoints.push(
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    None,
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
                .map_err(SimError::Socket)?,
            );
        }
        let roots = vesemir_agent::identity::ca_roots(&opts.ca_pem, Path::new("ca.pem"))
            .map_err(|e| SimError::Tls(e.to_string()))?;
        let roots = Arc::new(roots);
        let opts = Arc::new(opts);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in ids.into_iter().enumerate() {
            let agent = SimAgent {
                endpoint: endpoints[i / per].clone(),
                opts: opts.clone(),
                roots: roots.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                journal: Arc::new(Mutex::new(HashMap::new())),
                running: Arc::new(Mutex::new(HashMap::new())),
                id: Mutex::new(id),
            };
            tasks.spawn(agent.run());
        }
        Ok(SimFleet {
            stats,
            stop,
            tasks,
            endpoints,
        })
    }

    /// Agents with a welcomed connection now.
    pub fn connected(&self) -> usize {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// Waits until `n` agents are connected or `timeout` passes; returns
    /// the time it took.
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let c = self.connected();
            if c >= n {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "only {c} of {n} simulated agents connected after {timeout:?}; last errors: {:?}",
                    self.stats.errors.lock().expect("errors lock")
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every connection as an agent shutting down does, and waits.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        for e in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
        }
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Recorded outcomes of one simulated agent, by job id (its "journal").
type Journal = Arc<Mutex<HashMap<String, JobOutcome>>>;

struct SimAgent {
    endpoint: quinn::Endpoint,
    opts: Arc<SimOptions>,
    roots: Arc<rustls::RootCertStore>,
    stats: Arc<SimStats>,
    stop: CancellationToken,
    journal: Journal,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
    id: Mutex<SimIdentity>,
}

/// How a simulated session ended.
enum End {
    Stop,
    Lost(String),
    Closed(CloseReason),
}

impl SimAgent {
    async fn run(self) {
        let mut attempt: u32 = 0;
        loop {
            let (end, welcomed) = tokio::select! {
                r = self.session() => r,
                _ = self.stop.cancelled() => (End::Stop, false),
            };
            if welcomed {
                attempt = 0;
            }
            let delay = match end {
                End::Stop => return,
                End::Closed(CloseReason::Revoked | CloseReason::VersionMismatch) => {
                    self.opts.reconnect_cap
                }
                End::Closed(r) => {
                    if r == CloseReason::Shutdown {
                        attempt = 0;
                    }
                    let d = backoff(self.opts.reconnect_base, self.opts.reconnect_cap, attempt);
                    attempt = attempt.saturating_add(1);
                    d
                }
                End::Lost(why) => {
                    if welcomed {
                        self.stats.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.stats.error(why);
                    }
                    let d = backoff(self.opts.reconnect_base, self.opts.reconnect_cap, attempt);
                    attempt = attempt.saturating_add(1);
                    d
                }
            };
            self.stats
                .max_backoff_ms
                .fetch_max(delay.as_millis() as u64, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    fn client_config(&self) -> Result<quinn::ClientConfig, String> {
        let id = self.id.lock().expect("id lock").clone();
        let chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
            .map_err(|e| format!("bad key: {e}"))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(self.roots.clone())
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![vesemir_protocol::ALPN.to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(vesemir_agent::session::transport_config()));
        Ok(client)
    }

    /// One connection: handshake, then heartbeats, renewal and jobs until it
    /// ends. The bool says whether it got as far as the welcome.
    async fn session(&self) -> (End, bool) {
        let cfg = match self.client_config() {
            Ok(c) => c,
            Err(e) => return (End::Lost(e), false),
        };
        let connecting =
            match self
                .endpoint
                .connect_with(cfg, self.opts.controller, &self.opts.server_name)
            {
                Ok(c) => c,
                Err(e) => return (End::Lost(format!("connect: {e}")), false),
            };
        let conn = match tokio::time::timeout(Duration::from_secs(15), connecting).await {
            Err(_) => return (End::Lost("handshake timed out".into()), false),
            Ok(Err(e)) => return (end_of(&e), false),
            Ok(Ok(c)) => c,
        };
        let name = self.id.lock().expect("id lock").name.clone();
        let opened = tokio::time::timeout(Duration::from_secs(10), async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| end_of(&e))?;
            let hello = Hello {
                protocol_version: PROTOCOL_VERSION,
                agent_version: SIM_VERSION.to_string(),
                node: name.clone(),
                instance: instance_of(&name),
            };
            write_frame(&mut send, &hello)
                .await
                .map_err(|e| End::Lost(e.to_string()))?;
            match read_frame::<Welcome, _>(&mut recv).await {
                Ok(Some(w)) => Ok((send, recv, w)),
                _ => Err(conn
                    .close_reason()
                    .map(|e| end_of(&e))
                    .unwrap_or_else(|| End::Lost("no welcome".into()))),
            }
        })
        .await;
        let (mut send, mut recv, welcome) = match opened {
            Err(_) => return (End::Lost("no welcome within 10s".into()), false),
            Ok(Err(e)) => return (e, false),
            Ok(Ok(x)) => x,
        };
        self.stats.connected.fetch_add(1, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let end = self
            .serve(&conn, &name, &welcome, &mut send, &mut recv)
            .await;
        self.stats.connected.fetch_sub(1, Ordering::Relaxed);
        if let End::Stop = end {
            conn.close(CloseReason::Shutdown.code().into(), b"agent stopping");
        }
        (end, true)
    }

    async fn serve(
        &self,
        conn: &quinn::Connection,
        name: &str,
        welcome: &Welcome,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> End {
        let interval = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let renew_at = {
            let id = self.id.lock().expect("id lock");
            validity(&id.cert_pem).map(|(nb, na)| nb + (na - nb) * 2 / 3)
        };
        let mut renew_at = renew_at.unwrap_or(i64::MAX);
        let mut pending_key: Option<String> = None;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return End::Stop,
                _ = tick.tick() => {
                    let running: Vec<String> =
                        self.running.lock().expect("running lock").keys().cloned().collect();
                    let facts = Facts {
                        agent_version: SIM_VERSION.to_string(),
                        hostname: name.to_string(),
                        os: "simulated".into(),
                        kernel: "sim".into(),
                        uptime_secs: started.elapsed().as_secs(),
                        load: [0.0, 0.0, 0.0],
                        disk_free_bytes: 10 << 30,
                        running_jobs: running,
                        playbooks: sim_playbooks(),
                    };
                    if let Err(e) = write_frame(send, &AgentMessage::Heartbeat(facts)).await {
                        return conn.close_reason().map(|e| end_of(&e)).unwrap_or(End::Lost(e.to_string()));
                    }
                    self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    if pending_key.is_none() && now >= renew_at {
                        if let Ok((key, csr_pem)) = new_key_and_csr(name) {
                            if write_frame(send, &AgentMessage::RenewRequest { csr_pem }).await.is_ok() {
                                pending_key = Some(key);
                            }
                        }
                    }
                }
                msg = read_frame::<ControllerMessage, _>(recv) => match msg {
                    Ok(Some(ControllerMessage::Renewed { cert_pem })) => {
                        if let Some(key_pem) = pending_key.take() {
                            if let Some((nb, na)) = validity(&cert_pem) {
                                renew_at = nb + (na - nb) * 2 / 3;
                            }
                            let id = SimIdentity { name: name.to_string(), cert_pem, key_pem };
                            if let Some(c) = &self.opts.cache {
                                if let Err(e) = c.store(&id) {
                                    self.stats.note(format!("cannot cache renewed identity: {e}"));
                                }
                            }
                            // Used from the next connection on, as the agent does.
                            *self.id.lock().expect("id lock") = id;
                            self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(ControllerMessage::RenewRefused { reason })) => {
                        self.stats.note(format!("renewal refused: {reason}"));
                        pending_key = None;
                        renew_at = i64::MAX;
                    }
                    Ok(None) | Err(_) => {
                        return conn.close_reason().map(|e| end_of(&e))
                            .unwrap_or_else(|| End::Lost("control stream ended".into()));
                    }
                },
                stream = conn.accept_bi() => match stream {
                    Ok((s, r)) => {
                        let job = SimJob {
                            stats: self.stats.clone(),
                            journal: self.journal.clone(),
                            running: self.running.clone(),
                        };
                        tokio::spawn(job.serve(s, r));
                    }
                    Err(e) => return end_of(&e),
                },
            }
        }
    }
}

fn end_of(e: &quinn::ConnectionError) -> End {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            match CloseReason::from_code(c.error_code.into_inner()) {
                Some(r) => End::Closed(r),
                None => End::Lost(e.to_string()),
            }
        }
        _ => End::Lost(e.to_string()),
    }
}

/// What a simulated job does, decided from the request alone (no IO).
#[derive(Debug, Clone, PartialEq)]
pub enum SimWork {
    /// `noop.yml`: one ok task at once.
    Noop,
    /// `sleep.yml`: `lines` log lines, then `sleep`.
    Sleep {
        /// How long the task takes.
        sleep: Duration,
        /// Log lines printed first.
        lines: u32,
    },
    /// Anything else: fails with this message.
    Refuse(String),
}

/// Reads what to simulate from a job request. `sleep.yml` takes `seconds`
/// (a decimal number, default 1) and `lines` (default 0).
pub fn work_of(kind: &JobKind) -> SimWork {
    match kind {
        JobKind::Playbook(p) if p.playbook == NOOP_PLAYBOOK => SimWork::Noop,
        JobKind::Playbook(p) if p.playbook == SLEEP_PLAYBOOK => {
            let seconds = match p.vars.get("seconds").map(|s| s.parse::<f64>()) {
                None => 1.0,
                Some(Ok(s)) if (0.0..=3600.0).contains(&s) => s,
                Some(_) => {
                    return SimWork::Refuse(
                        "sleep.yml: `seconds` must be a number from 0 to 3600".into(),
                    )
                }
            };
            let lines = match p.vars.get("lines").map(|s| s.parse::<u32>()) {
                None => 0,
                Some(Ok(n)) if n <= 100_000 => n,
                Some(_) => {
                    return SimWork::Refuse(
                        "sleep.yml: `lines` must be a number from 0 to 100000".into(),
                    )
                }
            };
            SimWork::Sleep {
                sleep: Duration::from_secs_f64(seconds),
                lines,
            }
        }
        JobKind::Playbook(p) => SimWork::Refuse(format!(
            "simulated agent: runs only {NOOP_PLAYBOOK} and {SLEEP_PLAYBOOK}, not {}",
            p.playbook
        )),
        JobKind::Haproxy(_) => {
            SimWork::Refuse("simulated agent: no haproxy_socket (it runs no HAProxy)".into())
        }
        JobKind::Outcome | JobKind::Cancel | JobKind::Attach => {
            SimWork::Refuse("not a job that runs (outcome/cancel)".into())
        }
    }
}

/// The playbooks a simulated agent reports (what [`work_of`] runs), with
/// the SHA-256 of their names standing in for their contents.
fn sim_playbooks() -> Vec<vesemir_protocol::control::PlaybookInfo> {
    use sha2::Digest;
    [NOOP_PLAYBOOK, SLEEP_PLAYBOOK]
        .iter()
        .map(|n| vesemir_protocol::control::PlaybookInfo {
            name: n.to_string(),
            sha256: hex::encode(sha2::Sha256::digest(n.as_bytes())),
        })
        .collect()
}

/// A simulated agent's [`Hello::instance`]: one per agent and simulator
/// process, kept across its reconnects (as a real agent process keeps its
/// own), so the controller sees reconnects, not two processes.
fn instance_of(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::process::id().hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

struct SimJob {
    stats: Arc<SimStats>,
    journal: Journal,
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

fn outcome(job_id: &str, status: JobStatus, stats: Stats, error: Option<String>) -> JobOutcome {
    JobOutcome {
        job_id: job_id.to_string(),
        status,
        stats,
        error,
        output: None,
    }
}

impl SimJob {
    async fn serve(self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let req: JobRequest =
            match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv)).await {
                Ok(Ok(Some(r))) => r,
                _ => {
                    let _ = send.reset(3u32.into());
                    return;
                }
            };
        let _ = self.answer(&req, &mut send).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
    }

    async fn answer(
        &self,
        req: &JobRequest,
        send: &mut quinn::SendStream,
    ) -> Result<(), vesemir_wire::WireError> {
        let id = req.job_id.as_str();
        match &req.kind {
            JobKind::Outcome => {
                let rec = self.journal.lock().expect("journal").get(id).cloned();
                let out = rec.unwrap_or_else(|| {
                    let running = self.running.lock().expect("running").contains_key(id);
                    let st = if running {
                        JobStatus::Running
                    } else {
                        JobStatus::Unknown
                    };
                    outcome(id, st, Stats::default(), None)
                });
                return write_frame(send, &JobEvent::Finished(out)).await;
            }
            JobKind::Cancel => {
                let t = self.running.lock().expect("running").get(id).cloned();
                let st = match t {
                    Some(t) => {
                        t.cancel();
                        JobStatus::Cancelled
                    }
                    None => JobStatus::Unknown,
                };
                return write_frame(
                    send,
                    &JobEvent::Finished(outcome(id, st, Stats::default(), None)),
                )
                .await;
            }
            _ => {}
        }
        // The same job id again is answered from the journal, never re-run.
        let recorded = self.journal.lock().expect("journal").get(id).cloned();
        if let Some(rec) = recorded {
            write_frame(
                send,
                &JobEvent::Started {
                    job_id: id.to_string(),
                    replay: true,
                },
            )
            .await?;
            return write_frame(send, &JobEvent::Finished(rec)).await;
        }
        self.stats.jobs.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        self.running
            .lock()
            .expect("running")
            .insert(id.to_string(), cancel.clone());
        let now = self.stats.running_jobs.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats
            .max_running_jobs
            .fetch_max(now, Ordering::Relaxed);
        let result = self.work(req, send, &cancel).await;
        self.stats.running_jobs.fetch_sub(1, Ordering::Relaxed);
        self.running.lock().expect("running").remove(id);
        let out = result?;
        if out.status == JobStatus::Succeeded {
            self.stats.jobs_succeeded.fetch_add(1, Ordering::Relaxed);
        }
        self.journal
            .lock()
            .expect("journal")
            .insert(id.to_string(), out.clone());
        write_frame(send, &JobEvent::Finished(out)).await
    }

    async fn work(
        &self,
        req: &JobRequest,
        send: &mut quinn::SendStream,
        cancel: &CancellationToken,
    ) -> Result<JobOutcome, vesemir_wire::WireError> {
        let id = req.job_id.as_str();
        write_frame(
            send,
            &JobEvent::Started {
                job_id: id.to_string(),
                replay: false,
            },
        )
        .await?;
        let (name, status, sleep, lines) = match work_of(&req.kind) {
            SimWork::Noop => ("noop", TaskStatus::Ok, Duration::ZERO, 0),
            SimWork::Sleep { sleep, lines } => ("sleep", TaskStatus::Changed, sleep, lines),
            SimWork::Refuse(why) => {
                return Ok(outcome(
                    id,
                    JobStatus::Failed,
                    Stats {
                        failed: 1,
                        ..Default::default()
                    },
                    Some(why),
                ))
            }
        };
        write_frame(
            send,
            &JobEvent::TaskStarted {
                index: 0,
                name: name.into(),
            },
        )
        .await?;
        let t = Instant::now();
        for i in 0..lines {
            write_frame(
                send,
                &JobEvent::Log {
                    index: 0,
                    stream: LogStream::Stdout,
                    line: format!("simulated line {}", i + 1),
                },
            )
            .await?;
        }
        let cancelled = tokio::select! {
            _ = tokio::time::sleep(sleep.saturating_sub(t.elapsed())) => false,
            _ = cancel.cancelled() => true,
        };
        if cancelled {
            return Ok(outcome(id, JobStatus::Cancelled, Stats::default(), None));
        }
        write_frame(
            send,
            &JobEvent::TaskResult(TaskResult {
                index: 0,
                name: name.into(),
                module: "simulated".into(),
                status,
                duration_ms: t.elapsed().as_millis() as u64,
                rc: Some(0),
                msg: String::new(),
                stdout_tail: String::new(),
                stderr_tail: String::new(),
            }),
        )
        .await?;
        let stats = if status == TaskStatus::Ok {
            Stats {
                ok: 1,
                ..Default::default()
            }
        } else {
            Stats {
                changed: 1,
                ..Default::default()
            }
        };
        Ok(outcome(id, JobStatus::Succeeded, stats, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesemir_protocol::job::PlaybookJob;

    fn check(playbook: &str, vars: &[(&str, &str)], expected: SimWork) {
        let kind = JobKind::Playbook(PlaybookJob {
            playbook: playbook.into(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            changeset: None,
        });
        assert_eq!(work_of(&kind), expected, "{playbook} {vars:?}");
    }

    #[test]
    fn work_is_read_from_the_request() {
        check("noop.yml", &[], SimWork::Noop);
        check(
            "sleep.yml",
            &[],
            SimWork::Sleep {
                sleep: Duration::from_secs(1),
                lines: 0,
            },
        );
        check(
            "sleep.yml",
            &[("seconds", "0.25"), ("lines", "7")],
            SimWork::Sleep {
                sleep: Duration::from_millis(250),
                lines: 7,
            },
        );
        for bad in [("seconds", "-1"), ("seconds", "x"), ("lines", "1e9")] {
            assert!(matches!(
                work_of(&JobKind::Playbook(PlaybookJob {
                    playbook: "sleep.yml".into(),
                    vars: [(bad.0.to_string(), bad.1.to_string())].into(),
                    changeset: None,
                })),
                SimWork::Refuse(_)
            ));
        }
        assert!(matches!(
            work_of(&JobKind::Haproxy(vec![])),
            SimWork::Refuse(m) if m.contains("haproxy")
        ));
        check(
            "deploy.yml",
            &[],
            SimWork::Refuse(
                "simulated agent: runs only noop.yml and sleep.yml, not deploy.yml".into(),
            ),
        );
    }
}
