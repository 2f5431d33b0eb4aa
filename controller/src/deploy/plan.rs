//! Planning: resolve the application's hosts and the HAProxy VMs, render
//! server names, check agents and backends. A dry run stops here.

use super::request::{render_server_name, DeployRequest, ServerNameInput};
use super::Deployments;
use crate::fleet::{AgentState, Fleet};
use serde::Serialize;
use std::time::Duration;
use vesemir_protocol::haproxy::HaproxyOp;
use vesemir_protocol::job::{JobEvent, JobKind, JobOutcome, JobRequest, JobStatus};

/// A host in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedHost {
    /// Node name.
    pub name: String,
    /// Address.
    pub address: String,
    /// HAProxy server name.
    pub server_name: String,
    /// Agent state: connected, disconnected, stale, revoked, none.
    pub agent: String,
}

/// An HAProxy VM in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedVm {
    /// Node name.
    pub name: String,
    /// Agent state.
    pub agent: String,
    /// Servers of the backend on it (dry run only; empty if unknown).
    pub servers: Vec<String>,
}

/// Which hosts of a plan have the request's playbook, from their agents'
/// facts. Pure: built by [`playbook_coverage`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlaybookCoverage {
    /// The playbook named by the request.
    pub name: String,
    /// Hosts whose agent reported its playbooks without this one.
    pub missing: Vec<String>,
    /// Hosts whose copy differs from the most common one (drift).
    pub drift: Vec<PlaybookDrift>,
    /// The sha256 most hosts have.
    pub sha256: Option<String>,
    /// Hosts whose agent never reported facts (not judged).
    pub unknown: Vec<String>,
}

/// A host carrying another version of the playbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlaybookDrift {
    /// Node name.
    pub host: String,
    /// Its playbook's sha256.
    pub sha256: String,
}

impl PlaybookCoverage {
    /// The 422 message for hosts lacking the playbook.
    pub fn missing_message(&self, playbook: &str) -> String {
        format!(
            "playbook {playbook:?} is not in the playbook directory of {} host(s): {} \
             (install it there, or carry it in the changeset with changeset.playbook)",
            self.missing.len(),
            self.missing.join(", ")
        )
    }
}

/// A host and the playbooks (name, sha256) its agent reported, if any.
pub type ReportedPlaybooks = (String, Option<Vec<(String, String)>>);

/// Compares the playbook `name` across hosts: `hosts` gives each host's
/// reported playbooks (name, sha256), None when its agent never reported.
pub fn playbook_coverage(name: &str, hosts: &[ReportedPlaybooks]) -> PlaybookCoverage {
    let mut c = PlaybookCoverage {
        name: name.to_string(),
        ..Default::default()
    };
    let mut have: Vec<(&str, &str)> = Vec::new();
    for (host, books) in hosts {
        match books {
            None => c.unknown.push(host.clone()),
            Some(books) => match books.iter().find(|(n, _)| n == name) {
                None => c.missing.push(host.clone()),
                Some((_, sha)) => have.push((host, sha)),
            },
        }
    }
    // The reference version: the most common sha256 (ties: the smallest,
    // so the answer does not depend on host order).
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, sha) in &have {
        *counts.entry(sha).or_default() += 1;
    }
    let reference = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(s, _)| s.to_string());
    if let Some(r) = &reference {
        for (host, sha) in have {
            if sha != r {
                c.drift.push(PlaybookDrift {
                    host: host.to_string(),
                    sha256: sha.to_string(),
                });
            }
        }
    }
    c.sha256 = reference;
    c
}

/// The playbooks an agent last reported, from its facts.
async fn agent_playbooks(d: &Deployments, name: &str) -> Option<Vec<(String, String)>> {
    let rec = d.store.get_agent(name).await.ok()??;
    let facts = d.fleet.view(rec).facts?;
    let list = facts.get("playbooks")?.as_array()?;
    Some(
        list.iter()
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_string(),
                    p.get("sha256")?.as_str()?.to_string(),
                ))
            })
            .collect(),
    )
}

/// The plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Query sent for the hosts.
    pub query: String,
    /// Query sent for the HAProxy VMs.
    pub haproxy_query: Option<String>,
    /// Hosts in rollout order.
    pub hosts: Vec<PlannedHost>,
    /// HAProxy VMs.
    pub haproxy_vms: Vec<PlannedVm>,
    /// Everything that looks wrong.
    pub problems: Vec<String>,
    /// The request's playbook across the hosts (None when the changeset
    /// carries its own playbook).
    pub playbook: Option<PlaybookCoverage>,
}

