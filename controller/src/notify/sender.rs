//! The bounded background webhook sender.
//!
//! [`Notifier::notify`] signs the body once and `try_send`s one delivery per
//! URL into a bounded queue; it never waits. A dispatcher task takes
//! deliveries off the queue and runs each in its own task, at most
//! [`Settings::in_flight`] at once (so a hanging receiver holds one slot,
//! not the queue). A delivery is retried on a connection error, a timeout,
//! a 5xx, 408 or 429, with the daemons' full-jitter backoff; another 4xx is
//! the receiver refusing the body, and is not retried.

use super::{redact_url, sign, WebhookBody};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// How the sender behaves.
#[derive(Clone)]
pub struct Settings {
    /// HMAC key of `X-Vesemir-Signature`; never printed.
    pub secret: Arc<[u8]>,
    /// Deliveries waiting at most.
    pub queue: usize,
    /// Deliveries running at most.
    pub in_flight: usize,
    /// Longest one attempt (connect + request + response).
    pub timeout: Duration,
    /// Attempts per delivery.
    pub attempts: u32,
    /// Backoff base between attempts.
    pub backoff_base: Duration,
    /// Backoff cap between attempts.
    pub backoff_cap: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("secret", &"<redacted>")
            .field("queue", &self.queue)
            .field("in_flight", &self.in_flight)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// From `[notify]` and the secret read from its file.
    pub fn from_config(cfg: &super::NotifyConfig, secret: Vec<u8>) -> Settings {
        Settings {
            secret: secret.into(),
            queue: cfg.queue,
            in_flight: 16,
            timeout: cfg.timeout,
            attempts: cfg.attempts,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(60),
        }
    }
}

/// Counts since start, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct NotifyStats {
    /// Deliveries queued.
    pub queued: AtomicU64,
    /// Deliveries dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Deliveries a receiver accepted (2xx).
    pub delivered: AtomicU64,
    /// Deliveries given up on (attempts exhausted, or refused with a 4xx).
    pub failed: AtomicU64,
    /// HTTP attempts made, successful or not.
    pub attempts: AtomicU64,
}

impl NotifyStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// (queued, dropped, delivered, failed, attempts), read now.
    pub fn snapshot(&self) -> [u64; 5] {
        [
            &self.queued,
            &self.dropped,
            &self.delivered,
            &self.failed,
            &self.attempts,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

/// One body for one URL.
struct Delivery {
    url: String,
    body: Arc<[u8]>,
    signature: Arc<str>,
    event: &'static str,
    id: String,
}

/// The handle the orchestrator calls; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Delivery>,
    secret: Arc<[u8]>,
    stats: Arc<NotifyStats>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    Retry(String),
    Refused(String),
}

impl Notifier {
    /// Starts the dispatcher; it ends when `shutdown` is cancelled (running
    /// deliveries stop at their next await) or every `Notifier` is dropped.
    pub fn start(
        settings: Settings,
        http: reqwest::Client,
        shutdown: CancellationToken,
    ) -> (Notifier, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let stats = Arc::new(NotifyStats::default());
        let notifier = Notifier {
            tx,
            secret: settings.secret.clone(),
            stats: stats.clone(),
        };
        let task = tokio::spawn(dispatch(rx, settings, http, stats, shutdown));
        (notifier, task)
    }

    /// An HTTP client for webhooks: no redirects (a receiver cannot send
    /// the controller elsewhere), the controller's user agent.
    pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vesemir-controller/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    /// Queues `body` for every URL; returns how many were queued (the rest
    /// were dropped: queue full). Never waits.
    pub fn notify(&self, urls: &[&str], body: &WebhookBody) -> usize {
        // A derived Serialize of plain data cannot fail.
        let bytes: Arc<[u8]> = serde_json::to_vec(body).expect("body serializes").into();
        let signature: Arc<str> = sign(&self.secret, &bytes).into();
        let mut queued = 0;
        for url in urls {
            let d = Delivery {
                url: url.to_string(),
                body: bytes.clone(),
                signature: signature.clone(),
                event: body.event.as_str(),
                id: body.deployment.id.clone(),
            };
            match self.tx.try_send(d) {
                Ok(()) => {
                    NotifyStats::bump(&self.stats.queued);
                    queued += 1;
                }
                Err(e) => {
                    NotifyStats::bump(&self.stats.dropped);
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => "queue full",
                        mpsc::error::TrySendError::Closed(_) => "sender stopped",
                    };
                    tracing::warn!(deployment_id = %body.deployment.id, event = body.event.as_str(),
                        webhook = %redact_url(url), reason = why, "webhook dropped");
                }
            }
        }
        queued
    }

    /// The counts since start.
    pub fn stats(&self) -> &NotifyStats {
        &self.stats
    }
}

