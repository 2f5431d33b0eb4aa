//! The benchmark figures of `bench/RESULTS.md`, in groups that share their
//! setup. Each group writes its numbers to `target/bench/<mode>/<group>.json`
//! as soon as it has them, so an interrupted `bench/run` resumes where it
//! stopped (`--fresh` starts over); [`render`] turns the JSON files into
//! the Markdown report.

use crate::harness::{
    blocking, cpu_time, deploy_body, hosts, init_controller, rss_bytes, Api, InvHost,
};
use crate::sim::{enroll_all, IdentityCache, SimFleet, SimOptions};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vesemir_testkit::fleet::{bin, free_port, wait_for, Agent, Controller, Proc};

/// Sizes and repetitions of one `bench/run`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `quick` or `full` (names the results dir).
    pub mode: &'static str,
    /// Repetitions of each timed figure (median, min, max over them).
    pub runs: usize,
    /// Real agent processes (the issue: 100).
    pub real: usize,
    /// Simulated fleet of the middle size (1,000).
    pub sim_mid: usize,
    /// Simulated fleet of the large size (10,000).
    pub sim_large: usize,
    /// Enrollment storm size (1,000) and agents enrolling at once (64).
    pub storm: usize,
    /// Seconds a CPU sample of an idle controller lasts.
    pub idle_window: Duration,
    /// How long the real agent idles for its footprint (60 s).
    pub agent_idle: Duration,
    /// Chef nodes (10,000).
    pub chef_nodes: usize,
}

impl Plan {
    /// The figures of the issue.
    pub fn full(runs: usize) -> Plan {
        Plan {
            mode: "full",
            runs,
            real: 100,
            sim_mid: 1000,
            sim_large: 10_000,
            storm: 1000,
            idle_window: Duration::from_secs(6),
            agent_idle: Duration::from_secs(60),
            chef_nodes: 10_000,
        }
    }

    /// One run each at small sizes, for development.
    pub fn quick() -> Plan {
        Plan {
            mode: "quick",
            runs: 1,
            real: 20,
            sim_mid: 200,
            sim_large: 1000,
            storm: 200,
            // VESEMIR_BENCH_IDLE_SECS: longer windows when the idle cost is
            // what is being worked on (3 s is shorter than a heartbeat).
            idle_window: Duration::from_secs(
                std::env::var("VESEMIR_BENCH_IDLE_SECS")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(3),
            ),
            agent_idle: Duration::from_secs(10),
            chef_nodes: 1000,
        }
    }
}

/// The groups, in the order `bench/run` runs them.
pub const GROUPS: &[&str] = &[
    "real",
    "ansible",
    "sim-mid",
    "enroll",
    "sim-large",
    "ansible-rolling",
    "chef",
];

/// Runs of the Ansible rolling playbook: each takes minutes here, so at
/// most 2 (the report says so).
pub fn ansible_rolling_runs(plan: &Plan) -> usize {
    plan.runs.min(2)
}

/// Min, median and max of some measurements.
pub fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    if v.is_empty() {
        return json!(null);
    }
    json!({"median": v[v.len() / 2], "min": v[0], "max": v[v.len() - 1], "n": v.len(), "all": v})
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Where a group's JSON goes.
pub fn result_path(target: &Path, plan: &Plan, group: &str) -> PathBuf {
    target.join(plan.mode).join(format!("{group}.json"))
}

/// Runs one group and writes its JSON.
pub async fn run_group(group: &str, plan: &Plan, target: &Path) -> Result<Value> {
    let started = Instant::now();
    let load = load_average();
    let mut v = match group {
        "real" => real(plan).await?,
        "ansible" => ansible(plan, false).await?,
        "ansible-rolling" => ansible(plan, true).await?,
        "sim-mid" => sim_mid(plan).await?,
        "enroll" => enroll_storm(plan).await?,
        "sim-large" => sim_large(plan, target).await?,
        "chef" => chef(plan).await?,
        other => bail!("unknown group {other}; groups: {}", GROUPS.join(", ")),
    };
    v["load_at_start"] = json!(load);
    v["load_at_end"] = json!(load_average());
    v["took_s"] = json!(secs(started.elapsed()));
    v["at"] = json!(now_rfc3339());
    let path = result_path(target, plan, group);
    std::fs::create_dir_all(path.parent().expect("dir"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&v)?)?;
    Ok(v)
}