/// Why planning failed outright.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No inventory configured.
    #[error("no inventory configured: init the controller with --chef-url/--chef-client/--chef-key or --inventory FILE")]
    NoInventory,
    /// The selector is unusable (422).
    #[error("{field}: {message}")]
    Selector {
        /// Field.
        field: &'static str,
        /// Message.
        message: String,
    },
    /// The inventory failed (Chef down, …).
    #[error("inventory lookup failed: {0}")]
    Inventory(String),
    /// A server name could not be rendered for a host.
    #[error("haproxy.server_name: {0}")]
    ServerName(String),
}

/// The user-facing state of an agent by name.
pub async fn agent_state(d: &Deployments, name: &str) -> String {
    match d.store.get_agent(name).await {
        Ok(Some(rec)) => match d.fleet.view(rec).state {
            AgentState::Connected => "connected",
            AgentState::Disconnected => "disconnected",
            AgentState::Stale => "stale",
            AgentState::Revoked => "revoked",
        }
        .to_string(),
        Ok(None) => "none".into(),
        Err(_) => "unknown".into(),
    }
}

fn selector_error(field: &'static str, e: crate::inventory::InventoryError) -> PlanError {
    use crate::inventory::InventoryError as E;
    match e {
        E::EmptySelector | E::InvalidSelector(_) | E::RawQueryUnsupported => PlanError::Selector {
            field,
            message: e.to_string(),
        },
        other => PlanError::Inventory(other.to_string()),
    }
}

