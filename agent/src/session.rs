//! The agent's session: one QUIC connection to the controller, kept up with
//! exponential backoff and full jitter; heartbeats with facts; certificate
//! renewal at 2/3 of its lifetime over the live connection; job streams
//! served as they arrive.

use crate::config::AgentConfig;
use crate::identity::{self, Identity};
use crate::jobs::Jobs;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use vesemir_daemon::notify::Notifier;
use vesemir_protocol::control::{AgentMessage, CloseReason, ControllerMessage};
use vesemir_protocol::handshake::{check_version, Hello, Welcome};
use vesemir_protocol::PROTOCOL_VERSION;
use vesemir_wire::{read_frame, write_frame};

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// We were asked to stop.
    Shutdown,
    /// The controller closed with a reason.
    Closed(CloseReason),
    /// Our certificate was refused as revoked at the handshake.
    RefusedRevoked,
    /// Anything else (network, timeouts, bad peer); retry with backoff.
    Lost(String),
}

/// The daemons' one full-jitter backoff (also what the fleet simulator uses).
pub use vesemir_daemon::backoff;

/// Why the agent cannot run at all (the process exits with status 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job journal in the data directory could not be opened.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// A `controller`/`controllers` entry in agent.toml is not `HOST:PORT`.
    #[error("controller {0:?} is not HOST:PORT")]
    BadController(String),
}

/// Runs the agent until `shutdown` resolves. `notify` tells systemd
/// `READY=1` when the first session is connected or the first backoff
/// starts (an agent waiting for its controller is running as intended;
/// holding `systemctl start` until the controller is back would stall
/// boot), keeps `STATUS=` saying which, and feeds the watchdog.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()>,
    notify: Notifier,
) -> Result<(), RunError> {
    let jobs = Arc::new(Jobs::new(&cfg)?);
    let _watchdog = notify.watchdog_every().map(|every| {
        // Aborted when `run` returns.
        AbortOnDrop(tokio::spawn(feed_watchdog(
            notify.clone(),
            jobs.clone(),
            every,
        )))
    });
    let addresses = cfg.controller_addresses();
    let targets = addresses
        .iter()
        .map(|a| {
            crate::config::split_host_port(a).ok_or_else(|| RunError::BadController(a.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Several controllers (`controllers` in agent.toml): start on a random
    // one so agents spread over them, and move to the next whenever a
    // session ends, with the usual backoff and jitter in between.
    let mut current = rand::random::<usize>() % targets.len();
    tokio::pin!(shutdown);
    let mut attempt: u32 = 0;
    loop {
        let (host, port) = &targets[current];
        let server_name = cfg.server_name.clone().unwrap_or_else(|| host.clone());
        let end = tokio::select! {
            end = session(&cfg, host, *port, &server_name, &jobs, &notify) => end,
            _ = &mut shutdown => SessionEnd::Shutdown,
        };
        let delay = match &end {
            SessionEnd::Shutdown => {
                tracing::info!("stopping");
                notify.stopping("stopping");
                return Ok(());
            }
            SessionEnd::Closed(CloseReason::Revoked) | SessionEnd::RefusedRevoked => {
                tracing::error!(
                    "the controller revoked this agent's certificate; backing off to {:?}. \
                     Re-enroll with a new token if this is wrong.",
                    cfg.reconnect_cap
                );
                attempt = 31;
                cfg.reconnect_cap
            }
            SessionEnd::Closed(CloseReason::VersionMismatch) => {
                tracing::error!("protocol version mismatch: upgrade the agent or the controller so both run the same release");
                attempt = 31;
                cfg.reconnect_cap
            }
            SessionEnd::Closed(r) => {
                tracing::warn!(reason = r.text(), "controller closed the connection");
                if *r == CloseReason::Shutdown {
                    attempt = 0;
                }
                let d = backoff(cfg.reconnect_base, cfg.reconnect_cap, attempt);
                attempt = attempt.saturating_add(1);
                d
            }
            SessionEnd::Lost(why) => {
                tracing::warn!(reason = %why, "connection lost");
                let d = backoff(cfg.reconnect_base, cfg.reconnect_cap, attempt);
                attempt = attempt.saturating_add(1);
                d
            }
        };
        current = (current + 1) % targets.len();
        tracing::info!(delay_ms = delay.as_millis() as u64, controller = %addresses[current], "reconnecting");
        notify.ready(&format!(
            "not connected to {}; retrying in {:.1}s",
            addresses[current],
            delay.as_secs_f64()
        ));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => {
                notify.stopping("stopping");
                return Ok(());
            }
        }
        // A session that got as far as the welcome resets the backoff.
        if jobs.take_welcomed() {
            attempt = 0;
        }
    }
}

/// Why a controller's name gave no address to connect to (the session is
/// lost and retried with backoff).
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    /// DNS did not answer within 10 s.
    #[error("resolving {0} timed out")]
    TimedOut(String),
    /// DNS answered with an error (no such name, …).
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    /// The name exists but has no address.
    #[error("{0} has no address")]
    NoAddress(String),
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ResolveError> {
    let mut addrs = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .map_err(|_| ResolveError::TimedOut(host.to_string()))?
    .map_err(|source| ResolveError::Lookup {
        host: host.to_string(),
        source,
    })?;
    addrs
        .next()
        .ok_or_else(|| ResolveError::NoAddress(host.to_string()))
}

fn is_revoked_alert(e: &quinn::ConnectionError) -> bool {
    // rustls sends the TLS alert certificate_revoked (44); QUIC carries TLS
    // alerts as CRYPTO_ERROR 0x100 + alert.
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            c.error_code == quinn::TransportErrorCode::crypto(44)
        }
        _ => false,
    }
}

fn end_of(e: &quinn::ConnectionError) -> SessionEnd {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            match CloseReason::from_code(c.error_code.into_inner()) {
                Some(r) => SessionEnd::Closed(r),
                None => SessionEnd::Lost(e.to_string()),
            }
        }
        _ if is_revoked_alert(e) => SessionEnd::RefusedRevoked,
        _ => SessionEnd::Lost(e.to_string()),
    }
}

