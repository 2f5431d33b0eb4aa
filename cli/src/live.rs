//! Rendering of job events (NDJSON from the API, [`vesemir_api::Event`])
//! as live terminal output, Ansible-style: task headers, output lines as
//! they come, results, recap.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use vesemir_api::{Event, JobOutcome, StreamLine};

/// The outcome a `finished` event carries, if `ev` is one.
pub fn outcome(ev: &Event) -> Option<JobOutcome> {
    match ev {
        Event::Finished {
            job_id,
            status,
            stats,
            error,
            output,
        } => Some(JobOutcome {
            job_id: job_id.clone(),
            status: status.clone(),
            stats: stats.clone(),
            error: error.clone(),
            output: output.clone(),
        }),
        _ => None,
    }
}

/// Renders one event for `host`; returns the job's outcome when it is the
/// final event.
pub fn render(host: &str, ev: &Event) -> Option<JobOutcome> {
    match ev {
        Event::Started {
            job_id,
            replay: true,
        } => {
            println!("[{host}] job {job_id} already ran: reporting its recorded result")
        }
        Event::TaskStarted { name, .. } => println!("[{host}] TASK [{name}]"),
        Event::Log { stream, line, .. } => {
            let mark = if stream == "stderr" { "!" } else { "|" };
            println!("[{host}]   {mark} {line}");
        }
        Event::TaskResult {
            status,
            duration_ms,
            msg,
            ..
        } => {
            let ms = duration_ms.unwrap_or(0);
            let msg = match msg.as_deref() {
                None | Some("") => String::new(),
                Some(m) => format!(": {m}"),
            };
            println!("[{host}]   {status} ({:.1}s){msg}", ms as f64 / 1000.0);
        }
        Event::Finished { .. } => return outcome(ev),
        Event::Error { message } => println!("[{host}] error: {message}"),
        _ => {}
    }
    None
}

/// The Ansible-style recap line of a job's outcome.
pub fn recap(host: &str, fin: &JobOutcome) -> String {
    let st = &fin.stats;
    format!(
        "{host} : {} ok={} changed={} failed={} skipped={}",
        fin.status, st.ok, st.changed, st.failed, st.skipped
    )
}

/// Reads an NDJSON response line by line, calling `f` with each line as
/// sent and parsed; `f` returns false to stop.
pub async fn each_line(
    resp: reqwest::Response,
    mut f: impl FnMut(&str, StreamLine) -> bool,
) -> Result<()> {
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the stream from the controller broke")?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if line.len() <= 1 {
                continue;
            }
            let ev: StreamLine =
                serde_json::from_slice(&line).context("bad event line from the controller")?;
            let raw = String::from_utf8_lossy(&line).trim().to_string();
            if !f(&raw, ev) {
                return Ok(());
            }
        }
        if buf.len() > 4 * 1024 * 1024 {
            bail!("event line over 4 MiB from the controller");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recap_reads_the_finished_event() {
        let line: StreamLine = serde_json::from_str(
            r#"{"error":null,"job_id":"j","output":null,"stats":{"changed":1,"failed":0,"ok":2,"skipped":3},"status":"succeeded","type":"finished"}"#,
        )
        .unwrap();
        let fin = outcome(&line.event).expect("a finished event");
        assert_eq!(
            recap("web-1", &fin),
            "web-1 : succeeded ok=2 changed=1 failed=0 skipped=3"
        );
        assert_eq!(outcome(&Event::Keepalive), None);
    }
}