/// `/proc/loadavg`'s three numbers.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A minimal HAProxy with one backend of `servers` (no health checks: the
/// servers are names for the runtime API, nothing serves behind them).
pub struct Lb {
    /// The process.
    pub proc: Proc,
    /// Admin socket.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts HAProxy with backend `app` holding `servers`.
pub fn start_haproxy(servers: &[String]) -> Result<Lb> {
    let dir = tempfile::Builder::new()
        .prefix("vesemir-bench-lb-")
        .tempdir()?;
    let socket = dir.path().join("haproxy.sock");
    let mut cfg = format!(
        "global\n    stats socket {} mode 600 level admin\n    stats timeout 30s\n    maxconn 4000\n\
         defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind 127.0.0.1:{}\n    default_backend app\n\
         backend app\n    balance roundrobin\n",
        socket.display(),
        free_port().expect("free port")
    );
    for s in servers {
        cfg.push_str(&format!("    server {s} 127.0.0.1:9 weight 100\n"));
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let proc = Proc::spawn("haproxy", cmd, dir.path().join("haproxy.log"))?;
    wait_for("haproxy admin socket", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    })?;
    Ok(Lb {
        proc,
        socket,
        _dir: dir,
    })
}

/// Counts `show servers state app` rows whose admin state is not 0
/// (drain/maint): what a rolling deploy must leave at 0.
fn servers_out(socket: &Path) -> Result<usize> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.write_all(b"show servers state app\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 7)
        .filter(|l| l.split_whitespace().nth(6) != Some("0"))
        .count())
}

fn haproxy_spec() -> Value {
    json!({"backend": "app", "selector": {"tags": ["role:lb"]}, "degradation_seconds": 5, "weights": [100]})
}

