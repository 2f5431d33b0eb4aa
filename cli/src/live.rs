//! Rendering of job events (NDJSON from the API) as live terminal output,
//! Ansible-style: task headers, output lines as they come, results, recap.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::Value;

/// Renders one event for `host`; returns the final event when it is one.
pub fn render(host: &str, ev: &Value) -> Option<Value> {
    let s = |k: &str| ev[k].as_str().unwrap_or("").to_string();
    match ev["type"].as_str().unwrap_or("") {
        "started" if ev["replay"] == true => {
            println!(
                "[{host}] job {} already ran: reporting its recorded result",
                s("job_id")
            )
        }
        "task_started" => println!("[{host}] TASK [{}]", s("name")),
        "log" => {
            let mark = if ev["stream"] == "stderr" { "!" } else { "|" };
            println!("[{host}]   {mark} {}", s("line"));
        }
        "task_result" => {
            let ms = ev["duration_ms"].as_u64().unwrap_or(0);
            let msg = s("msg");
            let msg = if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            };
            println!(
                "[{host}]   {} ({:.1}s){msg}",
                s("status"),
                ms as f64 / 1000.0
            );
        }
        "finished" => return Some(ev.clone()),
        "error" => println!("[{host}] error: {}", s("message")),
        _ => {}
    }
    None
}

/// The Ansible-style recap line of a finished event.
pub fn recap(host: &str, fin: &Value) -> String {
    let st = &fin["stats"];
    format!(
        "{host} : {} ok={} changed={} failed={} skipped={}",
        fin["status"].as_str().unwrap_or("?"),
        st["ok"],
        st["changed"],
        st["failed"],
        st["skipped"]
    )
}

/// Reads an NDJSON response line by line, calling `f` for each object.
pub async fn each_line(resp: reqwest::Response, mut f: impl FnMut(Value) -> bool) -> Result<()> {
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
            let v: Value =
                serde_json::from_slice(&line).context("bad event line from the controller")?;
            if !f(v) {
                return Ok(());
            }
        }
        if buf.len() > 4 * 1024 * 1024 {
            bail!("event line over 4 MiB from the controller");
        }
    }
    Ok(())
}