/// Resolves hosts and HAProxy VMs. With `probe_backends`, asks each
/// connected HAProxy VM which servers its backend has (dry run).
pub async fn make_plan(
    d: &Deployments,
    req: &DeployRequest,
    probe_backends: bool,
) -> Result<Plan, PlanError> {
    let inv = d.inventory.as_ref().ok_or(PlanError::NoInventory)?;
    let res = inv
        .resolve(&req.selector)
        .await
        .map_err(|e| selector_error("selector", e))?;
    let mut problems = Vec::new();
    if res.hosts.is_empty() {
        problems.push(format!("no hosts match the selector ({})", res.query));
    }
    let mut hosts = Vec::with_capacity(res.hosts.len());
    for h in &res.hosts {
        let server_name = match &req.haproxy {
            Some(hp) => render_server_name(
                &hp.server_name,
                &ServerNameInput {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    fqdn: h.fqdn.clone().unwrap_or_else(|| h.name.clone()),
                    hostname: h.hostname.clone().unwrap_or_else(|| h.name.clone()),
                },
            )
            .map_err(|m| PlanError::ServerName(format!("host {}: {m}", h.name)))?,
            None => h.name.clone(),
        };
        let agent = agent_state(d, &h.name).await;
        if agent != "connected" {
            problems.push(match agent.as_str() {
                "none" => format!(
                    "{}: no agent enrolled (it will be reported unreachable)",
                    h.name
                ),
                s => format!("{}: agent {s} (it will be reported unreachable)", h.name),
            });
        }
        hosts.push(PlannedHost {
            name: h.name.clone(),
            address: h.address.clone(),
            server_name,
            agent,
        });
    }
    let playbook = if req.changeset.as_ref().is_some_and(|c| c.playbook.is_some()) {
        None
    } else {
        let mut reported = Vec::with_capacity(hosts.len());
        for h in &hosts {
            reported.push((h.name.clone(), agent_playbooks(d, &h.name).await));
        }
        let c = playbook_coverage(&req.playbook, &reported);
        if !c.missing.is_empty() {
            problems.push(c.missing_message(&req.playbook));
        }
        if !c.drift.is_empty() {
            problems.push(format!(
                "playbook {:?} differs from the most common version (sha256 {}) on: {}",
                req.playbook,
                c.sha256.as_deref().unwrap_or("?"),
                c.drift
                    .iter()
                    .map(|x| format!("{} ({})", x.host, &x.sha256[..x.sha256.len().min(12)]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Some(c)
    };
    let mut haproxy_query = None;
    let mut vms = Vec::new();
    if let Some(hp) = &req.haproxy {
        let res = inv
            .resolve(&hp.selector)
            .await
            .map_err(|e| selector_error("haproxy.selector", e))?;
        haproxy_query = Some(res.query.clone());
        if res.hosts.is_empty() {
            problems.push(format!("haproxy.selector matches no VMs ({})", res.query));
        }
        for vm in res.hosts {
            let agent = agent_state(d, &vm.name).await;
            let mut servers = Vec::new();
            if agent != "connected" {
                problems.push(format!(
                    "HAProxy VM {}: agent {agent}; its servers can't be drained",
                    vm.name
                ));
            } else if probe_backends {
                match backend_servers(&d.fleet, &vm.name, &hp.backend).await {
                    Ok(list) => {
                        for h in &hosts {
                            if !list.contains(&h.server_name) {
                                problems.push(format!(
                                    "HAProxy VM {}: backend {} has no server {} (host {})",
                                    vm.name, hp.backend, h.server_name, h.name
                                ));
                            }
                        }
                        servers = list;
                    }
                    Err(e) => problems.push(format!("HAProxy VM {}: {e}", vm.name)),
                }
            }
            vms.push(PlannedVm {
                name: vm.name,
                agent,
                servers,
            });
        }
    }
    Ok(Plan {
        query: res.query,
        haproxy_query,
        hosts,
        haproxy_vms: vms,
        problems,
        playbook,
    })
}

/// Why an HAProxy job got no outcome (a failed outcome is an `Ok`).
#[derive(Debug, thiserror::Error)]
pub enum HaproxyJobError {
    /// The VM's agent is not connected or the job could not be sent.
    #[error(transparent)]
    Dispatch(#[from] crate::fleet::DispatchError),
    /// The agent ended the stream before `Finished` (it restarted?).
    #[error("agent {0} closed the job stream without a result")]
    NoResult(String),
    /// No outcome within the timeout.
    #[error("HAProxy VM {vm} did not answer within {timeout:?}")]
    TimedOut {
        /// The HAProxy VM.
        vm: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Runs HAProxy ops on one VM through its agent; the outcome's output is
/// the typed list of replies ([`vesemir_protocol::job::JobOutput::Haproxy`]).
pub async fn haproxy_job(
    fleet: &Fleet,
    vm: &str,
    deployment_id: Option<&str>,
    actions: Vec<HaproxyOp>,
    timeout: Duration,
) -> Result<JobOutcome, HaproxyJobError> {
    let req = JobRequest {
        job_id: uuid::Uuid::now_v7().to_string(),
        deployment_id: deployment_id.map(str::to_string),
        kind: JobKind::Haproxy(actions),
    };
    let run = async {
        let mut stream = fleet.start_job(vm, &req).await?;
        loop {
            match stream.next().await? {
                Some(JobEvent::Finished(o)) => return Ok(o),
                Some(_) => {}
                None => return Err(HaproxyJobError::NoResult(vm.to_string())),
            }
        }
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| HaproxyJobError::TimedOut {
            vm: vm.to_string(),
            timeout,
        })?
}

async fn backend_servers(fleet: &Fleet, vm: &str, backend: &str) -> Result<Vec<String>, String> {
    let out = haproxy_job(
        fleet,
        vm,
        None,
        vec![HaproxyOp::ServersState {
            backend: backend.to_string(),
        }],
        Duration::from_secs(15),
    )
    .await
    .map_err(|e| e.to_string())?;
    if out.status != JobStatus::Succeeded {
        return Err(out.error.unwrap_or_else(|| "HAProxy query failed".into()));
    }
    let servers = super::orchestrator::servers_from_reply(out.output.as_ref())
        .map_err(|e| format!("HAProxy VM {vm}: {e}"))?;
    Ok(servers.into_iter().map(|s| s.name).collect())
}

/// Batches as the sliding window would start them if every host took the
/// same time (for the dry-run view).
pub fn batches(req: &DeployRequest, names: &[String]) -> Vec<Vec<String>> {
    let total = names.len();
    // The same window the orchestrator runs: with HAProxy, max_unavailable
    // bounds a batch as well as concurrency.
    super::rollout::dry_run_batches(
        names,
        req.concurrency_for(total),
        req.haproxy.as_ref().map(|_| req.max_unavailable_for(total)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, books: Option<&[(&str, &str)]>) -> ReportedPlaybooks {
        (
            name.to_string(),
            books.map(|b| {
                b.iter()
                    .map(|(n, s)| (n.to_string(), s.to_string()))
                    .collect()
            }),
        )
    }

    #[test]
    fn coverage_lists_missing_drift_and_unknown() {
        let hosts = [
            host("a", Some(&[("deploy.yml", "11"), ("x.yml", "00")])),
            host("b", Some(&[("deploy.yml", "11")])),
            host("c", Some(&[("deploy.yml", "22")])),
            host("d", Some(&[("x.yml", "00")])),
            host("e", None),
        ];
        let c = playbook_coverage("deploy.yml", &hosts);
        assert_eq!(c.missing, ["d"]);
        assert_eq!(c.unknown, ["e"]);
        assert_eq!(c.sha256.as_deref(), Some("11"));
        assert_eq!(
            c.drift,
            [PlaybookDrift {
                host: "c".into(),
                sha256: "22".into()
            }]
        );
        assert!(c.missing_message("deploy.yml").contains("1 host(s): d"));
        // A tie picks the same reference whatever the order.
        let tie = [
            host("a", Some(&[("p.yml", "bb")])),
            host("b", Some(&[("p.yml", "aa")])),
        ];
        let rev = [tie[1].clone(), tie[0].clone()];
        assert_eq!(
            playbook_coverage("p.yml", &tie).sha256,
            playbook_coverage("p.yml", &rev).sha256
        );
    }
}
