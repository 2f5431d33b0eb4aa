//! `vesemir deploy`, `vesemir deployments …`, `vesemir rollback`: the CLI
//! side of rolling deployments (calls in docs/API.md).
//!
//! - [`request`]: flags → the `POST /v1/deployments` body (pure).
//! - [`view`]: deployment JSON → lines and tables (pure).
//! - [`follow`]: following a deployment live until it ends.
//!
//! Exit codes: 0 the deployment succeeded (or, not following, was
//! accepted); 2 it ended failed, aborted or cancelled; 1 any error (and a
//! dry run that found problems); 130 Ctrl-C while following (the
//! deployment goes on).

pub mod follow;
pub mod request;
pub mod view;

use crate::client::Api;
use crate::{print_json, Output};
use anyhow::{anyhow, Context, Result};
use follow::{Mode, Outcome};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use vesemir_api::{DeploymentAccepted, DeploymentList, PlanView, RollbackRequest};

/// `vesemir deploy` flags.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    request: request::RequestFlags,
    /// Show the plan (hosts, batches, HAProxy servers, problems) without touching anything.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    watch: WatchFlags,
}

/// How the CLI stays with a deployment it started.
#[derive(clap::Args, Debug)]
struct WatchFlags {
    /// Print the deployment id and leave.
    #[arg(long, conflicts_with = "follow")]
    detach: bool,
    /// Follow until it ends (default on a terminal; plain lines without one).
    #[arg(long)]
    follow: bool,
    /// Idempotency-Key header (default: a new UUID per invocation, reused by retries).
    #[arg(long, value_name = "K")]
    idempotency_key: Option<String>,
    /// Output format (json: the API's JSON; with --follow, the final deployment).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// `vesemir rollback` flags.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// Application.
    #[arg(long)]
    app: String,
    /// Environment.
    #[arg(long)]
    env: String,
    #[command(flatten)]
    watch: WatchFlags,
}