async fn session(
    cfg: &AgentConfig,
    host: &str,
    port: u16,
    server_name: &str,
    jobs: &Arc<Jobs>,
    notify: &Notifier,
) -> SessionEnd {
    let ident: Identity = match identity::load(cfg) {
        Ok(i) => i,
        Err(e) => return SessionEnd::Lost(format!("cannot load identity: {e}")),
    };
    let addr = match resolve(host, port).await {
        Ok(a) => a,
        Err(e) => return SessionEnd::Lost(e.to_string()),
    };
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("addr")
    } else {
        "0.0.0.0:0".parse().expect("addr")
    };
    let mut endpoint = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(e) => return SessionEnd::Lost(format!("cannot open UDP socket: {e}")),
    };
    let crypto = match quinn::crypto::rustls::QuicClientConfig::try_from(ident.tls.clone()) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Lost(format!("TLS config: {e}")),
    };
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config()));
    endpoint.set_default_client_config(client);

    let connecting = match endpoint.connect(addr, server_name) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Lost(format!("cannot connect: {e}")),
    };
    let conn = match tokio::time::timeout(Duration::from_secs(15), connecting).await {
        Err(_) => return SessionEnd::Lost("handshake timed out".into()),
        Ok(Err(e)) => return end_of(&e),
        Ok(Ok(c)) => c,
    };
    let end = serve_connection(cfg, &conn, &ident, jobs, notify).await;
    if let SessionEnd::Shutdown = end {
        conn.close(CloseReason::Shutdown.code().into(), b"agent stopping");
    }
    // Let the close frame go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    end
}

/// The agent's QUIC transport settings; the fleet simulator uses the same,
/// so what it measures is what agents do.
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("idle timeout"),
        ))
        // One stream per job; an HAProxy VM serves one per host in flight
        // (concurrency is capped at 1000).
        .max_concurrent_bidi_streams(1024u32.into())
        .max_concurrent_uni_streams(0u32.into());
    transport
}

/// This process's [`Hello::instance`]: the same for every reconnect.
fn instance() -> u64 {
    static INSTANCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INSTANCE.get_or_init(rand::random)
}

