//! `vesemir-agent playbook check|run`: local use, no controller.
//!
//! Output looks like `ansible-playbook`'s: a header per task, each output
//! line prefixed (`| ` stdout, `! ` stderr, `> ` runner), a status line per
//! task and a recap. Exit codes: 0 succeeded, 2 failed, 3 interrupted
//! (journal), 4 still running elsewhere (journal), 64 invalid playbook or
//! usage, 74 journal unusable, 130 cancelled.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vesemir_protocol::job::{
    Changeset, JobEvent, JobOutcome, JobStatus, LogStream, PlaybookJob, TaskStatus,
};

use super::{lint_playbook, local_facts, run_job, run_playbook_file, RunnerConfig};
use crate::journal::Journal;

/// Exit code for an invalid playbook or invalid arguments (EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code when the journal cannot be used (EX_IOERR).
const EX_IOERR: u8 = 74;

/// `vesemir-agent playbook …`
#[derive(Debug, clap::Subcommand)]
pub enum PlaybookCommand {
    /// Parse, type and template-check a playbook without running it.
    Check {
        /// The playbook file.
        file: PathBuf,
        /// A variable, `name=value` (repeatable).
        #[arg(long = "var", value_name = "K=V")]
        vars: Vec<String>,
    },
    /// Run a playbook on this machine, printing live output and the recap.
    Run {
        /// The playbook file.
        file: PathBuf,
        /// A variable, `name=value` (repeatable).
        #[arg(long = "var", value_name = "K=V")]
        vars: Vec<String>,
        /// Changeset artifact URL (with --changeset-sha256 and --changeset-version).
        #[arg(long)]
        changeset_url: Option<String>,
        /// Changeset artifact SHA-256, hex.
        #[arg(long)]
        changeset_sha256: Option<String>,
        /// Changeset version label.
        #[arg(long)]
        changeset_version: Option<String>,
        /// The `systemctl` to call (default: `systemctl` on PATH).
        #[arg(long, value_name = "PATH")]
        systemctl: Option<PathBuf>,
        /// Job id (default: a fresh UUID).
        #[arg(long, value_name = "ID")]
        job_id: Option<String>,
        /// Run through the job journal in DIR: a job id already run is not
        /// run again, and a job left running by a crash reports `interrupted`.
        #[arg(long, value_name = "DIR")]
        journal_dir: Option<PathBuf>,
    },
}

