//! Following a running deployment until it ends.
//!
//! Two sources: the log stream (`GET …/logs?follow=true&after=SEQ`, NDJSON,
//! read by a task that reconnects from the last seq it saw) for the lines,
//! and a poll of `GET /v1/deployments/{id}` every 500 ms for host status and
//! step (the bars) and as a backstop should the stream never say `end`.
//! On a terminal an indicatif `MultiProgress` holds one "hosts done / total"
//! bar and one line per host in flight; log lines go above the bars through
//! `MultiProgress::println`, so they never tear the bars. Without a terminal
//! the same lines are printed plainly, in the same format, for scripts.
//! Ctrl-C stops following only: the deployment goes on.

use super::view;
use crate::client::Api;
use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vesemir_api::{DeploymentView, Event, StreamLine};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bars and live host lines (stdout is a terminal).
    Bars,
    /// Plain lines (no terminal): greppable, nothing redrawn.
    Plain,
    /// Every raw event as one JSON line (`logs --follow --output json`).
    Raw,
    /// Nothing while it runs (`--output json`: only the final JSON).
    Quiet,
}

/// How following ended.
pub enum Outcome {
    /// The deployment ended; its final state.
    Finished(Box<DeploymentView>),
    /// The user pressed Ctrl-C; the deployment goes on.
    Interrupted,
}

/// Poll period of the deployment's state.
const POLL: Duration = Duration::from_millis(500);
/// The server sends a keepalive every 10 s; this much silence is a dead stream.
const STALL: Duration = Duration::from_secs(35);
/// Once the poll sees a final status, how long the stream gets to say `end`.
const END_GRACE: Duration = Duration::from_secs(5);

/// What the terminal shows.
struct Ui {
    mode: Mode,
    /// The bars, in `Bars` mode.
    mp: Option<MultiProgress>,
    /// Hosts done / total.
    total: Option<ProgressBar>,
    /// One line per host in flight, by host name.
    hosts: HashMap<String, ProgressBar>,
    /// The task each host in flight is running, from the log stream.
    tasks: HashMap<String, String>,
}

impl Ui {
    fn new(mode: Mode) -> Ui {
        let (mp, total) = if mode == Mode::Bars {
            let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let bar = mp.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} hosts done · {msg} · {elapsed}",
                )
                .expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            (Some(mp), Some(bar))
        } else {
            (None, None)
        };
        Ui {
            mode,
            mp,
            total,
            hosts: HashMap::new(),
            tasks: HashMap::new(),
        }
    }

    fn line(&self, s: &str) {
        match (&self.mp, self.mode) {
            // Above the bars, unless the draw target is hidden (println would drop the line).
            (Some(mp), _) if !mp.is_hidden() && mp.println(s).is_ok() => {}
            (Some(_), _) | (None, Mode::Plain) => println!("{s}"),
            _ => {}
        }
    }

    fn notice(&self, s: &str) {
        match self.mode {
            Mode::Bars | Mode::Plain => self.line(s),
            Mode::Raw | Mode::Quiet => eprintln!("{s}"),
        }
    }

    /// Shows one line of the log; `raw` is the line as the controller sent it.
    fn event(&mut self, raw: &str, ev: &StreamLine) {
        if self.mode == Mode::Raw {
            println!("{raw}");
            return;
        }
        if let (Some(host), Event::TaskStarted { name, .. }) = (&ev.host, &ev.event) {
            let host = host.as_str();
            let task = name.clone();
            if let Some(bar) = self.hosts.get(host) {
                let step = bar.message();
                let step = step.split(" · ").next().unwrap_or("").to_string();
                bar.set_message(format!("{step} · {task}"));
            }
            self.tasks.insert(host.to_string(), task);
        }
        if let Some(l) = view::event_line(ev) {
            self.line(&l);
        }
    }

    /// Redraws the bars from the deployment's state.
    fn update(&mut self, d: &DeploymentView) {
        let (Some(mp), Some(total)) = (&self.mp, &self.total) else {
            return;
        };
        let hosts = d
            .detail
            .as_ref()
            .map(|x| x.hosts.as_slice())
            .unwrap_or_default();
        let len = u64::try_from(d.hosts_total).unwrap_or(hosts.len() as u64);
        total.set_length(len.max(hosts.len() as u64));
        let done = hosts.iter().filter(|h| view::host_done(&h.status)).count();
        total.set_position(done as u64);
        total.set_message(d.status.clone());
        for h in hosts {
            let name = h.name.as_str();
            if h.status == "running" {
                let bar = self.hosts.entry(name.to_string()).or_insert_with(|| {
                    let b = mp.add(ProgressBar::new_spinner());
                    b.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix} {msg} ({elapsed})")
                            .expect("static template"),
                    );
                    b.set_prefix(format!("[{name}]"));
                    b.enable_steady_tick(Duration::from_millis(120));
                    b
                });
                let step = h.step.as_deref().unwrap_or("starting");
                match self.tasks.get(name) {
                    Some(t) if step == "deploying" && !t.is_empty() => {
                        bar.set_message(format!("{step} · {t}"))
                    }
                    _ => bar.set_message(step.to_string()),
                }
            } else if let Some(bar) = self.hosts.remove(name) {
                bar.finish_and_clear();
                mp.remove(&bar);
                self.tasks.remove(name);
            }
        }
    }

    /// Takes the bars off the screen before the summary is printed.
    fn clear(&mut self) {
        for (_, b) in self.hosts.drain() {
            b.finish_and_clear();
        }
        if let Some(t) = &self.total {
            t.finish_and_clear();
        }
        if let Some(mp) = &self.mp {
            let _ = mp.clear();
        }
    }
}

