//! Fleet registry: the live agent sessions, revocation, batched last-seen
//! writes, and opening job streams to agents.
//!
//! Architecture invariant: one task per connection (no thread per agent, no
//! polling of agents); heartbeats only touch memory, and a single flusher
//! task writes last-seen to the store every `last_seen_flush`.

use crate::store::{now_ms, AgentRecord, LastSeen, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use vesemir_protocol::control::{CloseReason, Facts};
use vesemir_protocol::job::{JobEvent, JobRequest};
use vesemir_wire::{read_frame, write_frame, WireError};

/// One connected agent.
pub struct Session {
    /// Node name, from the certificate.
    pub name: String,
    /// Distinguishes this connection from a later one of the same agent.
    pub id: u64,
    /// The QUIC connection; job streams are opened on it.
    pub conn: quinn::Connection,
    /// Where the agent connects from.
    pub remote: SocketAddr,
    /// Certificate serial in use on this connection.
    pub serial: String,
    /// The agent process's random instance id (from the hello).
    pub instance: u64,
    /// When the connection was accepted, Unix ms.
    pub connected_at: i64,
    /// Heartbeat state, updated on every heartbeat.
    pub live: Mutex<Live>,
}

/// The part of a session that changes with heartbeats.
#[derive(Debug, Clone)]
pub struct Live {
    /// Last facts.
    pub facts: Option<Facts>,
    /// Agent version from the hello.
    pub version: String,
    /// Monotonic time of the last heartbeat (or of the hello).
    pub last_heartbeat: Instant,
    /// Wall time of the same, Unix ms.
    pub last_heartbeat_ms: i64,
    /// What was last queued for the store (see [`must_persist`]).
    pub persisted: Option<Persisted>,
}

/// How often the row of an agent whose stable facts did not change is
/// written (its live state is in memory; the row is for when it is gone).
pub const PERSIST_EVERY_MS: i64 = 60_000;

/// The last last-seen update queued for an agent's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    /// Its heartbeat time, Unix ms.
    pub at_ms: i64,
    /// [`stable_digest`] of what it held.
    pub stable: u64,
}

/// Whether a heartbeat at `now_ms` whose stable facts digest to `stable`
/// must be written: the first one, any whose version, address, host, OS,
/// kernel or playbooks changed, and otherwise one per [`PERSIST_EVERY_MS`].
/// Load, uptime and free disk change on every heartbeat and ride along.
/// Pure: the caller passes the clock. (At 10,000 agents with 10 s
/// heartbeats this is ~170 row writes a second instead of 1,000.)
pub fn must_persist(last: Option<&Persisted>, now_ms: i64, stable: u64) -> bool {
    match last {
        None => true,
        Some(p) => p.stable != stable || now_ms - p.at_ms >= PERSIST_EVERY_MS,
    }
}

/// A digest of the facts that do not change from one heartbeat to the next.
pub fn stable_digest(version: &str, remote: &SocketAddr, facts: Option<&Facts>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (version, remote).hash(&mut h);
    if let Some(f) = facts {
        (&f.agent_version, &f.hostname, &f.os, &f.kernel).hash(&mut h);
        for p in &f.playbooks {
            (&p.name, &p.sha256).hash(&mut h);
        }
    }
    h.finish()
}

/// Agents as the API shows them (wire types of `vesemir-api`).
pub use vesemir_api::{AgentState, AgentView, DuplicateKeyView};

/// How long a duplicate stays reported after its last takeover.
pub const DUPLICATE_KEY_MEMORY: Duration = Duration::from_secs(600);
/// At most one warning per agent this often while processes take turns.
const DUPLICATE_KEY_WARN_EVERY: Duration = Duration::from_secs(60);

/// One connection of an agent, as [`Takeovers`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The process's instance id.
    pub instance: u64,
    /// Where it connects from.
    pub remote: SocketAddr,
}

/// What the controller knows of two processes sharing a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Last takeover: the newcomer and the one it replaced.
    pub addresses: [SocketAddr; 2],
    /// Unix ms of the first and last takeover.
    pub first_ms: i64,
    /// Unix ms of the last takeover.
    pub last_ms: i64,
    /// Takeovers so far.
    pub takeovers: u64,
}