/// A `--var` that is not `name=value`.
#[derive(Debug, thiserror::Error)]
#[error("--var {0}")]
struct BadVar(#[from] vesemir_daemon::BadKeyValue);

/// `--var K=V` through the one K=V parser of the workspace.
fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>, BadVar> {
    vars.iter()
        .map(|kv| {
            let (k, v) = vesemir_daemon::parse_key_value(kv)?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EX_USAGE)
}

/// Runs a `playbook` subcommand; the binary's `main` calls this.
pub async fn main(cmd: PlaybookCommand) -> ExitCode {
    let mut cfg = RunnerConfig {
        facts: local_facts(),
        ..RunnerConfig::default()
    };
    match cmd {
        PlaybookCommand::Check { file, vars } => {
            let vars = match parse_vars(&vars) {
                Ok(v) => v,
                Err(e) => return usage(e),
            };
            match lint_playbook(&file, &vars, &cfg) {
                Ok(()) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => usage(e),
            }
        }
        PlaybookCommand::Run {
            file,
            vars,
            changeset_url,
            changeset_sha256,
            changeset_version,
            systemctl,
            job_id,
            journal_dir,
        } => {
            let vars = match parse_vars(&vars) {
                Ok(v) => v,
                Err(e) => return usage(e),
            };
            let changeset =
                match (changeset_url, changeset_sha256, changeset_version) {
                    (None, None, None) => None,
                    (Some(url), Some(sha256), Some(version)) => Some(Changeset {
                        version,
                        url,
                        sha256,
                        playbook: None,
                    }),
                    _ => return usage(
                        "give all of --changeset-url, --changeset-sha256 and --changeset-version",
                    ),
                };
            if let Some(s) = systemctl {
                cfg.systemctl = s;
            }
            let job_id = job_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            run(cfg, &file, job_id, vars, changeset, journal_dir).await
        }
    }
}

async fn run(
    mut cfg: RunnerConfig,
    file: &Path,
    job_id: String,
    vars: BTreeMap<String, String>,
    changeset: Option<Changeset>,
    journal_dir: Option<PathBuf>,
) -> ExitCode {
    // Refuse a broken playbook before touching the journal.
    if let Err(e) = super::check_playbook(file, &vars, changeset.as_ref(), &cfg) {
        return usage(e);
    }
    let journal = match &journal_dir {
        None => None,
        Some(d) => match Journal::open(d) {
            Ok(j) => Some(j),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EX_IOERR);
            }
        },
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let job = PlaybookJob {
        playbook: name.clone(),
        vars,
        changeset,
    };
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signals = tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        eprintln!("\ncancelling…");
        on_signal.cancel();
    });
    let (tx, rx) = mpsc::channel(256);
    let printer = tokio::spawn(print_events(rx, format!("{name} ({job_id})")));
    let outcome = match &journal {
        Some(j) => {
            cfg.playbook_dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            run_job(&cfg, j, &job_id, &job, tx, cancel).await
        }
        None => run_playbook_file(&cfg, file, &job_id, &job, tx, cancel).await,
    };
    let _ = printer.await;
    signals.abort();
    ExitCode::from(match outcome.status {
        JobStatus::Succeeded => 0,
        JobStatus::Failed | JobStatus::Unknown => 2,
        JobStatus::Interrupted => 3,
        JobStatus::Running => 4,
        JobStatus::Cancelled => 130,
    })
}

fn header(kind: &str, title: &str) -> String {
    let head = format!("{kind} [{title}] ");
    let stars = 72usize.saturating_sub(head.chars().count()).max(3);
    format!("{head}{}", "*".repeat(stars))
}

async fn print_events(mut rx: mpsc::Receiver<JobEvent>, title: String) {
    let mut out = std::io::stdout();
    while let Some(ev) = rx.recv().await {
        let text = match ev {
            JobEvent::Started { job_id, replay } => {
                if replay {
                    format!("job {job_id} was received before; reporting its recorded result, not running it again")
                } else {
                    header("PLAY", &title)
                }
            }
            JobEvent::TaskStarted { name, .. } => format!("\n{}", header("TASK", &name)),
            JobEvent::Log { stream, line, .. } => {
                let p = match stream {
                    LogStream::Stdout => "|",
                    LogStream::Stderr => "!",
                    LogStream::Runner => ">",
                };
                format!("  {p} {line}")
            }
            JobEvent::TaskResult(r) => {
                let word = match r.status {
                    TaskStatus::Ok => "ok",
                    TaskStatus::Changed => "changed",
                    TaskStatus::Failed => "failed",
                    TaskStatus::Skipped => "skipping",
                };
                let rc = r.rc.map(|c| format!(" rc={c}")).unwrap_or_default();
                format!("{word}: [localhost] ({}ms{rc}) {}", r.duration_ms, r.msg)
            }
            JobEvent::Finished(o) => recap(&o),
        };
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

fn recap(o: &JobOutcome) -> String {
    let s = o.stats;
    let mut t = format!(
        "\n{}\nlocalhost : ok={} changed={} failed={} skipped={}\njob {}: {}",
        header("PLAY RECAP", &o.job_id).replacen("PLAY RECAP [", "PLAY RECAP [job ", 1),
        s.ok,
        s.changed,
        s.failed,
        s.skipped,
        o.job_id,
        o.status.as_str()
    );
    if let Some(e) = &o.error {
        t.push_str(&format!("\nerror: {e}"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_parse() {
        let v = parse_vars(&["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(v["b"], "x=y");
        assert_eq!(v["c"], "");
        assert!(parse_vars(&["nope".into()]).is_err());
        assert!(parse_vars(&["=v".into()]).is_err());
    }
}