async fn serve_connection(
    cfg: &AgentConfig,
    conn: &quinn::Connection,
    ident: &Identity,
    jobs: &Arc<Jobs>,
    notify: &Notifier,
) -> SessionEnd {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        node: cfg.name.clone(),
        instance: instance(),
    };
    let opened = tokio::time::timeout(Duration::from_secs(10), async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| end_of(&e))?;
        write_frame(&mut send, &hello)
            .await
            .map_err(|e| SessionEnd::Lost(e.to_string()))?;
        match read_frame::<Welcome, _>(&mut recv).await {
            Ok(Some(w)) => Ok((send, recv, w)),
            Ok(None) => Err(conn.close_reason().map(|e| end_of(&e)).unwrap_or_else(|| {
                SessionEnd::Lost("controller closed the control stream".into())
            })),
            Err(e) => Err(conn
                .close_reason()
                .map(|e| end_of(&e))
                .unwrap_or_else(|| SessionEnd::Lost(e.to_string()))),
        }
    })
    .await;
    let (mut send, mut recv, welcome) = match opened {
        Err(_) => return SessionEnd::Lost("no welcome from the controller within 10s".into()),
        Ok(Err(end)) => return end,
        Ok(Ok(x)) => x,
    };
    if let Err(e) = check_version(welcome.protocol_version, false) {
        tracing::error!(error = %e, "refusing controller");
        conn.close(
            CloseReason::VersionMismatch.code().into(),
            b"version mismatch",
        );
        return SessionEnd::Closed(CloseReason::VersionMismatch);
    }
    jobs.set_welcomed();
    tracing::info!(
        controller = %conn.remote_address(),
        controller_version = %welcome.controller_version,
        heartbeat_secs = welcome.heartbeat_secs,
        "connected"
    );
    notify.ready(&format!(
        "connected to {} (controller {})",
        conn.remote_address(),
        welcome.controller_version
    ));

    let interval = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Renew at 2/3 of the certificate's lifetime.
    let mut renew_at = ident.not_before + (ident.not_after - ident.not_before) * 2 / 3;
    let mut pending_key: Option<String> = None;

    loop {
        tokio::select! {
            _ = tick.tick() => {
                let facts = crate::facts::collect(&cfg.data_dir, &cfg.playbook_dir, jobs.running());
                if let Err(e) = write_frame(&mut send, &AgentMessage::Heartbeat(facts)).await {
                    return conn.close_reason().map(|e| end_of(&e)).unwrap_or(SessionEnd::Lost(e.to_string()));
                }
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                if pending_key.is_none() && now >= renew_at {
                    match identity::new_key_and_csr(&cfg.name) {
                        Ok((key, csr_pem)) => {
                            tracing::info!("certificate at 2/3 of its lifetime; renewing");
                            if write_frame(&mut send, &AgentMessage::RenewRequest { csr_pem }).await.is_ok() {
                                pending_key = Some(key);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot create renewal request"),
                    }
                }
            }
            msg = read_frame::<ControllerMessage, _>(&mut recv) => match msg {
                Ok(Some(ControllerMessage::Renewed { cert_pem })) => {
                    if let Some(key) = pending_key.take() {
                        match identity::install_renewed(cfg, &key, &cert_pem) {
                            Ok(()) => {
                                tracing::info!("certificate renewed; used from the next connection on");
                                if let Some((nb, na)) = identity::validity(&cert_pem) {
                                    renew_at = nb + (na - nb) * 2 / 3;
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "cannot install renewed certificate"),
                        }
                    }
                }
                Ok(Some(ControllerMessage::RenewRefused { reason })) => {
                    tracing::warn!(%reason, "renewal refused");
                    pending_key = None;
                }
                Ok(None) | Err(_) => {
                    return conn.close_reason().map(|e| end_of(&e))
                        .unwrap_or_else(|| SessionEnd::Lost("control stream ended".into()));
                }
            },
            stream = conn.accept_bi() => match stream {
                Ok((s, r)) => {
                    let jobs = jobs.clone();
                    tokio::spawn(async move { jobs.serve_stream(s, r).await });
                }
                Err(e) => return end_of(&e),
            },
        }
    }
}

/// Sends `WATCHDOG=1` every `every` from a task that takes the jobs lock
/// (as every job start and heartbeat does): a starved runtime or a stuck
/// lock stops the pings and systemd restarts the agent; the job journal
/// reports what was cut short as interrupted.
async fn feed_watchdog(notify: Notifier, jobs: Arc<Jobs>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = jobs.running();
        notify.watchdog(None);
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 0..40 {
            let ceiling = Duration::from_secs(1u64 << attempt.min(6)).min(cap);
            for _ in 0..50 {
                assert!(backoff(base, cap, attempt) <= ceiling);
            }
        }
        // Full jitter spreads reconnects: not all the same value.
        let samples: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(base, cap, 10)).collect();
        assert!(samples.len() > 10);
    }
}
