//! `vesemir agents …`: fleet health for SREs.

use crate::client::Api;
use crate::{print_json, Output};
use anyhow::Result;
use clap::Subcommand;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use std::process::ExitCode;
use vesemir_api::{AgentForgotten, AgentView, ChangesetBody, JobOutcome, RunPlaybook};

#[derive(Subcommand)]
pub enum AgentsCmd {
    /// List agents: state, version, last seen, load, address.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show one agent with its facts and certificate.
    Show {
        /// Node name.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Run one playbook on one agent and show its output live.
    Run {
        /// Node name.
        name: String,
        /// Playbook shipped with the agent (e.g. restart.yml).
        playbook: String,
        /// Variable (repeatable).
        #[arg(long = "var", value_name = "K=V")]
        vars: Vec<String>,
        /// Changeset version.
        #[arg(long)]
        changeset_version: Option<String>,
        /// Changeset URL.
        #[arg(long)]
        changeset_url: Option<String>,
        /// Changeset SHA-256.
        #[arg(long)]
        changeset_sha256: Option<String>,
        /// Output format (json: the raw events, one per line).
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show an ad-hoc job's result from the agent's journal (by the id
    /// `agents run` printed), or follow it live with --follow.
    Job {
        /// Node name.
        name: String,
        /// Job id.
        id: String,
        /// Stream the job's events until it ends.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Forget a revoked agent so its node name can enroll again (a rebuilt VM).
    Forget {
        /// Node name.
        name: String,
    },
    /// Revoke an agent: its connection closes and reconnects are refused.
    Revoke {
        /// Node name.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// "12s ago", "3m ago", "2h ago", "4d ago".
pub fn ago(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

fn s(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// A fact of the agent's last heartbeat (facts are free-form JSON).
fn fact<'a>(a: &'a AgentView, k: &str) -> Option<&'a serde_json::Value> {
    a.facts.as_ref().and_then(|f| f.get(k))
}

fn fact_str<'a>(a: &'a AgentView, k: &str) -> &'a str {
    fact(a, k).and_then(|v| v.as_str()).unwrap_or("-")
}

fn load(a: &AgentView) -> String {
    fact(a, "load")
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_f64())
        .map(|l| format!("{l:.2}"))
        .unwrap_or_else(|| "-".into())
}

fn last_seen(a: &AgentView) -> String {
    a.last_seen_secs_ago
        .map(ago)
        .unwrap_or_else(|| "never".into())
}

fn print_agent(a: &AgentView) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let mut rows: Vec<(&str, String)> = vec![
        ("name", a.name.clone()),
        ("state", a.state.as_str().into()),
        ("version", a.version.clone()),
        (
            "last seen",
            format!("{} ({})", last_seen(a), s(&a.last_seen)),
        ),
        ("address", s(&a.remote_addr).into()),
        ("first seen", a.first_seen.clone()),
        ("hostname", fact_str(a, "hostname").into()),
        ("os", fact_str(a, "os").into()),
        ("kernel", fact_str(a, "kernel").into()),
        (
            "uptime",
            fact(a, "uptime_secs")
                .and_then(|v| v.as_u64())
                .map(|u| format!("{u}s"))
                .unwrap_or("-".into()),
        ),
        ("load", load(a)),
        (
            "disk free",
            fact(a, "disk_free_bytes")
                .and_then(|v| v.as_u64())
                .map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
                .unwrap_or("-".into()),
        ),
        (
            "running jobs",
            fact(a, "running_jobs")
                .and_then(|v| v.as_array())
                .map(|j| j.len().to_string())
                .unwrap_or("-".into()),
        ),
        ("cert serial", a.cert_serial.clone()),
        ("cert sha256", a.cert_fingerprint.clone()),
        ("cert expires", a.cert_not_after.clone()),
        ("revoked", s(&a.revoked_at).into()),
    ];
    if let Some(d) = &a.duplicate_key {
        rows.push((
            "duplicate key",
            format!(
                "two processes hold this key and take turns: {} ({} takeovers, last {}); stop one",
                d.addresses.join(" and "),
                d.takeovers,
                d.last_seen
            ),
        ));
    }
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
}

pub async fn run(api: &Api, cmd: AgentsCmd) -> Result<ExitCode> {
    match cmd {
        AgentsCmd::List { output } => {
            let list: Vec<AgentView> = api
                .json(api.req(reqwest::Method::GET, "/v1/agents"))
                .await?;
            if output == Output::Json {
                print_json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new();
            t.load_preset(UTF8_BORDERS_ONLY);
            t.set_header(vec![
                "NAME",
                "STATE",
                "VERSION",
                "LAST SEEN",
                "LOAD",
                "ADDRESS",
            ]);
            for a in &list {
                t.add_row(vec![
                    a.name.clone(),
                    a.state.as_str().to_string(),
                    a.version.clone(),
                    last_seen(a),
                    load(a),
                    s(&a.remote_addr).to_string(),
                ]);
            }
            if list.is_empty() {
                println!("no agents enrolled yet: create a token with `vesemir tokens create` and run `vesemir-agent enroll` on a VM");
            } else {
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentsCmd::Show { name, output } => {
            let a: AgentView = api
                .json(api.req(reqwest::Method::GET, &format!("/v1/agents/{}", enc(&name))))
                .await?;
            if output == Output::Json {
                print_json(&a);
            } else {
                print_agent(&a);
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentsCmd::Run {
            name,
            playbook,
            vars,
            changeset_version,
            changeset_url,
            changeset_sha256,
            output,
        } => {
            let changeset = match (changeset_version, changeset_url, changeset_sha256) {
                (None, None, None) => None,
                (Some(version), Some(url), Some(sha256)) => Some(ChangesetBody {
                    version,
                    url,
                    sha256,
                    playbook: None,
                }),
                _ => anyhow::bail!("give all of --changeset-version, --changeset-url and --changeset-sha256, or none"),
            };
            let body = RunPlaybook {
                playbook,
                vars: parse_vars(&vars)?,
                changeset,
            };
            let resp = api
                .send(
                    api.stream_req(
                        reqwest::Method::POST,
                        &format!("/v1/agents/{}/run", enc(&name)),
                    )
                    .json(&body),
                )
                .await?;
            // The id comes first, so a broken stream never loses the job.
            let job_id = resp
                .headers()
                .get(JOB_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(id) = &job_id {
                let hint = format!(
                    "[{name}] job {id} started; reattach with: vesemir agents job {name} {id} --follow"
                );
                if output == Output::Json {
                    eprintln!("{hint}");
                } else {
                    println!("{hint}");
                }
            }
            let reattach = |what: String| {
                match &job_id {
                Some(id) => anyhow::anyhow!(
                    "{what}; the job goes on on the agent and its result stays in the agent's journal: \
                     reattach with `vesemir agents job {name} {id} --follow`"
                ),
                None => anyhow::anyhow!("{what}: check `vesemir agents show {name}`"),
            }
            };
            let (finished, error) = follow_events(resp, &name, output).await.map_err(|e| {
                reattach(format!(
                    "lost the connection to the controller while the job ran: {e}"
                ))
            })?;
            let Some(fin) = finished else {
                return Err(reattach(match error {
                    Some(e) => e,
                    None => "the stream ended before the job finished".into(),
                }));
            };
            if output != Output::Json {
                println!();
                println!("PLAY RECAP");
                println!("{}", crate::live::recap(&name, &fin));
                if let Some(err) = &fin.error {
                    println!("error: {err}");
                }
            }
            Ok(if fin.status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        AgentsCmd::Job {
            name,
            id,
            follow,
            output,
        } => job(api, &name, &id, follow, output).await,
        AgentsCmd::Forget { name } => {
            let _: AgentForgotten = api
                .json(api.req(
                    reqwest::Method::DELETE,
                    &format!("/v1/agents/{}", enc(&name)),
                ))
                .await?;
            println!("forgot {name}: its node name may enroll again with a new token (its old certificates stay revoked)");
            Ok(ExitCode::SUCCESS)
        }
        AgentsCmd::Revoke { name, output } => {
            let a: AgentView = api
                .json(api.req(
                    reqwest::Method::POST,
                    &format!("/v1/agents/{}/revoke", enc(&name)),
                ))
                .await?;
            if output == Output::Json {
                print_json(&a);
            } else {
                println!("revoked {name}: its connection is closed and reconnects are refused");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Response header of `POST /v1/agents/{name}/run` carrying the job id.
pub const JOB_ID_HEADER: &str = "vesemir-job-id";

/// Renders a job's NDJSON events (or prints them raw with `--output json`);
/// returns the job's outcome (its `finished` event) and the last `error`
/// message, if any.
async fn follow_events(
    resp: reqwest::Response,
    name: &str,
    output: Output,
) -> Result<(Option<JobOutcome>, Option<String>)> {
    let mut finished = None;
    let mut error = None;
    crate::live::each_line(resp, |raw, ev| {
        if let vesemir_api::Event::Error { message } = &ev.event {
            error = Some(message.clone());
        }
        if output == Output::Json {
            println!("{raw}");
            if let Some(fin) = crate::live::outcome(&ev.event) {
                finished = Some(fin);
            }
            return true;
        }
        if let Some(fin) = crate::live::render(name, &ev.event) {
            finished = Some(fin);
        }
        true
    })
    .await?;
    Ok((finished, error))
}

/// Exit code of a job's final status: 0 succeeded, 3 still running, 2 otherwise.
fn job_exit(status: &str) -> ExitCode {
    match status {
        "succeeded" => ExitCode::SUCCESS,
        "running" => ExitCode::from(3),
        _ => ExitCode::from(2),
    }
}

/// `vesemir agents job NAME ID [--follow]`.
async fn job(api: &Api, name: &str, id: &str, follow: bool, output: Output) -> Result<ExitCode> {
    let path = format!("/v1/agents/{}/jobs/{}", enc(name), enc(id));
    if !follow {
        let o: JobOutcome = api.json(api.req(reqwest::Method::GET, &path)).await?;
        if output == Output::Json {
            print_json(&o);
        } else {
            println!("job {id} on {name}: {}", o.status);
            println!("{}", crate::live::recap(name, &o));
            if let Some(err) = &o.error {
                println!("error: {err}");
            }
            if o.status == "running" {
                println!("still running: follow it with `vesemir agents job {name} {id} --follow`");
            }
        }
        return Ok(job_exit(&o.status));
    }
    if output != Output::Json {
        println!("[{name}] following job {id}");
    }
    // The journal may still say "running" for a moment after the live
    // events ended (or before they start): ask again, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let resp = api
            .send(api.stream_req(reqwest::Method::GET, &format!("{path}/events")))
            .await?;
        let (finished, error) = follow_events(resp, name, output).await.map_err(|e| {
            anyhow::anyhow!(
                "lost the connection to the controller while following job {id} ({e}); \
                 run `vesemir agents job {name} {id} --follow` again once it is back"
            )
        })?;
        let Some(fin) = finished else {
            anyhow::bail!(
                "{}; run `vesemir agents job {name} {id} --follow` again",
                error.unwrap_or_else(|| "the stream ended before the job finished".into())
            );
        };
        if fin.status == "unknown" {
            anyhow::bail!(
                "agent {name} has no record of job {id}: check the id (its journal keeps the newest 1000 jobs)"
            );
        }
        if fin.status == "running" && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        if output != Output::Json {
            println!();
            println!("PLAY RECAP");
            println!("{}", crate::live::recap(name, &fin));
            if let Some(err) = &fin.error {
                println!("error: {err}");
            }
        }
        return Ok(job_exit(&fin.status));
    }
}

/// `k=v` pairs into a map.
pub fn parse_vars(vars: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    vars.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--var {kv:?}: expected K=V"))
        })
        .collect()
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ago_reads_naturally() {
        assert_eq!(super::ago(12), "12s ago");
        assert_eq!(super::ago(125), "2m ago");
        assert_eq!(super::ago(7200), "2h ago");
        assert_eq!(super::ago(3 * 86400), "3d ago");
        assert_eq!(super::enc("a b/c"), "a%20b%2Fc");
    }
}