/// Per-agent takeover bookkeeping: pure, fed the replaced and the new
/// connection, `now` passed in. One process that reconnects keeps its
/// instance id; one that restarted replaces its own dead connection once
/// and is never replaced back. Two processes with one key replace each
/// other in turn: a connection from an instance that was itself replaced
/// while it was live is the second process coming back.
#[derive(Debug, Clone, Default)]
pub struct Takeovers {
    /// The instance a different live instance last replaced.
    displaced: Option<u64>,
    /// What was seen of a duplicate, if any.
    duplicate: Option<DuplicateKey>,
    /// Unix ms of the last warning.
    warned_ms: Option<i64>,
}

impl Takeovers {
    /// Records a new connection `new` that replaces `old` (if the agent had
    /// one and it was still open). Returns the duplicate when a warning is
    /// due (at most every [`DUPLICATE_KEY_WARN_EVERY`]).
    pub fn on_connect(
        &mut self,
        old: Option<Holder>,
        new: Holder,
        now_ms: i64,
    ) -> Option<DuplicateKey> {
        let old = old.filter(|o| o.instance != new.instance)?;
        let returning = self.displaced == Some(new.instance);
        self.displaced = Some(old.instance);
        if !returning {
            return None;
        }
        let dup = match self.duplicate.take() {
            Some(d) if now_ms - d.last_ms <= DUPLICATE_KEY_MEMORY.as_millis() as i64 => {
                DuplicateKey {
                    addresses: [new.remote, old.remote],
                    first_ms: d.first_ms,
                    last_ms: now_ms,
                    takeovers: d.takeovers + 1,
                }
            }
            _ => DuplicateKey {
                addresses: [new.remote, old.remote],
                first_ms: now_ms,
                last_ms: now_ms,
                takeovers: 1,
            },
        };
        self.duplicate = Some(dup.clone());
        let due = self
            .warned_ms
            .is_none_or(|w| now_ms - w >= DUPLICATE_KEY_WARN_EVERY.as_millis() as i64);
        if due {
            self.warned_ms = Some(now_ms);
            Some(dup)
        } else {
            None
        }
    }

    /// The duplicate to show, if one was seen within [`DUPLICATE_KEY_MEMORY`].
    pub fn current(&self, now_ms: i64) -> Option<&DuplicateKey> {
        self.duplicate
            .as_ref()
            .filter(|d| now_ms - d.last_ms <= DUPLICATE_KEY_MEMORY.as_millis() as i64)
    }
}

/// Formats Unix ms as RFC 3339.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Errors when sending work to an agent.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No live connection.
    #[error("agent {0} is not connected; check `vesemir agents show {0}`")]
    NotConnected(String),
    /// The connection failed while opening or using the stream.
    #[error("connection to agent {name} failed: {reason}")]
    Connection {
        /// Agent.
        name: String,
        /// Why.
        reason: String,
    },
    /// The agent's connection went silent (a frozen or cut-off VM) and
    /// timed out while the job ran; the job may still finish there.
    #[error("agent stopped responding: nothing from {0} within the connection's idle timeout (a frozen or unreachable VM)")]
    Unresponsive(String),
    /// The connection closed while the job ran (agent restarting, revoked,
    /// controller shutting down).
    #[error("the connection to agent {name} closed while the job ran: {reason}")]
    ConnectionLost {
        /// Agent.
        name: String,
        /// Why, as QUIC reports it.
        reason: String,
    },
    /// The agent sent something invalid.
    #[error("agent {name} sent an invalid job stream: {source}")]
    Wire {
        /// Agent.
        name: String,
        /// Why.
        source: WireError,
    },
}

/// The registry.
pub struct Fleet {
    store: Store,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    revoked: Arc<RwLock<HashSet<String>>>,
    pending_seen: Mutex<HashMap<String, LastSeen>>,
    /// Takeover bookkeeping per agent (memory only: a duplicate shows
    /// again within a second of a restart, as the processes keep turning).
    takeovers: Mutex<HashMap<String, Takeovers>>,
    next_id: AtomicU64,
    /// Heartbeat interval agents are told to use.
    pub heartbeat: Duration,
}