/// An NDJSON response read one object at a time; silence longer than
/// `stall` is an error (the server sends keepalives), so a dead connection
/// does not hang the CLI.
struct Ndjson<S> {
    body: std::pin::Pin<Box<S>>,
    buf: Vec<u8>,
    stall: Duration,
}

impl<S, B> Ndjson<S>
where
    S: futures::Stream<Item = reqwest::Result<B>>,
    B: AsRef<[u8]>,
{
    fn new(body: S, stall: Duration) -> Self {
        Ndjson {
            body: Box::pin(body),
            buf: Vec::new(),
            stall,
        }
    }

    /// The next line, as sent and parsed, or `None` at the end of the response.
    async fn next(&mut self) -> Result<Option<(String, StreamLine)>> {
        loop {
            while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let parsed: StreamLine =
                    serde_json::from_slice(&line).context("bad log line from the controller")?;
                let raw = String::from_utf8_lossy(&line).trim().to_string();
                return Ok(Some((raw, parsed)));
            }
            if self.buf.len() > 4 * 1024 * 1024 {
                bail!("log line over 4 MiB from the controller");
            }
            match tokio::time::timeout(self.stall, self.body.next()).await {
                Err(_) => bail!("no data from the controller for {}s", self.stall.as_secs()),
                Ok(None) => return Ok(None),
                Ok(Some(c)) => self
                    .buf
                    .extend_from_slice(c.context("the log stream broke")?.as_ref()),
            }
        }
    }
}

/// The log path of a deployment, from after `after`.
fn logs_path(id: &str, follow: bool, after: Option<u64>) -> String {
    let mut p = format!("/v1/deployments/{}/logs", crate::agents::enc(id));
    let mut q = Vec::new();
    if follow {
        q.push("follow=true".to_string());
    }
    if let Some(a) = after {
        q.push(format!("after={a}"));
    }
    if !q.is_empty() {
        p.push('?');
        p.push_str(&q.join("&"));
    }
    p
}

/// What the log reader hands the follower.
enum Msg {
    /// A line of the log: as sent, and parsed.
    Line(String, Box<StreamLine>),
    /// The reader's own news (lost the stream, reconnected).
    Notice(String),
}