/// `vesemir deployments …`.
#[derive(clap::Subcommand, Debug)]
pub enum DeploymentsCmd {
    /// Deployments, newest first.
    List {
        /// Only this application.
        #[arg(long)]
        app: Option<String>,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// Only this status (pending, running, succeeded, failed, aborted, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Skip this many (paging).
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One deployment: request, hosts, HAProxy actions.
    Show {
        /// Deployment id.
        id: String,
        /// Follow it live first, then show it.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Its log lines from every host, in order.
    Logs {
        /// Deployment id.
        id: String,
        /// Keep streaming until the deployment ends.
        #[arg(long, short)]
        follow: bool,
        /// Only lines after this sequence number (without --follow).
        #[arg(long, value_name = "SEQ", conflicts_with = "follow")]
        after: Option<u64>,
        /// Output format (json: the raw events, one per line).
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Start no new host; hosts in flight finish; it ends `cancelled`.
    Cancel {
        /// Deployment id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// A non-2xx answer as a readable error (the API's message, as the client does).
pub(crate) async fn api_error(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    // A proxy in between may answer with something else: show it raw.
    let msg = serde_json::from_str::<vesemir_api::ErrorBody>(&body)
        .map(|b| b.error.message)
        .unwrap_or(body);
    anyhow!("{} ({})", msg.trim(), status)
}

/// An error with its causes ("error sending request…: connection closed
/// before message completed"): reqwest's own message hides the cause.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Tries of a POST that creates a deployment.
const ATTEMPTS: u32 = 3;

/// POSTs `body`; on a transport error, a timeout or a gateway error tries
/// again with the same Idempotency-Key, so the controller answers the
/// deployment the first try may have created instead of a second one.
async fn submit<R: DeserializeOwned>(
    api: &Api,
    path: &str,
    body: &impl Serialize,
    key: &str,
) -> Result<(u16, R)> {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let last = attempt == ATTEMPTS;
        let problem = match api
            .req(reqwest::Method::POST, path)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let status = r.status().as_u16();
                let v = r
                    .json()
                    .await
                    .context("the controller sent a response that is not the expected JSON")?;
                return Ok((status, v));
            }
            Ok(r) if !last && matches!(r.status().as_u16(), 502..=504) => {
                format!("the controller answered {}", r.status())
            }
            Ok(r) => return Err(api_error(r).await),
            Err(e) if !last && !e.is_builder() => {
                if e.is_timeout() {
                    "no answer in time".to_string()
                } else {
                    error_chain(&e)
                }
            }
            Err(e) if e.is_connect() => {
                return Err(anyhow!(
                    "cannot connect to the controller: is `vesemir-controller serve` running? ({})",
                    error_chain(&e)
                ))
            }
            Err(e) => {
                return Err(anyhow!(
                    "request to the controller failed: {}",
                    error_chain(&e)
                ))
            }
        };
        eprintln!(
            "{problem}; trying again in {:.1}s ({}/{ATTEMPTS}, same Idempotency-Key {key})",
            delay.as_secs_f64(),
            attempt + 1
        );
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    unreachable!("the last attempt returns")
}

/// The exit code for a finished deployment.
fn exit_for(status: &str) -> ExitCode {
    match status {
        "succeeded" => ExitCode::SUCCESS,
        "failed" | "aborted" | "cancelled" => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

/// Whether to follow, and how: `--follow` or a terminal on stdout.
fn watch_mode(follow: bool, detach: bool, output: Output, tty: bool) -> Option<Mode> {
    if detach || !(follow || tty) {
        return None;
    }
    Some(match (output, tty) {
        (Output::Json, _) => Mode::Quiet,
        (Output::Table, true) => Mode::Bars,
        (Output::Table, false) => Mode::Plain,
    })
}

/// Follows `id` and reports as `vesemir deploy` does; the exit code says how it ended.
async fn follow_and_report(api: &Api, id: &str, mode: Mode, output: Output) -> Result<ExitCode> {
    match follow::follow(api, id, mode).await? {
        Outcome::Interrupted => Ok(ExitCode::from(130)),
        Outcome::Finished(d) => {
            if output == Output::Json {
                print_json(&d);
            } else {
                println!("{}", view::final_report(&d));
            }
            Ok(exit_for(&d.status))
        }
    }
}

/// After a 202 (or 200 for a known Idempotency-Key): leave or follow.
async fn accepted(
    api: &Api,
    code: u16,
    resp: DeploymentAccepted,
    w: &WatchFlags,
    key: &str,
) -> Result<ExitCode> {
    if resp.id.is_empty() {
        return Err(anyhow!(
            "the controller accepted the deployment but sent no id: {resp:?}"
        ));
    }
    let id = resp.id.clone();
    if code == 200 {
        eprintln!(
            "the controller already had this request (Idempotency-Key {key}): deployment {id}"
        );
    }
    let Some(mode) = watch_mode(
        w.follow,
        w.detach,
        w.output,
        std::io::stdout().is_terminal(),
    ) else {
        if w.output == Output::Json {
            print_json(&resp);
        } else {
            println!("{id}");
        }
        eprintln!("deployment {id} started; follow it: vesemir deployments logs {id} --follow");
        return Ok(ExitCode::SUCCESS);
    };
    if mode == Mode::Plain || mode == Mode::Bars {
        println!("deployment {id} started");
    }
    follow_and_report(api, &id, mode, w.output).await
}

fn idempotency_key(w: &WatchFlags) -> String {
    w.idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Runs `vesemir deploy`.
pub async fn deploy(api: &Api, args: DeployArgs) -> Result<ExitCode> {
    let req = request::build(&args.request, args.dry_run)?;
    let body = request::Body(&req);
    let key = idempotency_key(&args.watch);
    if args.dry_run {
        let (_, plan): (u16, PlanView) = submit(api, "/v1/deployments", &body, &key).await?;
        if args.watch.output == Output::Json {
            print_json(&plan);
        } else {
            println!("{}", view::plan(&plan));
        }
        return Ok(if plan.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let (code, resp) = submit(api, "/v1/deployments", &body, &key).await?;
    accepted(api, code, resp, &args.watch, &key).await
}

/// Runs `vesemir rollback`.
pub async fn rollback(api: &Api, args: RollbackArgs) -> Result<ExitCode> {
    let body = RollbackRequest {
        application: args.app,
        environment: args.env,
    };
    let key = idempotency_key(&args.watch);
    let (code, resp) = submit(api, "/v1/deployments/rollback", &body, &key).await?;
    accepted(api, code, resp, &args.watch, &key).await
}

/// The list query string.
fn list_path(
    app: &Option<String>,
    env: &Option<String>,
    status: &Option<String>,
    limit: u32,
    offset: u32,
) -> String {
    let mut q = vec![];
    for (k, v) in [
        ("application", app),
        ("environment", env),
        ("status", status),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", crate::agents::enc(v)));
        }
    }
    q.push(format!("limit={limit}"));
    if offset > 0 {
        q.push(format!("offset={offset}"));
    }
    format!("/v1/deployments?{}", q.join("&"))
}

/// Runs `vesemir deployments …`.
pub async fn deployments(api: &Api, cmd: DeploymentsCmd) -> Result<ExitCode> {
    let tty = std::io::stdout().is_terminal();
    let now = time::OffsetDateTime::now_utc();
    match cmd {
        DeploymentsCmd::List {
            app,
            env,
            status,
            limit,
            offset,
            output,
        } => {
            let list: DeploymentList = api
                .json(api.req(
                    reqwest::Method::GET,
                    &list_path(&app, &env, &status, limit, offset),
                ))
                .await?;
            if output == Output::Json {
                print_json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            let shown = list.deployments.len();
            if shown == 0 {
                println!("no deployments");
            } else {
                println!("{}", view::list_table(&list, now));
                let total = u64::try_from(list.total).unwrap_or(shown as u64);
                if total > (offset as u64 + shown as u64) {
                    println!(
                        "{shown} of {total} shown; more with --offset {}",
                        offset as u64 + shown as u64
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DeploymentsCmd::Show { id, follow, output } => {
            let mut code = ExitCode::SUCCESS;
            if follow {
                let mode = match (output, tty) {
                    (Output::Json, _) => Mode::Quiet,
                    (Output::Table, true) => Mode::Bars,
                    (Output::Table, false) => Mode::Plain,
                };
                match follow::follow(api, &id, mode).await? {
                    Outcome::Interrupted => return Ok(ExitCode::from(130)),
                    Outcome::Finished(d) => code = exit_for(&d.status),
                }
            }
            let d = follow::get(api, &id).await?;
            if output == Output::Json {
                print_json(&d);
            } else {
                print!("{}", view::show(&d, now));
                if follow {
                    println!("{}", view::status_line(&d));
                }
            }
            Ok(code)
        }
        DeploymentsCmd::Logs {
            id,
            follow,
            after,
            output,
        } => {
            if follow {
                let mode = match (output, tty) {
                    (Output::Json, _) => Mode::Raw,
                    (Output::Table, true) => Mode::Bars,
                    (Output::Table, false) => Mode::Plain,
                };
                return match follow::follow(api, &id, mode).await? {
                    Outcome::Interrupted => Ok(ExitCode::from(130)),
                    Outcome::Finished(d) => {
                        if output == Output::Table {
                            println!("{}", view::final_report(&d));
                        }
                        Ok(exit_for(&d.status))
                    }
                };
            }
            follow::stored_logs(api, &id, after, |raw, ev| {
                if output == Output::Json {
                    println!("{raw}");
                } else if let Some(l) = view::event_line(&ev) {
                    println!("{l}");
                }
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        DeploymentsCmd::Cancel { id, output } => {
            let v: DeploymentAccepted = api
                .json(api.req(
                    reqwest::Method::POST,
                    &format!("/v1/deployments/{}/cancel", crate::agents::enc(&id)),
                ))
                .await?;
            if output == Output::Json {
                print_json(&v);
            } else {
                println!(
                    "deployment {id} {}: no new host starts; hosts in flight finish.\nfollow it: vesemir deployments logs {id} --follow",
                    v.status.as_deref().unwrap_or("cancelling")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_is_the_default_on_a_terminal_only() {
        // (follow, detach, output, tty) → mode
        let cases = [
            (false, false, Output::Table, true, Some(Mode::Bars)),
            (false, false, Output::Table, false, None),
            (true, false, Output::Table, false, Some(Mode::Plain)),
            (true, false, Output::Json, true, Some(Mode::Quiet)),
            (false, true, Output::Table, true, None),
            (false, false, Output::Json, false, None),
        ];
        for (f, d, o, t, want) in cases {
            assert_eq!(
                watch_mode(f, d, o, t),
                want,
                "follow={f} detach={d} {o:?} tty={t}"
            );
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_for("succeeded"), ExitCode::SUCCESS);
        for s in ["failed", "aborted", "cancelled"] {
            assert_eq!(exit_for(s), ExitCode::from(2));
        }
        assert_eq!(exit_for("running"), ExitCode::FAILURE);
    }

    #[test]
    fn list_query() {
        assert_eq!(
            list_path(&None, &None, &None, 20, 0),
            "/v1/deployments?limit=20"
        );
        assert_eq!(
            list_path(&Some("pay ments".into()), &Some("prod".into()), &Some("failed".into()), 5, 10),
            "/v1/deployments?application=pay%20ments&environment=prod&status=failed&limit=5&offset=10"
        );
    }
}
