//! `systemd`: drive units through `systemctl` (path from the runner config,
//! so tests can use a recording stand-in where systemd is not PID 1).

use super::process::{run_process, ProcessSpec};
use super::{ModuleOutput, SystemdArgs, TaskEnv, UnitState};
use vesemir_protocol::job::TaskStatus;

/// `systemctl` could not be started (not installed, or the runner's
/// `systemctl` path is wrong); the task fails with this message.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {}: {source}", .systemctl.display())]
struct SystemctlError {
    /// The `systemctl` the runner is configured with.
    systemctl: std::path::PathBuf,
    /// Why it did not start.
    source: std::io::Error,
}

/// Runs `systemctl args…`, streaming its output; returns (rc, stopped, stdout, stderr).
async fn systemctl(
    env: &TaskEnv<'_>,
    args: &[&str],
) -> Result<(Option<i32>, bool, String, String), SystemctlError> {
    let mut argv = vec![env.cfg.systemctl.to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let spec = ProcessSpec {
        argv,
        chdir: None,
        env: Vec::new(),
    };
    run_process(&spec, env)
        .await
        .map(|p| (p.rc, p.stopped, p.stdout, p.stderr))
        .map_err(|source| SystemctlError {
            systemctl: env.cfg.systemctl.clone(),
            source,
        })
}

/// `systemd` module.
pub(crate) async fn run(a: &SystemdArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    let mut changed = Vec::new();
    let mut out = ModuleOutput::default();
    // Runs one state-changing call; on failure returns the failed output.
    macro_rules! call {
        ($args:expr) => {{
            match systemctl(env, $args).await {
                Err(e) => return ModuleOutput::failed(e.to_string()),
                Ok((rc, stopped, so, se)) => {
                    out.rc = rc;
                    out.stdout.push_str(&so);
                    out.stderr.push_str(&se);
                    if stopped {
                        out.status = Some(TaskStatus::Failed);
                        out.stopped = true;
                        out.msg = "stopped".into();
                        return out;
                    }
                    if rc != Some(0) {
                        out.status = Some(TaskStatus::Failed);
                        out.msg = format!("systemctl {} failed (rc {:?})", $args.join(" "), rc);
                        return out;
                    }
                    changed.push($args.join(" "));
                }
            }
        }};
    }
    // Asks a yes/no question (`is-active`, `is-enabled`): true when rc is 0.
    macro_rules! ask {
        ($args:expr) => {{
            match systemctl(env, $args).await {
                Err(e) => return ModuleOutput::failed(e.to_string()),
                Ok((_, true, ..)) => {
                    let mut o = ModuleOutput::failed("stopped");
                    o.stopped = true;
                    return o;
                }
                Ok((rc, false, ..)) => rc == Some(0),
            }
        }};
    }
    if a.daemon_reload {
        call!(&["daemon-reload"]);
    }
    if let Some(name) = a.name.as_deref() {
        if let Some(want) = a.enabled {
            let is = ask!(&["is-enabled", "--quiet", name]);
            if want && !is {
                call!(&["enable", name]);
            } else if !want && is {
                call!(&["disable", name]);
            }
        }
        match a.state {
            None => {}
            Some(want @ (UnitState::Started | UnitState::Stopped)) => {
                let active = ask!(&["is-active", "--quiet", name]);
                match (want, active) {
                    (UnitState::Started, false) => call!(&["start", name]),
                    (UnitState::Stopped, true) => call!(&["stop", name]),
                    _ => {}
                }
            }
            Some(UnitState::Restarted) => call!(&["restart", name]),
            Some(UnitState::Reloaded) => call!(&["reload", name]),
        }
    }
    if changed.is_empty() {
        out.status = Some(TaskStatus::Ok);
        out.msg = "already in the wanted state".into();
    } else {
        out.status = Some(TaskStatus::Changed);
        out.msg = format!("systemctl {}", changed.join("; "));
    }
    out
}