impl Fleet {
    /// Builds the registry and loads the revoked serials.
    pub async fn new(store: Store, heartbeat: Duration) -> Result<Arc<Fleet>, StoreError> {
        let revoked: HashSet<String> = store.revoked_serials().await?.into_iter().collect();
        Ok(Arc::new(Fleet {
            store,
            sessions: Mutex::new(HashMap::new()),
            revoked: Arc::new(RwLock::new(revoked)),
            pending_seen: Mutex::new(HashMap::new()),
            takeovers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            heartbeat,
        }))
    }

    /// The revoked-serial set shared with the TLS client verifier.
    pub fn revoked_set(&self) -> Arc<RwLock<HashSet<String>>> {
        self.revoked.clone()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Registers a new live session, closing an older one of the same agent.
    pub fn register(
        &self,
        name: &str,
        conn: quinn::Connection,
        serial: &str,
        version: &str,
        instance: u64,
    ) -> Arc<Session> {
        let session = Arc::new(Session {
            name: name.to_string(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            remote: conn.remote_address(),
            conn,
            serial: serial.to_string(),
            instance,
            connected_at: now_ms(),
            live: Mutex::new(Live {
                persisted: None,
                facts: None,
                version: version.to_string(),
                last_heartbeat: Instant::now(),
                last_heartbeat_ms: now_ms(),
            }),
        });
        let old = self
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(name.to_string(), session.clone());
        let replaced = old
            .as_ref()
            .filter(|o| o.conn.close_reason().is_none())
            .map(|o| Holder {
                instance: o.instance,
                remote: o.remote,
            });
        let new = Holder {
            instance,
            remote: session.remote,
        };
        let warn = self
            .takeovers
            .lock()
            .expect("takeovers lock")
            .entry(name.to_string())
            .or_default()
            .on_connect(replaced, new, now_ms());
        if let Some(d) = warn {
            tracing::warn!(
                agent = name,
                new = %d.addresses[0],
                replaced = %d.addresses[1],
                takeovers = d.takeovers,
                "two processes hold the key of this agent and take turns on its connection (a cloned VM or a copied data dir?): stop one, then revoke and re-enroll if the key was copied"
            );
        }
        if let Some(old) = old {
            close(&old.conn, CloseReason::Superseded);
        }
        self.note_seen(&session);
        session
    }

    /// Removes a session if it is still the current one for its agent,
    /// and queues its last heartbeat for the store (rows of connected
    /// agents are written only now and then: [`must_persist`]).
    pub fn unregister(&self, session: &Session) {
        let current = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let current = sessions.get(&session.name).map(|s| s.id) == Some(session.id);
            if current {
                sessions.remove(&session.name);
            }
            current
        };
        if current {
            self.queue_seen(session, true);
        }
    }

    /// Records a heartbeat (memory only; the flusher writes it later).
    pub fn heartbeat(&self, session: &Session, facts: Facts) {
        {
            let mut live = session.live.lock().expect("live lock");
            live.version = facts.agent_version.clone();
            live.facts = Some(facts);
            live.last_heartbeat = Instant::now();
            live.last_heartbeat_ms = now_ms();
        }
        crate::metrics::heartbeat();
        self.note_seen(session);
    }

    fn note_seen(&self, session: &Session) {
        self.queue_seen(session, false);
    }

    /// Queues the session's last-seen row for the flusher when
    /// [`must_persist`] says so, or always with `force`.
    fn queue_seen(&self, session: &Session, force: bool) {
        let live = {
            let mut live = session.live.lock().expect("live lock");
            let stable = stable_digest(&live.version, &session.remote, live.facts.as_ref());
            if !force && !must_persist(live.persisted.as_ref(), live.last_heartbeat_ms, stable) {
                return;
            }
            live.persisted = Some(Persisted {
                at_ms: live.last_heartbeat_ms,
                stable,
            });
            live.clone()
        };
        let update = LastSeen {
            name: session.name.clone(),
            at: live.last_heartbeat_ms,
            version: live.version,
            remote_addr: session.remote.to_string(),
            facts: live
                .facts
                .as_ref()
                .map(|f| facts_json(f).to_string())
                .unwrap_or_else(|| "null".into()),
        };
        self.pending_seen
            .lock()
            .expect("pending lock")
            .insert(session.name.clone(), update);
    }

    /// Writes buffered last-seen updates in one transaction.
    pub async fn flush_last_seen(&self) -> Result<usize, StoreError> {
        let batch: Vec<LastSeen> = {
            let mut pending = self.pending_seen.lock().expect("pending lock");
            pending.drain().map(|(_, v)| v).collect()
        };
        let n = batch.len();
        if let Err(e) = self.store.flush_last_seen(&batch).await {
            // Put them back unless newer ones arrived meanwhile.
            let mut pending = self.pending_seen.lock().expect("pending lock");
            for u in batch {
                pending.entry(u.name.clone()).or_insert(u);
            }
            return Err(e);
        }
        Ok(n)
    }

    /// Runs the last-seen flusher until `shutdown` resolves, then flushes once more.
    pub async fn run_flusher(self: Arc<Self>, every: Duration, shutdown: impl std::future::Future) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.flush_last_seen().await {
                        tracing::warn!(error = %e, "writing last-seen failed; will retry");
                    }
                }
                _ = &mut shutdown => break,
            }
        }
        if let Err(e) = self.flush_last_seen().await {
            tracing::warn!(error = %e, "final last-seen write failed");
        }
    }

    /// The live session of an agent.
    pub fn session(&self, name: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(name)
            .cloned()
    }

    /// Names of agents with a live session.
    pub fn connected_names(&self) -> Vec<String> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Number of live sessions.
    pub fn connected_count(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }

    /// Revokes an agent: store first, then the handshake set, then the live
    /// connection. Returns false if there is no such agent.
    pub async fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        let Some(serials) = self.store.revoke_agent(name).await? else {
            return Ok(false);
        };
        self.revoked.write().expect("revoked lock").extend(serials);
        let session = self.sessions.lock().expect("sessions lock").remove(name);
        if let Some(s) = session {
            close(&s.conn, CloseReason::Revoked);
            tracing::info!(agent = name, "revoked; live connection closed");
        }
        Ok(true)
    }

    /// Re-reads the revoked serials every `every` (see [`Fleet::sync_revoked`]).
    /// Runs when controllers share a database (PostgreSQL).
    pub async fn run_revocation_sync(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sync_revoked().await {
                tracing::warn!(error = %e, "cannot re-read revoked certificates; will retry");
            }
        }
    }

    /// Takes in serials revoked by another controller on the same database
    /// and closes this controller's live connections that use one, so a
    /// revocation holds on every controller, not only the one that made it.
    pub async fn sync_revoked(&self) -> Result<(), StoreError> {
        let serials = self.store.revoked_serials().await?;
        let new: HashSet<String> = {
            let mut set = self.revoked.write().expect("revoked lock");
            serials
                .into_iter()
                .filter(|s| set.insert(s.clone()))
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let closing: Vec<Arc<Session>> = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let names: Vec<String> = sessions
                .iter()
                .filter(|(_, s)| new.contains(&s.serial))
                .map(|(n, _)| n.clone())
                .collect();
            names.iter().filter_map(|n| sessions.remove(n)).collect()
        };
        for s in closing {
            close(&s.conn, CloseReason::Revoked);
            tracing::info!(agent = %s.name, "revoked on another controller; live connection closed");
        }
        Ok(())
    }

    /// Whether a serial is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.read().expect("revoked lock").contains(serial)
    }

    /// The user-facing view of a stored agent.
    pub fn view(&self, rec: AgentRecord) -> AgentView {
        let session = self.session(&rec.name);
        let now = now_ms();
        let (state, version, last_seen, remote, facts) = match (&rec.revoked_at, session) {
            (Some(_), _) => (
                AgentState::Revoked,
                rec.version.clone(),
                rec.last_seen,
                rec.remote_addr.clone(),
                rec.facts
                    .as_deref()
                    .and_then(|f| serde_json::from_str(f).ok()),
            ),
            (None, Some(s)) => {
                let live = s.live.lock().expect("live lock").clone();
                let stale = live.last_heartbeat.elapsed() > self.heartbeat * 3;
                (
                    if stale {
                        AgentState::Stale
                    } else {
                        AgentState::Connected
                    },
                    live.version,
                    Some(live.last_heartbeat_ms),
                    Some(s.remote.to_string()),
                    live.facts.as_ref().map(facts_json),
                )
            }
            (None, None) => (
                AgentState::Disconnected,
                rec.version.clone(),
                rec.last_seen,
                rec.remote_addr.clone(),
                rec.facts
                    .as_deref()
                    .and_then(|f| serde_json::from_str(f).ok()),
            ),
        };
        let duplicate_key = self
            .takeovers
            .lock()
            .expect("takeovers lock")
            .get(&rec.name)
            .and_then(|t| t.current(now))
            .map(|d| DuplicateKeyView {
                addresses: d.addresses.map(|a| a.to_string()),
                first_seen: rfc3339(d.first_ms),
                last_seen: rfc3339(d.last_ms),
                takeovers: d.takeovers,
            });
        AgentView {
            name: rec.name,
            state,
            version,
            last_seen: last_seen.map(rfc3339),
            last_seen_secs_ago: last_seen.map(|t| ((now - t).max(0)) / 1000),
            first_seen: rfc3339(rec.first_seen),
            remote_addr: remote,
            facts: facts.filter(|f: &serde_json::Value| !f.is_null()),
            cert_serial: rec.cert_serial,
            cert_fingerprint: rec.cert_fingerprint,
            cert_not_after: rfc3339(rec.cert_not_after),
            revoked_at: rec.revoked_at.map(rfc3339),
            duplicate_key,
        }
    }

    /// Closes every live connection (controller shutdown).
    pub fn close_all(&self) {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in sessions {
            close(&s.conn, CloseReason::Shutdown);
        }
    }

    /// Opens a job stream on an agent's connection and sends the request.
    pub async fn start_job(
        &self,
        name: &str,
        req: &JobRequest,
    ) -> Result<JobStream, DispatchError> {
        let session = self
            .session(name)
            .ok_or_else(|| DispatchError::NotConnected(name.to_string()))?;
        let conn_err = |e: &dyn std::fmt::Display| DispatchError::Connection {
            name: name.to_string(),
            reason: e.to_string(),
        };
        let (mut send, recv) =
            tokio::time::timeout(Duration::from_secs(10), session.conn.open_bi())
                .await
                .map_err(|e| conn_err(&e))?
                .map_err(|e| conn_err(&e))?;
        write_frame(&mut send, req)
            .await
            .map_err(|source| DispatchError::Wire {
                name: name.to_string(),
                source,
            })?;
        send.finish().map_err(|e| conn_err(&e))?;
        Ok(JobStream {
            _open: crate::metrics::job_stream_opened(),
            agent: name.to_string(),
            _send: send,
            recv,
        })
    }
}

