//! Running a process in its own process group, streaming its output.
//!
//! Invariant: a process started here never outlives a stop request (timeout
//! or cancel): the whole group gets SIGTERM, then SIGKILL after the grace
//! period. If the future is dropped mid-run, the group is SIGKILLed.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use vesemir_protocol::job::{JobEvent, LogStream, MAX_LOG_LINE};

use super::TaskEnv;

/// How much of each stream is kept for `register` (log events carry it all).
const CAPTURE_LIMIT: usize = 256 * 1024;
/// Lines kept for a task result's tail.
pub(crate) const TAIL_LINES: usize = 20;
/// How long to wait for output pipes after the process exits (a background
/// child may hold them open).
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// Working directory.
    pub chdir: Option<PathBuf>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// How a process ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcessOutput {
    /// Exit code; None when killed by a signal.
    pub rc: Option<i32>,
    /// Captured stdout (bounded).
    pub stdout: String,
    /// Captured stderr (bounded).
    pub stderr: String,
    /// Killed because of a stop request.
    pub stopped: bool,
}

/// SIGKILLs the group on drop unless disarmed.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Cuts a line to [`MAX_LOG_LINE`] bytes on a char boundary, with a marker.
pub(crate) fn cut_line(mut s: String, force: bool) -> String {
    const MARK: &str = " …[cut]";
    if s.len() <= MAX_LOG_LINE && !force {
        return s;
    }
    let mut end = (MAX_LOG_LINE - MARK.len()).min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MARK);
    s
}

/// Reads lines (bounded in length) and forwards each as a log event.
async fn pump<R: AsyncRead + Unpin>(
    r: R,
    stream: LogStream,
    index: u32,
    events: mpsc::Sender<JobEvent>,
) -> String {
    let mut reader = BufReader::new(r);
    let mut capture = String::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read one line, but never hold more than MAX_LOG_LINE+1 bytes of it.
        let mut too_long = false;
        let mut eof = false;
        loop {
            let chunk = match reader.fill_buf().await {
                Ok(c) => c,
                Err(_) => {
                    eof = true;
                    break;
                }
            };
            if chunk.is_empty() {
                eof = true;
                break;
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(p) => (p + 1, true),
                None => (chunk.len(), false),
            };
            let room = (MAX_LOG_LINE + 1).saturating_sub(buf.len());
            if take > room {
                too_long = true;
            }
            buf.extend_from_slice(&chunk[..take.min(room)]);
            reader.consume(take);
            if done {
                break;
            }
        }
        if buf.is_empty() && eof {
            break;
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let line = cut_line(String::from_utf8_lossy(&buf).into_owned(), too_long);
        if capture.len() < CAPTURE_LIMIT {
            capture.push_str(&line);
            capture.push('\n');
        }
        let _ = events
            .send(JobEvent::Log {
                index,
                stream,
                line,
            })
            .await;
        if eof {
            break;
        }
    }
    capture
}

/// The last [`TAIL_LINES`] lines of `s`.
pub(crate) fn tail(s: &str) -> String {
    let mut q: VecDeque<&str> = VecDeque::new();
    for l in s.lines() {
        if q.len() == TAIL_LINES {
            q.pop_front();
        }
        q.push_back(l);
    }
    q.into_iter().collect::<Vec<_>>().join("\n")
}

/// Runs `spec` in a new process group; every line of stdout/stderr becomes a
/// log event as it comes. On `env.stop`, the group is terminated.
pub(crate) async fn run_process(
    spec: &ProcessSpec,
    env: &TaskEnv<'_>,
) -> std::io::Result<ProcessOutput> {
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = &spec.chdir {
        cmd.current_dir(d);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32);
    let mut guard = GroupGuard(pgid);
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let mut out_task = tokio::spawn(pump(out, LogStream::Stdout, env.index, env.events.clone()));
    let mut err_task = tokio::spawn(pump(err, LogStream::Stderr, env.index, env.events.clone()));

    let mut stopped = false;
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = env.stop.cancelled() => {
            stopped = true;
            if let Some(pg) = pgid {
                let _ = killpg(Pid::from_raw(pg), Signal::SIGTERM);
            }
            let s = match tokio::time::timeout(env.cfg.kill_grace, child.wait()).await {
                Ok(s) => s?,
                Err(_) => {
                    if let Some(pg) = pgid {
                        let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
                    }
                    child.wait().await?
                }
            };
            // Children that ignored SIGTERM go now.
            if let Some(pg) = pgid {
                let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
            }
            s
        }
    };
    guard.0 = None;
    let drain = async {
        let o = (&mut out_task).await.unwrap_or_default();
        let e = (&mut err_task).await.unwrap_or_default();
        (o, e)
    };
    let (stdout, stderr) = match tokio::time::timeout(PIPE_DRAIN, drain).await {
        Ok(x) => x,
        Err(_) => {
            out_task.abort();
            err_task.abort();
            (String::new(), String::new())
        }
    };
    Ok(ProcessOutput {
        rc: status.code(),
        stdout,
        stderr,
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut() {
        let l = cut_line("é".repeat(MAX_LOG_LINE), false);
        assert!(l.len() <= MAX_LOG_LINE);
        assert!(l.ends_with("[cut]"));
        assert_eq!(cut_line("short".into(), false), "short");
    }

    #[tokio::test]
    async fn pump_splits_and_bounds_lines() {
        let big = "y".repeat(MAX_LOG_LINE * 3);
        let input = format!("one\r\ntwo\n{big}\nlast");
        let (tx, mut rx) = mpsc::channel(16);
        let cap = pump(input.as_bytes(), LogStream::Stdout, 7, tx).await;
        let mut lines = Vec::new();
        while let Ok(JobEvent::Log { line, index, .. }) = rx.try_recv() {
            assert_eq!(index, 7);
            lines.push(line);
        }
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "two");
        assert!(lines[2].len() <= MAX_LOG_LINE && lines[2].ends_with("[cut]"));
        assert_eq!(lines[3], "last");
        assert!(cap.starts_with("one\ntwo\n"));
    }

    #[test]
    fn tail_keeps_last_lines() {
        let s: String = (0..50).map(|i| format!("{i}\n")).collect();
        let t = tail(&s);
        assert!(t.starts_with("30\n") && t.ends_with("49"));
    }
}