async fn dispatch(
    mut rx: mpsc::Receiver<Delivery>,
    settings: Settings,
    http: reqwest::Client,
    stats: Arc<NotifyStats>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    loop {
        let d = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => return },
            _ = shutdown.cancelled() => return,
        };
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.cancelled() => return,
        };
        let (settings, http, stats, shutdown) = (
            settings.clone(),
            http.clone(),
            stats.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = deliver(&d, &settings, &http, &stats) => {}
                _ = shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
}

async fn deliver(d: &Delivery, s: &Settings, http: &reqwest::Client, stats: &NotifyStats) {
    let webhook = redact_url(&d.url);
    for attempt in 0..s.attempts {
        if attempt > 0 {
            tokio::time::sleep(vesemir_daemon::backoff(
                s.backoff_base,
                s.backoff_cap,
                attempt - 1,
            ))
            .await;
        }
        NotifyStats::bump(&stats.attempts);
        match attempt_once(d, s, http).await {
            Attempt::Delivered => {
                NotifyStats::bump(&stats.delivered);
                tracing::debug!(deployment_id = %d.id, event = d.event, %webhook, attempt, "webhook delivered");
                return;
            }
            Attempt::Refused(why) => {
                NotifyStats::bump(&stats.failed);
                tracing::warn!(deployment_id = %d.id, event = d.event, %webhook, reason = %why, "webhook refused the body; not retried");
                return;
            }
            Attempt::Retry(why) => {
                tracing::info!(deployment_id = %d.id, event = d.event, %webhook, attempt, reason = %why, "webhook attempt failed");
            }
        }
    }
    NotifyStats::bump(&stats.failed);
    tracing::warn!(deployment_id = %d.id, event = d.event, %webhook, attempts = s.attempts, "webhook given up");
}

