//! What the demo (and the tests) watch during a deploy: a client sending
//! requests through the HAProxy frontend without pause, and a sampler of
//! `show servers state` counting the servers out of rotation.

use super::haproxy::{servers_state, ServerRow};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// A request counts as failed on a connect error, a timeout or a non-2xx.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the traffic client saw.
#[derive(Clone, Debug, Default)]
pub struct TrafficReport {
    /// Requests sent.
    pub sent: u64,
    /// Requests that failed.
    pub failed: u64,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
    /// Answers per version served (`GET /` returns the version).
    pub versions: BTreeMap<String, u64>,
}

/// Workers sending `GET /` through the frontend until stopped.
pub struct Traffic {
    /// Tells the workers to stop after their current request.
    stop: Arc<AtomicBool>,
    /// Shared counters.
    report: Arc<Mutex<TrafficReport>>,
    /// The workers.
    workers: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts `workers` clients, each with its own keep-alive connection,
    /// pausing `pause` between requests.
    pub fn start(frontend: SocketAddr, workers: usize, pause: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(TrafficReport::default()));
        let url = format!("http://{frontend}/");
        let workers = (0..workers)
            .map(|_| {
                let (stop, report, url) = (stop.clone(), report.clone(), url.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .timeout(REQUEST_TIMEOUT)
                        .pool_max_idle_per_host(1)
                        .build()
                        .expect("HTTP client");
                    while !stop.load(Ordering::Relaxed) {
                        let res = match http.get(&url).send().await {
                            Ok(r) if r.status().is_success() => r
                                .text()
                                .await
                                .map(|b| b.trim().to_string())
                                .map_err(|e| format!("reading the body: {e}")),
                            Ok(r) => Err(format!("HTTP {}", r.status())),
                            Err(e) => Err(format!("{e}")),
                        };
                        {
                            let mut rep = report.lock().expect("traffic report");
                            rep.sent += 1;
                            match res {
                                Ok(v) => *rep.versions.entry(v).or_default() += 1,
                                Err(e) => {
                                    rep.failed += 1;
                                    if rep.errors.len() < 10 {
                                        rep.errors.push(e);
                                    }
                                }
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            report,
            workers,
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> TrafficReport {
        self.report.lock().expect("traffic report").clone()
    }

    /// Stops the workers (each finishes its request in flight) and reports.
    pub async fn stop(mut self) -> TrafficReport {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.await;
        }
        self.snapshot()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        for w in &self.workers {
            w.abort();
        }
    }
}

/// What the rotation sampler saw.
#[derive(Clone, Debug, Default)]
pub struct RotationReport {
    /// Samples taken.
    pub samples: u64,
    /// Most servers out of rotation in one sample.
    pub max_out: usize,
    /// The sample where that happened.
    pub max_out_sample: Vec<ServerRow>,
    /// Samples that could not be taken (HAProxy did not answer).
    pub errors: u64,
}

/// Samples `show servers state BACKEND` every `every` until stopped.
pub struct RotationSampler {
    /// Tells the sampler to stop.
    stop: Arc<AtomicBool>,
    /// The sampler task, returning its report.
    task: Option<JoinHandle<RotationReport>>,
}

impl RotationSampler {
    /// Starts sampling.
    pub fn start(socket: PathBuf, backend: String, every: Duration) -> RotationSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut rep = RotationReport::default();
            while !flag.load(Ordering::Relaxed) {
                match servers_state(&socket, &backend).await {
                    Ok(rows) => {
                        rep.samples += 1;
                        let out = rows.iter().filter(|r| !r.in_rotation()).count();
                        if out > rep.max_out {
                            rep.max_out = out;
                            rep.max_out_sample = rows;
                        }
                    }
                    Err(_) => rep.errors += 1,
                }
                tokio::time::sleep(every).await;
            }
            rep
        });
        RotationSampler {
            stop,
            task: Some(task),
        }
    }

    /// Stops and reports.
    pub async fn stop(mut self) -> RotationReport {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.take() {
            Some(t) => t.await.unwrap_or_default(),
            None => RotationReport::default(),
        }
    }
}

impl Drop for RotationSampler {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