/// The agent's side of a running job: events as they come.
pub struct JobStream {
    // Counts the stream in `vesemir_job_streams_open` until it is dropped.
    _open: crate::metrics::OpenJobStream,
    agent: String,
    // Kept so the stream is not reset while events are still coming.
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl JobStream {
    /// The next event; `Ok(None)` when the agent closed the stream.
    pub async fn next(&mut self) -> Result<Option<JobEvent>, DispatchError> {
        read_frame(&mut self.recv)
            .await
            .map_err(|source| stream_error(&self.agent, source))
    }
}

/// Tells a connection that died (timed out, closed) from a peer that sent
/// garbage: only the latter is an "invalid job stream".
fn stream_error(agent: &str, source: WireError) -> DispatchError {
    let lost = match &source {
        WireError::Io(e) => e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
            .and_then(|r| match r {
                quinn::ReadError::ConnectionLost(c) => Some(c.clone()),
                _ => None,
            }),
        WireError::Frame(_) => None,
    };
    match lost {
        Some(quinn::ConnectionError::TimedOut) => DispatchError::Unresponsive(agent.to_string()),
        Some(c) => DispatchError::ConnectionLost {
            name: agent.to_string(),
            reason: c.to_string(),
        },
        None => DispatchError::Wire {
            name: agent.to_string(),
            source,
        },
    }
}

/// Facts as JSON for the API.
pub fn facts_json(f: &Facts) -> serde_json::Value {
    serde_json::json!({
        "agent_version": f.agent_version,
        "hostname": f.hostname,
        "os": f.os,
        "kernel": f.kernel,
        "uptime_secs": f.uptime_secs,
        "load": f.load,
        "disk_free_bytes": f.disk_free_bytes,
        "running_jobs": f.running_jobs,
        "playbooks": f.playbooks,
    })
}

/// Closes a connection with one of our reasons.
pub fn close(conn: &quinn::Connection, reason: CloseReason) {
    conn.close(reason.code().into(), reason.text().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_unchanged_agents_are_written_once_a_minute() {
        let p = Persisted {
            at_ms: 1_000,
            stable: 7,
        };
        for (last, now, stable, want, why) in [
            (None, 0, 7, true, "first heartbeat of a session"),
            (
                Some(p),
                1_000 + 10_000,
                7,
                false,
                "10 s later, nothing stable changed",
            ),
            (
                Some(p),
                1_000 + PERSIST_EVERY_MS - 1,
                7,
                false,
                "just under a minute",
            ),
            (
                Some(p),
                1_000 + PERSIST_EVERY_MS,
                7,
                true,
                "a minute: written",
            ),
            (Some(p), 1_000 + 10_000, 8, true, "a stable fact changed"),
        ] {
            assert_eq!(must_persist(last.as_ref(), now, stable), want, "{why}");
        }
        let addr: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let mut f = Facts::default();
        let d0 = stable_digest("1.0", &addr, Some(&f));
        f.uptime_secs = 99;
        f.load = [1.0, 2.0, 3.0];
        f.disk_free_bytes = 5;
        assert_eq!(
            stable_digest("1.0", &addr, Some(&f)),
            d0,
            "load, uptime and disk ride along"
        );
        f.playbooks.push(vesemir_protocol::control::PlaybookInfo {
            name: "deploy.yml".into(),
            sha256: "ab".into(),
        });
        assert_ne!(
            stable_digest("1.0", &addr, Some(&f)),
            d0,
            "a playbook changed"
        );
        assert_ne!(
            stable_digest("1.1", &addr, None),
            stable_digest("1.0", &addr, None)
        );
    }

    fn h(instance: u64, port: u16) -> Holder {
        Holder {
            instance,
            remote: SocketAddr::from(([10, 0, 0, 1], port)),
        }
    }

    #[test]
    fn a_reconnect_or_a_restart_is_not_a_duplicate() {
        let mut t = Takeovers::default();
        assert_eq!(t.on_connect(None, h(1, 1000), 0), None);
        // Same process, new connection while the old one lingers.
        assert_eq!(t.on_connect(Some(h(1, 1000)), h(1, 1001), 10), None);
        // Restarted (new instance) over its dead connection, then it
        // reconnects as itself: never the displaced one coming back.
        assert_eq!(t.on_connect(Some(h(1, 1001)), h(2, 1002), 20), None);
        assert_eq!(t.on_connect(Some(h(2, 1002)), h(2, 1003), 30), None);
        assert_eq!(t.on_connect(None, h(2, 1004), 40), None);
        assert!(t.current(50).is_none());
    }

    #[test]
    fn two_instances_taking_turns_are_reported_and_warned_rarely() {
        let mut t = Takeovers::default();
        assert_eq!(t.on_connect(None, h(1, 1000), 0), None);
        assert_eq!(t.on_connect(Some(h(1, 1000)), h(2, 2000), 100), None);
        // 1 comes back and replaces 2: a duplicate, warned.
        let d = t.on_connect(Some(h(2, 2000)), h(1, 1001), 900).unwrap();
        assert_eq!(d.addresses, [h(1, 1001).remote, h(2, 2000).remote]);
        assert_eq!((d.first_ms, d.takeovers), (900, 1));
        // And again: counted, not warned again within the minute.
        assert_eq!(t.on_connect(Some(h(1, 1001)), h(2, 2001), 1800), None);
        let cur = t.current(1900).unwrap();
        assert_eq!((cur.first_ms, cur.last_ms, cur.takeovers), (900, 1800, 2));
        // A minute later it warns again.
        assert!(t.on_connect(Some(h(2, 2001)), h(1, 1002), 61_000).is_some());
        // Forgotten ten minutes after the last takeover.
        assert!(t
            .current(61_000 + DUPLICATE_KEY_MEMORY.as_millis() as i64 + 1)
            .is_none());
    }
}