async fn attempt_once(d: &Delivery, s: &Settings, http: &reqwest::Client) -> Attempt {
    let sent = http
        .post(&d.url)
        .timeout(s.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Vesemir-Signature", &*d.signature)
        .header("X-Vesemir-Event", d.event)
        .body(d.body.to_vec())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Attempt::Delivered,
        Ok(r) => {
            let code = r.status();
            let retry = code.is_server_error() || code.as_u16() == 408 || code.as_u16() == 429;
            // Error text without the URL: reqwest's Display includes it.
            if retry {
                Attempt::Retry(format!("HTTP {code}"))
            } else {
                Attempt::Refused(format!("HTTP {code}"))
            }
        }
        Err(e) if e.is_timeout() => Attempt::Retry(format!("no answer within {:?}", s.timeout)),
        Err(e) if e.is_connect() => Attempt::Retry("cannot connect".into()),
        Err(e) => Attempt::Retry(e.without_url().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{verify, DeploymentSummary, NotifyEvent};
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    const SECRET: &[u8] = b"0123456789abcdef-test";

    fn settings(attempts: u32, timeout_ms: u64) -> Settings {
        Settings {
            secret: SECRET.into(),
            queue: 16,
            in_flight: 4,
            timeout: Duration::from_millis(timeout_ms),
            attempts,
            backoff_base: Duration::from_millis(10),
            backoff_cap: Duration::from_millis(50),
        }
    }

    fn body(event: NotifyEvent) -> WebhookBody {
        WebhookBody {
            event,
            at: "2026-12-04T04:00:00Z".into(),
            deployment: DeploymentSummary {
                id: "0193-abc".into(),
                application: "pay".into(),
                environment: "prod".into(),
                team: "t".into(),
                requested_by: "ci".into(),
                changeset_version: Some("1.2.3".into()),
                hosts_total: 10,
                hosts_succeeded: 1,
                hosts_failed: 0,
            },
            message: Some("canary passed".into()),
        }
    }

    /// A request as the receiver read it.
    struct Received {
        head: String,
        body: Vec<u8>,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then_some(v.trim())
            })
        }
    }

    /// A real HTTP receiver on 127.0.0.1:0 answering each request with the
    /// next status of `statuses` (the last one repeats), reporting what it
    /// got on the channel.
    async fn receiver(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hooks/deploy?token=SECRET",
            listener.local_addr().unwrap()
        );
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let status = statuses[n.min(statuses.len() - 1)];
                n += 1;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head, len) = loop {
                        let k = sock.read(&mut chunk).await.unwrap();
                        assert!(k > 0, "client closed before the headers ended");
                        buf.extend_from_slice(&chunk[..k]);
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            buf.drain(..end + 4);
                            break (head, len);
                        }
                    };
                    while buf.len() < len {
                        let k = sock.read(&mut chunk).await.unwrap();
                        assert!(k > 0, "client closed mid-body");
                        buf.extend_from_slice(&chunk[..k]);
                    }
                    let _ = tx.send(Received { head, body: buf });
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                });
            }
        });
        (url, rx)
    }

    async fn wait_for(stats: &NotifyStats, what: &str, ok: impl Fn([u64; 5]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = stats.snapshot();
            if ok(s) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: stats {s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn start(s: Settings) -> (Notifier, CancellationToken) {
        let stop = CancellationToken::new();
        let http = Notifier::http_client(s.timeout).unwrap();
        let (n, _task) = Notifier::start(s, http, stop.clone());
        (n, stop)
    }

    #[tokio::test]
    async fn receiver_gets_a_signed_body() {
        let (url, mut got) = receiver(vec![200]).await;
        let (n, stop) = start(settings(3, 2000));
        assert_eq!(n.notify(&[&url], &body(NotifyEvent::CanaryPassed)), 1);
        let r = tokio::time::timeout(Duration::from_secs(10), got.recv())
            .await
            .expect("delivered within 10 s")
            .unwrap();
        assert!(
            r.head
                .starts_with("POST /hooks/deploy?token=SECRET HTTP/1.1"),
            "{}",
            r.head
        );
        let sig = r.header("x-vesemir-signature").expect("signature header");
        assert!(
            verify(SECRET, &r.body, sig),
            "signature {sig} does not verify"
        );
        assert_eq!(r.header("x-vesemir-event"), Some("canary_passed"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let parsed: WebhookBody = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(parsed, body(NotifyEvent::CanaryPassed));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["event"], "canary_passed");
        assert_eq!(v["deployment"]["application"], "pay");
        wait_for(n.stats(), "delivered once", |s| s[2] == 1 && s[4] == 1).await;
        stop.cancel();
    }

    #[tokio::test]
    async fn server_errors_are_retried_client_errors_are_not() {
        let (url, mut got) = receiver(vec![503, 500, 200]).await;
        let (n, stop) = start(settings(5, 2000));
        n.notify(&[&url], &body(NotifyEvent::Failed));
        wait_for(n.stats(), "delivered on the third attempt", |s| {
            s[2] == 1 && s[4] == 3
        })
        .await;
        for _ in 0..3 {
            let r = got.recv().await.unwrap();
            // Every retry carries the same signed body.
            assert!(verify(
                SECRET,
                &r.body,
                r.header("x-vesemir-signature").unwrap()
            ));
        }
        let (url, _got) = receiver(vec![400]).await;
        n.notify(&[&url], &body(NotifyEvent::Failed));
        wait_for(n.stats(), "refused once, not retried", |s| {
            s[3] == 1 && s[4] == 4
        })
        .await;
        stop.cancel();
    }

    #[tokio::test]
    async fn a_receiver_that_is_down_does_not_block() {
        // A port with nothing listening: bind, note it, close it.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (n, stop) = start(settings(3, 2000));
        let t0 = Instant::now();
        assert_eq!(
            n.notify(&[&format!("http://{addr}/x")], &body(NotifyEvent::Started)),
            1
        );
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
        wait_for(n.stats(), "given up after 3 attempts", |s| {
            s[3] == 1 && s[4] == 3
        })
        .await;
        stop.cancel();
    }

    #[tokio::test]
    async fn a_hanging_receiver_does_not_block_and_a_full_queue_drops() {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let s = Settings {
            queue: 2,
            in_flight: 1,
            ..settings(2, 200)
        };
        let (n, stop) = start(s);
        let t0 = Instant::now();
        let mut queued = 0;
        for _ in 0..10 {
            queued += n.notify(&[&url], &body(NotifyEvent::Paused));
        }
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
        // One in flight (maybe taken off the queue already), two waiting:
        // the rest dropped and counted.
        assert!((2..=3).contains(&queued), "queued {queued}");
        assert_eq!(n.stats().snapshot()[1], 10 - queued as u64);
        // Each attempt times out (200 ms) and is retried once.
        wait_for(n.stats(), "the first delivery timed out twice", |s| {
            s[3] >= 1 && s[4] >= 2
        })
        .await;
        stop.cancel();
    }
}