/// Streams the log into `tx`, reconnecting from the last seq, until the
/// `end` event (sent on too) or the receiver goes away. Transport trouble is
/// reported as a [`Msg::Notice`] and retried; only an API refusal (4xx) is
/// fatal.
async fn stream_logs(
    api: Api,
    id: String,
    mut after: Option<u64>,
    tx: mpsc::Sender<Msg>,
) -> Result<()> {
    let mut backoff = Duration::from_millis(500);
    let mut told = false;
    loop {
        let resp = api
            .stream_req(reqwest::Method::GET, &logs_path(&id, true, after))
            .send()
            .await;
        let problem = match resp {
            Ok(r) if r.status().is_success() => {
                if told {
                    let _ = tx.send(Msg::Notice("log stream reconnected".into())).await;
                    told = false;
                }
                backoff = Duration::from_millis(500);
                let mut lines = Ndjson::new(r.bytes_stream(), STALL);
                loop {
                    match lines.next().await {
                        Ok(Some((raw, ev))) => {
                            if let Some(seq) = ev.seq {
                                after = Some(seq);
                            }
                            let end = matches!(ev.event, Event::End { .. });
                            if tx.send(Msg::Line(raw, Box::new(ev))).await.is_err() || end {
                                return Ok(());
                            }
                        }
                        Ok(None) => break "it closed before the end".to_string(),
                        Err(e) => break format!("{e:#}"),
                    }
                }
            }
            Ok(r) if r.status().is_client_error() => return Err(super::api_error(r).await),
            Ok(r) => format!("the controller answered {}", r.status()),
            Err(e) => super::error_chain(&e),
        };
        if !told {
            let msg = format!("lost the log stream ({problem}); reconnecting…");
            if tx.send(Msg::Notice(msg)).await.is_err() {
                return Ok(());
            }
            told = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// GET the deployment.
pub async fn get(api: &Api, id: &str) -> Result<DeploymentView> {
    api.json(api.req(
        reqwest::Method::GET,
        &format!("/v1/deployments/{}", crate::agents::enc(id)),
    ))
    .await
}

/// Calls `f` for each stored log line after `after` (no follow), with the
/// line as sent and parsed.
pub async fn stored_logs(
    api: &Api,
    id: &str,
    after: Option<u64>,
    mut f: impl FnMut(&str, StreamLine),
) -> Result<()> {
    let resp = api
        .send(api.stream_req(reqwest::Method::GET, &logs_path(id, false, after)))
        .await?;
    let mut lines = Ndjson::new(resp.bytes_stream(), STALL);
    while let Some((raw, ev)) = lines.next().await? {
        f(&raw, ev);
    }
    Ok(())
}

/// Follows deployment `id` until it ends or Ctrl-C.
pub async fn follow(api: &Api, id: &str, mode: Mode) -> Result<Outcome> {
    let mut ui = Ui::new(mode);
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let reader = tokio::spawn(stream_logs(api.clone(), id.to_string(), None, tx));
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last_seq: Option<u64> = None;
    let mut final_since: Option<Instant> = None;
    let mut poll_failing = false;
    // Whether the stream said `end`; if not, the poll decided it was over.
    let mut ended = false;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Msg::Line(_, ev)) if matches!(ev.event, Event::End { .. }) => {
                    ended = true;
                    break;
                }
                Some(Msg::Notice(m)) => ui.notice(&m),
                Some(Msg::Line(raw, ev)) => {
                    if let Some(seq) = ev.seq {
                        last_seq = Some(seq);
                    }
                    ui.event(&raw, &ev);
                }
                // The reader gave up: its error is returned below.
                None => break,
            },
            _ = tick.tick() => match get(api, id).await {
                Ok(d) => {
                    poll_failing = false;
                    ui.update(&d);
                    if view::is_final(&d.status) {
                        let since = *final_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > END_GRACE {
                            break;
                        }
                    }
                }
                Err(e) => {
                    if !poll_failing {
                        ui.notice(&format!("cannot read the deployment's state ({e:#}); retrying…"));
                        poll_failing = true;
                    }
                }
            },
            _ = &mut ctrl_c => {
                ui.clear();
                reader.abort();
                eprintln!(
                    "stopped following; deployment {id} goes on.\n  follow it again: vesemir deployments logs {id} --follow\n  stop it:         vesemir deployments cancel {id}"
                );
                return Ok(Outcome::Interrupted);
            }
        }
    }
    reader.abort();
    if let Ok(Err(e)) = reader.await {
        ui.clear();
        return Err(e);
    }
    if !ended {
        // The stream lagged behind the final status: print what it missed.
        let _ = stored_logs(api, id, last_seq, |raw, ev| ui.event(raw, &ev)).await;
    }
    ui.clear();
    // `end` comes once the status is stored, but a replica or a cache may
    // lag: give the final status a few seconds to show.
    let mut last = Err(anyhow!("cannot read the deployment {id}"));
    for _ in 0..20 {
        last = get(api, id).await;
        if let Ok(d) = &last {
            if view::is_final(&d.status) {
                break;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    last.map(|d| Outcome::Finished(Box::new(d)))
}

#[cfg(test)]
mod tests {
    use super::logs_path;

    #[test]
    fn log_paths() {
        assert_eq!(
            logs_path("d 1", true, None),
            "/v1/deployments/d%201/logs?follow=true"
        );
        assert_eq!(
            logs_path("d", true, Some(17)),
            "/v1/deployments/d/logs?follow=true&after=17"
        );
        assert_eq!(
            logs_path("d", false, Some(3)),
            "/v1/deployments/d/logs?after=3"
        );
        assert_eq!(logs_path("d", false, None), "/v1/deployments/d/logs");
    }
}
