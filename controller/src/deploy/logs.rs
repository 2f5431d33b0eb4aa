//! The ordered log of one deployment: every event gets the next `seq` and is
//! written in small batches (one transaction per batch, not one per line);
//! followers are woken through a watch channel after each batch.

use crate::store::{now_ms, LogRow, Store};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Rows buffered between the orchestrator and the writer. When the store is
/// slow, senders wait (backpressure) instead of growing memory.
const BUFFER: usize = 2048;
/// Most rows per transaction.
const BATCH: usize = 512;

/// Handle to append to a deployment's log; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<LogRow>,
}

/// Attempts to write a batch before it is dropped (and said so in the
/// controller's log): a broken store must not block the orchestrator.
const ATTEMPTS: u32 = 8;

impl LogWriter {
    /// Starts the writer task for deployment `id`, continuing after `last_seq`.
    /// The task ends (after writing everything) when all handles are dropped.
    ///
    /// `seq` is assigned here, by the only consumer, in the order rows are
    /// written: a follower that has read seq N never sees N-1 appear later.
    pub fn start(
        store: Store,
        id: String,
        last_seq: i64,
        bump: watch::Sender<u64>,
    ) -> (LogWriter, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<LogRow>(BUFFER);
        let task = tokio::spawn(async move {
            let mut next = last_seq;
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let start = next;
                for row in batch.iter_mut() {
                    next += 1;
                    row.seq = next;
                }
                let mut delay = Duration::from_millis(100);
                for attempt in 1..=ATTEMPTS {
                    match store.append_logs(&id, &batch).await {
                        Ok(()) => break,
                        Err(e) if attempt == ATTEMPTS => {
                            tracing::error!(deployment_id = %id, error = %e, rows = batch.len(), "dropping deployment log rows after {ATTEMPTS} failed writes");
                            // Rows that did land keep their seq; the next
                            // batch continues after the highest stored one.
                            next = store.max_log_seq(&id).await.unwrap_or(next).max(start);
                        }
                        Err(e) => {
                            tracing::warn!(deployment_id = %id, error = %e, "writing deployment log failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                batch.clear();
                bump.send_modify(|v| *v = v.wrapping_add(1));
            }
        });
        (LogWriter { tx }, task)
    }

    /// Appends one event. `data` must be a JSON object.
    pub async fn push(&self, host: Option<&str>, kind: &str, data: Value) {
        let row = LogRow {
            seq: 0,
            ts: now_ms(),
            host: host.map(str::to_string),
            kind: kind.to_string(),
            data: data.to_string(),
        };
        if self.tx.send(row).await.is_err() {
            tracing::error!("deployment log writer stopped; event dropped");
        }
    }
}

/// A stored row as the API shows it.
pub fn row_json(r: &LogRow) -> Value {
    let mut v: Value = serde_json::from_str(&r.data).unwrap_or_else(|_| serde_json::json!({}));
    if !v.is_object() {
        v = serde_json::json!({ "data": v });
    }
    v["seq"] = r.seq.into();
    v["ts"] = crate::fleet::rfc3339(r.ts).into();
    v["host"] = r.host.clone().into();
    v["type"] = r.kind.clone().into();
    v
}