/// Enrolls and starts real agents (release `vesemir-agent` processes) with
/// the bench playbooks; `lb` gets the HAProxy admin socket.
fn real_agents(c: &Controller, names: &[String], lb: Option<(&str, &Path)>) -> Result<Vec<Agent>> {
    let all = names.len() + usize::from(lb.is_some());
    let token = c.enrollment_token(all as u32)?;
    let playbooks = crate::harness::bench_dir().join("playbooks");
    let mut agents = Vec::new();
    let mut enroll = |name: &str, extra: Vec<String>| -> Result<()> {
        let mut args = vec![
            "--playbook-dir".to_string(),
            playbooks.display().to_string(),
        ];
        args.extend(extra);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = c.enroll(name, &token, &a);
        ensure!(
            out.status.success(),
            "enroll {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        agents.push(Agent::start(c.agent_dir(name), name)?);
        Ok(())
    };
    if let Some((name, socket)) = lb {
        enroll(
            name,
            vec!["--haproxy-socket".into(), socket.display().to_string()],
        )?;
    }
    for n in names {
        enroll(n, vec![])?;
    }
    Ok(agents)
}

async fn wait_agents(api: &Api, n: usize, timeout: Duration) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let c = api.metric_connected().await.unwrap_or(0);
        if c >= n {
            return Ok(t.elapsed());
        }
        if t.elapsed() > timeout {
            bail!("{c} of {n} agents connected after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 100 real agents: fan-out of a no-op, the rolling deploy with HAProxy,
/// and one agent's idle footprint.
async fn real(plan: &Plan) -> Result<Value> {
    let n = plan.real;
    let mut inv = hosts("web", n, "app:web");
    inv.push(InvHost {
        name: "lb-1".into(),
        tags: vec!["role:lb".into()],
    });
    let names: Vec<String> = inv[..n].iter().map(|h| h.name.clone()).collect();
    let lb = start_haproxy(&names)?;
    let mut c = init_controller(&inv, 10, "7d")?;
    blocking(|| c.start())?;
    let api = Api::of(&c);
    let agents = blocking(|| real_agents(&c, &names, Some(("lb-1", &lb.socket))))?;
    wait_agents(&api, n + 1, Duration::from_secs(60)).await?;

    // Footprint of one idle agent.
    let pid = agents[1].proc.pid();
    let cpu0 = cpu_time(pid).context("agent cpu")?;
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < plan.agent_idle {
        rss.push(rss_bytes(pid).unwrap_or(0) as f64 / 1_048_576.0);
        tokio::time::sleep(plan.agent_idle / 6).await;
    }
    let cpu = cpu_time(pid).context("agent cpu")? - cpu0;
    let idle_for = t0.elapsed();
    let cpu_pct = cpu.as_secs_f64() / idle_for.as_secs_f64() * 100.0;
    let stripped = strip_size(&bin("vesemir-agent"))?;

    let mut fanout = Vec::new();
    for _ in 0..plan.runs {
        let (took, _) = api
            .deploy_and_wait(
                deploy_body("fanout", "app:web", "100%".into(), "noop.yml", json!({})),
                Duration::from_secs(120),
            )
            .await?;
        fanout.push(secs(took));
    }
    let mut rolling = Vec::new();
    let mut max_out = 0;
    for _ in 0..plan.runs {
        let mut body = deploy_body(
            "rolling",
            "app:web",
            10.into(),
            "sleep.yml",
            json!({"seconds": "1"}),
        );
        body["haproxy"] = haproxy_spec();
        let (took, d) = api.deploy_and_wait(body, Duration::from_secs(600)).await?;
        ensure!(
            d["haproxy_actions"].as_array().map(Vec::len).unwrap_or(0) >= n,
            "no HAProxy actions recorded"
        );
        max_out = max_out.max(servers_out(&lb.socket)?);
        rolling.push(secs(took));
    }
    let ideal = n.div_ceil(10) as f64;
    let ctl_rss = rss_bytes(c.proc.as_ref().expect("started").pid()).unwrap_or(0);
    drop(agents);
    Ok(json!({
        "agents": n,
        "fanout_s": summary(fanout),
        "rolling_haproxy_s": summary(rolling.clone()),
        "rolling_ideal_s": ideal,
        "rolling_ratio": summary(rolling.iter().map(|t| t / ideal).collect()),
        "servers_left_out_of_rotation": max_out,
        "agent_idle_rss_mib": summary(rss),
        "agent_idle_cpu_pct": cpu_pct,
        "agent_idle_s": secs(idle_for),
        "agent_stripped_bytes": stripped,
        "agent_unstripped_bytes": std::fs::metadata(bin("vesemir-agent"))?.len(),
        "controller_rss_mib_after": ctl_rss as f64 / 1_048_576.0,
    }))
}

fn strip_size(path: &Path) -> Result<u64> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("agent");
    std::fs::copy(path, &out)?;
    let st = Command::new("strip").arg(&out).status()?;
    ensure!(st.success(), "strip failed");
    Ok(std::fs::metadata(&out)?.len())
}

/// An sshd on a loopback port with generated host and user keys, and an
/// inventory of `n` aliases of localhost plus `lb`.
struct Ssh {
    _proc: Proc,
    dir: tempfile::TempDir,
    inventory: PathBuf,
}

fn keygen(path: &Path) -> Result<()> {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .context("ssh-keygen (apt-get install -y openssh-client)")?;
    ensure!(st.success(), "ssh-keygen failed");
    Ok(())
}

fn start_sshd(names: &[String]) -> Result<Ssh> {
    let sshd = Path::new("/usr/sbin/sshd");
    ensure!(
        sshd.exists(),
        "/usr/sbin/sshd is missing: apt-get install -y openssh-server (bench/run does)"
    );
    std::fs::create_dir_all("/run/sshd")?;
    let dir = tempfile::Builder::new().prefix("vb-ssh-").tempdir()?;
    let d = dir.path();
    keygen(&d.join("host_key"))?;
    keygen(&d.join("user_key"))?;
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys"))?;
    let port = free_port().expect("free port");
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n\
             UsePAM no\nMaxStartups 500\nMaxSessions 500\nLogLevel ERROR\n",
            hk = d.join("host_key").display(),
            d = d.display()
        ),
    )?;
    let mut cmd = Command::new(sshd);
    cmd.args(["-D", "-e", "-f"]).arg(d.join("sshd_config"));
    let proc = Proc::spawn("sshd", cmd, d.join("sshd.log"))?;
    wait_for("sshd listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })?;
    let mut inv = String::from("[web]\n");
    for n in names {
        inv.push_str(&format!("{n} ansible_host=127.0.0.1\n"));
    }
    inv.push_str(&format!(
        "[lbs]\nlb ansible_host=127.0.0.1\n[all:vars]\nansible_port={port}\nansible_user=root\n\
         ansible_ssh_private_key_file={}\nansible_python_interpreter=/usr/bin/python3\n\
         ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'\n",
        d.join("user_key").display()
    ));
    let inventory = d.join("hosts.ini");
    std::fs::write(&inventory, inv)?;
    Ok(Ssh {
        _proc: proc,
        dir,
        inventory,
    })
}

/// An `ansible`/`ansible-playbook` command with a fresh SSH control-path
/// dir (cold connections, as a first run of the day has).
fn ansible_cmd(ssh: &Ssh, program: &str, run: usize) -> Result<Command> {
    let cp = ssh.dir.path().join(format!("cp{run}"));
    std::fs::create_dir_all(&cp)?;
    let mut cmd = Command::new(program);
    cmd.arg("-i")
        .arg(&ssh.inventory)
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &cp)
        .env("ANSIBLE_LOCAL_TEMP", ssh.dir.path().join("tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_DEPRECATION_WARNINGS", "False");
    Ok(cmd)
}

/// The HAProxy admin-socket client the Ansible playbook runs on the LB host.
const HACTL: &str = r#"import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode())
out = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    out += b
if out.strip():
    sys.exit("haproxy said: " + out.decode())
"#;

/// Ansible over SSH: the ad-hoc no-op and the rolling playbook.
async fn ansible(plan: &Plan, rolling_only: bool) -> Result<Value> {
    let n = plan.real;
    let names: Vec<String> = hosts("web", n, "app:web")
        .into_iter()
        .map(|h| h.name)
        .collect();
    let ssh = blocking(|| start_sshd(&names))?;
    let lb = start_haproxy(&names)?;
    let hactl = ssh.dir.path().join("hactl.py");
    std::fs::write(&hactl, HACTL)?;
    let version = Command::new("ansible")
        .arg("--version")
        .output()
        .context("ansible is not installed: apt-get install -y ansible-core")?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();

    let mut adhoc = Vec::new();
    for run in 0..if rolling_only { 0 } else { plan.runs } {
        let mut cmd = ansible_cmd(&ssh, "ansible", run)?;
        cmd.args(["web", "-m", "command", "-a", "true", "-f", "50"]);
        let t = Instant::now();
        let out = blocking(|| cmd.output())?;
        let took = t.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        let ok = text.matches("CHANGED").count();
        ensure!(
            out.status.success() && ok == n,
            "ansible ad-hoc: {ok} of {n} changed:\n{}{}",
            text.lines().take(20).collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
        adhoc.push(secs(took));
    }

    let playbook = ssh.dir.path().join("rolling.yml");
    std::fs::write(
        &playbook,
        format!(
            "- hosts: web\n  serial: 10\n  gather_facts: false\n  tasks:\n\
             \x20   - name: disable in haproxy\n      delegate_to: lb\n      command: python3 {h} {s} \"set server app/{{{{ inventory_hostname }}}} state maint\"\n\
             \x20   - name: work\n      command: sleep 1\n\
             \x20   - name: enable in haproxy\n      delegate_to: lb\n      command: python3 {h} {s} \"set server app/{{{{ inventory_hostname }}}} state ready\"\n",
            h = hactl.display(),
            s = lb.socket.display()
        ),
    )?;
    let mut rolling = Vec::new();
    for run in 0..if rolling_only {
        ansible_rolling_runs(plan)
    } else {
        0
    } {
        let mut cmd = ansible_cmd(&ssh, "ansible-playbook", 100 + run)?;
        cmd.args(["-f", "50"]).arg(&playbook);
        let t = Instant::now();
        let out = blocking(|| cmd.output())?;
        let took = t.elapsed();
        ensure!(
            out.status.success(),
            "ansible-playbook rolling failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            servers_out(&lb.socket)? == 0,
            "servers left out of rotation"
        );
        rolling.push(secs(took));
    }
    let ideal = n.div_ceil(10) as f64;
    Ok(json!({
        "hosts": n,
        "ansible_version": version,
        "adhoc_s": summary(adhoc),
        "rolling_s": summary(rolling.clone()),
        "rolling_ideal_s": ideal,
        "rolling_ratio": summary(rolling.iter().map(|t| t / ideal).collect()),
    }))
}

fn sim_options(c: &Controller, ca_pem: &str, cache: Option<IdentityCache>) -> SimOptions {
    SimOptions {
        controller: c.quic,
        server_name: "127.0.0.1".into(),
        agents_per_endpoint: 2500,
        reconnect_base: Duration::from_secs(1),
        reconnect_cap: Duration::from_secs(60),
        cache,
        ca_pem: ca_pem.to_string(),
    }
}

/// Controller RSS and CPU share while `fleet` idles (heartbeats only).
async fn idle_sample(pid: u32, plan: &Plan) -> Result<Value> {
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..plan.runs.max(3) {
        let (c0, t0) = (cpu_time(pid).context("cpu")?, Instant::now());
        tokio::time::sleep(plan.idle_window).await;
        let used = cpu_time(pid).context("cpu")? - c0;
        cpu.push(used.as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0);
        rss.push(rss_bytes(pid).unwrap_or(0) as f64 / 1_048_576.0);
    }
    Ok(json!({"rss_mib": summary(rss), "cpu_pct_of_one_core": summary(cpu)}))
}

/// 1,000 simulated hosts: fan-out, rolling at 100 with HAProxy, idle cost.
async fn sim_mid(plan: &Plan) -> Result<Value> {
    let n = plan.sim_mid;
    let mut inv = hosts("sim", n, "app:sim");
    inv.push(InvHost {
        name: "lb-1".into(),
        tags: vec!["role:lb".into()],
    });
    let names: Vec<String> = inv[..n].iter().map(|h| h.name.clone()).collect();
    let lb = start_haproxy(&names)?;
    let mut c = init_controller(&inv, 10, "7d")?;
    blocking(|| c.start())?;
    let api = Api::of(&c);
    let pid = c.proc.as_ref().expect("started").pid();
    let _lb_agent = blocking(|| real_agents(&c, &[], Some(("lb-1", &lb.socket))))?;
    let ca_pem = std::fs::read_to_string(c.ca())?;
    let token = api.enrollment_token(n).await?;
    let (ids, rep) = enroll_all(c.quic, &ca_pem, &token, &names, 64, None).await?;
    ensure!(
        rep.refused.is_empty(),
        "refused: {:?}",
        &rep.refused[..rep.refused.len().min(5)]
    );
    let idle0 = idle_sample(pid, plan).await?;
    let fleet = SimFleet::start(sim_options(&c, &ca_pem, None), ids)?;
    let connect = fleet
        .wait_connected(n, Duration::from_secs(120))
        .await
        .map_err(anyhow::Error::msg)?;
    wait_agents(&api, n + 1, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = idle_sample(pid, plan).await?;

    let mut fanout = Vec::new();
    for _ in 0..plan.runs {
        let (took, _) = api
            .deploy_and_wait(
                deploy_body("fanout", "app:sim", "100%".into(), "noop.yml", json!({})),
                Duration::from_secs(120),
            )
            .await?;
        fanout.push(secs(took));
    }
    let conc = (n / 10).max(1);
    let mut rolling = Vec::new();
    let mut max_running = 0;
    for _ in 0..plan.runs {
        fleet.stats.reset_max_running();
        let mut body = deploy_body(
            "rolling",
            "app:sim",
            conc.into(),
            "sleep.yml",
            json!({"seconds": "1", "lines": "5"}),
        );
        body["haproxy"] = haproxy_spec();
        let (took, _) = api.deploy_and_wait(body, Duration::from_secs(600)).await?;
        ensure!(
            servers_out(&lb.socket)? == 0,
            "servers left out of rotation"
        );
        max_running = max_running.max(fleet.stats.max_running_jobs.load(Ordering::Relaxed));
        rolling.push(secs(took));
    }
    let ideal = n.div_ceil(conc) as f64;
    let errors = fleet.stats.connection_errors.load(Ordering::Relaxed);
    fleet.stop().await;
    Ok(json!({
        "agents": n,
        "connect_all_s": secs(connect),
        "fanout_s": summary(fanout),
        "rolling_concurrency": conc,
        "rolling_haproxy_s": summary(rolling.clone()),
        "rolling_ideal_s": ideal,
        "rolling_ratio": summary(rolling.iter().map(|t| t / ideal).collect()),
        "rolling_max_jobs_at_once": max_running,
        "idle_0": idle0,
        "idle_n": idle,
        "sim_connection_errors": errors,
    }))
}

/// Enrollment storm: `storm` agents, 64 at once, on a fresh controller each run.
async fn enroll_storm(plan: &Plan) -> Result<Value> {
    let n = plan.storm;
    let mut times = Vec::new();
    let mut refused = 0;
    let mut locked = false;
    for _ in 0..plan.runs {
        let inv = hosts("storm", n, "app:storm");
        let mut c = init_controller(&inv, 10, "7d")?;
        blocking(|| c.start())?;
        let api = Api::of(&c);
        let ca_pem = std::fs::read_to_string(c.ca())?;
        let token = api.enrollment_token(n).await?;
        let names: Vec<String> = inv.iter().map(|h| h.name.clone()).collect();
        let (_, rep) = enroll_all(c.quic, &ca_pem, &token, &names, 64, None).await?;
        refused += rep.refused.len();
        times.push(secs(rep.elapsed));
        locked |= c
            .proc
            .as_ref()
            .expect("started")
            .log_text()
            .contains("database is locked");
    }
    Ok(json!({
        "agents": n, "in_flight": 64,
        "time_s": summary(times),
        "refusals_total": refused,
        "database_is_locked_in_log": locked,
    }))
}

/// A controller whose data dir persists under `target/bench/`, so the
/// 10,000 simulated identities it enrolled are reused by the next run.
struct Persistent {
    dir: PathBuf,
    proc: Option<Proc>,
    api: Api,
    quic: std::net::SocketAddr,
    starts: usize,
}

impl Persistent {
    fn open(root: &Path, n: usize) -> Result<Persistent> {
        let dir = root.join("controller");
        let inv = hosts("sim", n, "app:sim");
        if !dir.join("controller.toml").exists() {
            std::fs::create_dir_all(root)?;
            let out = Command::new(bin("vesemir-controller"))
                .args(["init", "--data-dir"])
                .arg(&dir)
                .args([
                    "--api-listen",
                    "127.0.0.1:1",
                    "--quic-listen",
                    "127.0.0.1:1",
                ])
                .output()?;
            ensure!(
                out.status.success(),
                "init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        crate::harness::write_inventory(&root.join("inventory.toml"), &inv)?;
        let token = std::fs::read_to_string(dir.join("admin.token"))?
            .trim()
            .to_string();
        let mut p = Persistent {
            dir,
            proc: None,
            api: Api::of_url("http://127.0.0.1:1", &token),
            quic: "127.0.0.1:1".parse()?,
            starts: 0,
        };
        p.rewrite_config(root)?;
        Ok(p)
    }

    /// Fresh ports each start (the CA and identities don't depend on them).
    fn rewrite_config(&mut self, root: &Path) -> Result<()> {
        let (api_port, quic_port) = (
            free_port().expect("free port"),
            free_port().expect("free port"),
        );
        let path = self.dir.join("controller.toml");
        let text = std::fs::read_to_string(&path)?;
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| {
                !["api_listen", "quic_listen", "inventory", "extra_playbooks"]
                    .iter()
                    .any(|k| l.starts_with(&format!("{k} =")))
            })
            .map(str::to_string)
            .collect();
        lines.insert(0, format!("api_listen = \"127.0.0.1:{api_port}\""));
        lines.insert(0, format!("quic_listen = \"127.0.0.1:{quic_port}\""));
        lines.insert(
            0,
            format!(
                "inventory = {:?}",
                root.join("inventory.toml").display().to_string()
            ),
        );
        std::fs::write(&path, lines.join("\n") + "\n")?;
        self.api = Api::of_url(&format!("http://127.0.0.1:{api_port}"), &self.api.token);
        self.quic = format!("127.0.0.1:{quic_port}").parse()?;
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        self.starts += 1;
        let mut cmd = Command::new(bin("vesemir-controller"));
        cmd.args(["serve", "--config"])
            .arg(self.dir.join("controller.toml"))
            .env(
                "RUST_LOG",
                std::env::var("VESEMIR_BENCH_CONTROLLER_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let log = self.dir.join(format!("serve-{}.log", self.starts));
        self.proc = Some(Proc::spawn("controller", cmd, log)?);
        let url = format!("{}/readyz", self.api.url);
        wait_for("controller /readyz", Duration::from_secs(60), || {
            vesemir_testkit::fleet::http_get_status(&url).filter(|s| *s == 200)
        })?;
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().expect("started").pid()
    }
}

/// 10,000 simulated agents: idle cost at 0 and N, fan-out, reconnect storm.
async fn sim_large(plan: &Plan, target: &Path) -> Result<Value> {
    let n = plan.sim_large;
    let root = target.join(format!("cache-{n}"));
    let mut ctl = Persistent::open(&root, n)?;
    blocking(|| ctl.start())?;
    let ca_pem = std::fs::read_to_string(ctl.dir.join("ca.pem"))?;
    let names: Vec<String> = hosts("sim", n, "app:sim")
        .into_iter()
        .map(|h| h.name)
        .collect();
    let cache = IdentityCache::new(root.join("identities"));
    let token = ctl.api.enrollment_token(n).await?;
    let (ids, rep) = enroll_all(ctl.quic, &ca_pem, &token, &names, 64, Some(&cache)).await?;
    ensure!(
        ids.len() == n,
        "{} refused, e.g. {:?} (delete {} to start over)",
        rep.refused.len(),
        rep.refused.first(),
        root.display()
    );
    let idle0 = idle_sample(ctl.pid(), plan).await?;
    let mut opts = sim_options_addr(ctl.quic, &ca_pem, Some(cache.clone()));
    opts.agents_per_endpoint = 2500;
    let fleet = SimFleet::start(opts, ids)?;
    let connect = fleet
        .wait_connected(n, Duration::from_secs(300))
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = idle_sample(ctl.pid(), plan).await?;

    let mut fanout = Vec::new();
    for _ in 0..plan.runs {
        let (took, _) = ctl
            .api
            .deploy_and_wait(
                deploy_body("fanout", "app:sim", "100%".into(), "noop.yml", json!({})),
                Duration::from_secs(300),
            )
            .await?;
        fanout.push(secs(took));
    }

    // Reconnect storm: kill -9, restart on the same ports, time until all
    // are back in the controller's count.
    let mut back = Vec::new();
    let mut errors = Vec::new();
    let mut lost = Vec::new();
    let initial_errors: Vec<String> = fleet
        .stats
        .errors
        .lock()
        .expect("errors")
        .drain(..)
        .collect();
    let mut crashed = false;
    for _ in 0..plan.runs {
        let e0 = fleet.stats.connection_errors.load(Ordering::Relaxed);
        let l0 = fleet.stats.sessions_lost.load(Ordering::Relaxed);
        fleet.stats.max_backoff_ms.store(0, Ordering::Relaxed);
        if let Some(mut p) = ctl.proc.take() {
            p.kill9();
        }
        let t = Instant::now();
        blocking(|| ctl.start())?;
        let deadline = Duration::from_secs(180);
        loop {
            let c = ctl.api.metric_connected().await.unwrap_or(0);
            if c >= n && fleet.connected() >= n {
                break;
            }
            if t.elapsed() > deadline {
                bail!("reconnect storm: {c} of {n} back after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        back.push(secs(t.elapsed()));
        errors.push((fleet.stats.connection_errors.load(Ordering::Relaxed) - e0) as f64);
        lost.push((fleet.stats.sessions_lost.load(Ordering::Relaxed) - l0) as f64);
        if let Some(p) = ctl.proc.as_mut() {
            crashed |= !p.is_running();
        }
    }
    let max_backoff = fleet.stats.max_backoff_ms.load(Ordering::Relaxed);
    let sample_errors: Vec<String> = fleet
        .stats
        .errors
        .lock()
        .expect("errors")
        .iter()
        .take(5)
        .cloned()
        .collect();
    fleet.stop().await;
    if let Some(mut p) = ctl.proc.take() {
        let _ = p.terminate(Duration::from_secs(20));
    }
    Ok(json!({
        "agents": n,
        "enrolled_now": rep.enrolled, "cached": rep.cached, "enroll_s": secs(rep.elapsed),
        "connect_all_s": secs(connect),
        "idle_0": idle0,
        "idle_n": idle,
        "fanout_s": summary(fanout),
        "reconnect_all_back_s": summary(back),
        "reconnect_errors_seen": summary(errors),
        "reconnect_sessions_lost": summary(lost),
        "initial_connect_errors": initial_errors.len(),
        "initial_connect_error_examples": initial_errors.into_iter().take(3).collect::<Vec<_>>(),
        "reconnect_error_examples": sample_errors,
        "reconnect_last_max_backoff_ms": max_backoff,
        "controller_crashed": crashed,
    }))
}

fn sim_options_addr(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    cache: Option<IdentityCache>,
) -> SimOptions {
    SimOptions {
        controller: addr,
        server_name: "127.0.0.1".into(),
        agents_per_endpoint: 2500,
        reconnect_base: Duration::from_secs(1),
        reconnect_cap: Duration::from_secs(60),
        cache,
        ca_pem: ca_pem.to_string(),
    }
}

/// The Chef resolve benchmark (`vesemir-bench chef-resolve`), its JSON line.
async fn chef(plan: &Plan) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "chef-resolve",
            "--nodes",
            &plan.chef_nodes.to_string(),
            "--runs",
            &plan.runs.max(5).to_string(),
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "chef-resolve failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("{}");
    let v: Value = serde_json::from_str(line).context("chef-resolve JSON line")?;
    Ok(v)
}
