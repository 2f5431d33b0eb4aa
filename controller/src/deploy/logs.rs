//! The ordered log of one deployment: every event gets the next `seq` and is
//! written in small batches (one transaction per batch, not one per line);
//! followers are woken through a watch channel after each batch.

use crate::store::{now_ms, LogRow, Store};
use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
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
    seq: Arc<AtomicI64>,
}

impl LogWriter {
    /// Starts the writer task for deployment `id`, continuing after `last_seq`.
    /// The task ends (after writing everything) when all handles are dropped.
    pub fn start(
        store: Store,
        id: String,
        last_seq: i64,
        bump: watch::Sender<u64>,
    ) -> (LogWriter, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<LogRow>(BUFFER);
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let mut delay = Duration::from_millis(100);
                loop {
                    match store.append_logs(&id, &batch).await {
                        Ok(()) => break,
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
        (
            LogWriter {
                tx,
                seq: Arc::new(AtomicI64::new(last_seq)),
            },
            task,
        )
    }

    /// Appends one event. `data` must be a JSON object.
    pub async fn push(&self, host: Option<&str>, kind: &str, data: Value) {
        let row = LogRow {
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
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
