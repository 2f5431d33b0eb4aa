//! Network faults between the controller and an agent (issue 11.8). Each
//! test makes its own network namespace with a veth pair (unique names and
//! a /30 of its own, removed by a Drop guard even when the test fails) and
//! runs the real agent inside it (`ip netns exec`); the controller, its
//! other agents and their sample apps run as usual. systemd is not PID 1
//! here: agents restart apps through the recording `systemctl` stand-in.
//!
//! - Loss and delay (10% of packets lost, 200 ms added, each direction):
//!   `tc netem` on both ends of the veth where the kernel has it; where it
//!   does not (`CONFIG_NET_SCH_NETEM` unset, as on this CI's kernel) the
//!   agent's QUIC traffic crosses the veth to a UDP relay in this test that
//!   drops and delays datagrams the same way. The test prints which.
//! - Partition: the host end of the veth is set down mid-job and up again.
//!
//! Where namespaces cannot be made (not root, no `ip`), each test prints
//! `SKIPPED: …` and returns; set `VESEMIR_REQUIRE_NETNS=1` to make that a
//! failure instead.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use vesemir_testkit::fleet::{
    bin, free_port, repo, wait_for, Agent, Controller, ControllerOptions, Proc,
};
use vesemir_testkit::haproxy::{systemctl_stand_in, Systemctl};

/// A network namespace joined to the root namespace by a veth pair.
/// Dropping it deletes the namespace (which deletes the pair).
struct Netns {
    name: String,
    /// Host end of the veth (root namespace).
    host_if: String,
    /// Namespace end.
    ns_if: String,
    /// Address of the host end, reachable from inside.
    host_ip: String,
    /// Address of the namespace end.
    ns_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Makes a namespace, or says why it can't (the caller skips).
    fn create() -> Result<Netns> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes; pid (≤ 7 hex digits) + n.
        let tag = format!("{pid:x}{n}");
        let ns = Netns {
            name: format!("vznf{tag}"),
            host_if: format!("vzh{tag}"),
            ns_if: format!("vzn{tag}"),
            // A /30 per (process, namespace): 10.X.Y.(4k+1, 4k+2).
            host_ip: format!(
                "10.{}.{}.{}",
                100 + (pid >> 8) % 150,
                pid & 0xff,
                (n % 60) * 4 + 1
            ),
            ns_ip: format!(
                "10.{}.{}.{}",
                100 + (pid >> 8) % 150,
                pid & 0xff,
                (n % 60) * 4 + 2
            ),
        };
        ip(&["netns", "add", &ns.name])?;
        // From here on Drop cleans up whatever was made.
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
            "netns",
            &ns.name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.ns_ip),
            "dev",
            &ns.ns_if,
        ])?;
        ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `tc netem` on both ends, if this kernel has it.
    fn netem(&self, spec: &str) -> Result<()> {
        let args: Vec<&str> = spec.split(' ').collect();
        let run = |ns: Option<&str>, dev: &str| -> Result<()> {
            let mut cmd = if let Some(ns) = ns {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "tc"]);
                c
            } else {
                Command::new("tc")
            };
            let out = cmd
                .args(["qdisc", "add", "dev", dev, "root", "netem"])
                .args(&args)
                .output()?;
            if !out.status.success() {
                bail!("tc netem: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        run(Some(&self.name), &self.ns_if)?;
        run(None, &self.host_if)
    }

    /// Partition: the host end goes down (carrier lost on both ends).
    fn link(&self, up: bool) -> Result<()> {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }])
    }

    /// A command run inside the namespace.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A namespace, or `None` after printing why the test is skipped.
fn netns_or_skip(test: &str) -> Result<Option<Netns>> {
    match Netns::create() {
        Ok(ns) => Ok(Some(ns)),
        Err(e) if std::env::var_os("VESEMIR_REQUIRE_NETNS").is_some() => {
            Err(e.context("VESEMIR_REQUIRE_NETNS is set"))
        }
        Err(e) => {
            eprintln!("SKIPPED: {test}: cannot make a network namespace here ({e:#}); needs root and iproute2");
            println!("SKIPPED: {test}: cannot make a network namespace here");
            Ok(None)
        }
    }
}

/// A UDP relay that loses and delays datagrams in both directions, for
/// kernels without `netem`. One upstream socket per client address, so
/// several agents can share it. Runs on its own thread until dropped.
struct LossyRelay {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LossyRelay {
    fn start(listen: SocketAddr, upstream: SocketAddr, loss: f64, delay: Duration) -> Result<Self> {
        let sock = std::net::UdpSocket::bind(listen)?;
        sock.set_nonblocking(true)?;
        let addr = sock.local_addr()?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let thread =
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("relay runtime");
                rt.block_on(async move {
                let front = std::sync::Arc::new(
                    tokio::net::UdpSocket::from_std(sock).expect("relay socket"),
                );
                let mut backs: std::collections::HashMap<
                    SocketAddr,
                    std::sync::Arc<tokio::net::UdpSocket>,
                > = Default::default();
                let mut buf = vec![0u8; 65536];
                loop {
                    let (n, from) = tokio::select! {
                        r = front.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let back = match backs.get(&from) {
                        Some(b) => b.clone(),
                        None => {
                            let b = std::sync::Arc::new(
                                tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
                            );
                            b.connect(upstream).await.expect("connect upstream");
                            let (b2, front2) = (b.clone(), front.clone());
                            tokio::spawn(async move {
                                let mut buf = vec![0u8; 65536];
                                while let Ok(n) = b2.recv(&mut buf).await {
                                    let pkt = buf[..n].to_vec();
                                    if rand::random::<f64>() < loss {
                                        continue;
                                    }
                                    let f = front2.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(delay).await;
                                        let _ = f.send_to(&pkt, from).await;
                                    });
                                }
                            });
                            backs.insert(from, b.clone());
                            b
                        }
                    };
                    if rand::random::<f64>() < loss {
                        continue;
                    }
                    let pkt = buf[..n].to_vec();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = back.send(&pkt).await;
                    });
                }
            });
            });
        Ok(LossyRelay {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A controller listening for QUIC on every address (so the namespace
/// reaches it through the veth), with a static inventory of `hosts`.
fn controller(hosts: &[&str], idle_timeout: Option<&str>) -> Result<Controller> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let inv = c.root.path().join("inventory.toml");
    let mut text = String::new();
    for h in hosts {
        text.push_str(&format!(
            "[[hosts]]\nname = \"{h}\"\naddress = \"127.0.0.1\"\ntags = [\"app:nf\"]\nenvironment = \"test\"\n"
        ));
    }
    std::fs::write(&inv, text)?;
    let cfg = c.data_dir.join("controller.toml");
    let t = std::fs::read_to_string(&cfg)?;
    let port = c.quic.port();
    // serve must bind 0.0.0.0 itself, not inherit init's loopback sockets.
    c.release_sockets();
    let t = t.replace(
        &format!("\"127.0.0.1:{port}\""),
        &format!("\"0.0.0.0:{port}\""),
    );
    let t = match idle_timeout {
        // Top-level keys go before any table.
        Some(idle) => format!(
            "quic_idle_timeout = \"{idle}\"\n{}",
            t.lines()
                .filter(|l| !l.starts_with("quic_idle_timeout"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        ),
        None => t,
    };
    std::fs::write(
        &cfg,
        format!("inventory = {:?}\n{t}", inv.display().to_string()),
    )?;
    c.start()?;
    Ok(c)
}

/// Enrolls `name` (over loopback) and starts its agent, inside `ns` when
/// given, talking to `controller` (verifying the controller's certificate
/// as 127.0.0.1, one of its names).
fn agent(
    c: &Controller,
    token: &str,
    name: &str,
    playbooks: &Path,
    sys: &Systemctl,
    app_port: u16,
    ns: Option<(&Netns, SocketAddr)>,
) -> Result<Agent> {
    let out = c.enroll(
        name,
        token,
        &[
            "--playbook-dir",
            playbooks.to_str().unwrap(),
            "--systemctl",
            systemctl_stand_in().to_str().unwrap(),
            "--var",
            &format!("health_url=http://127.0.0.1:{app_port}/health"),
        ],
    );
    if !out.status.success() {
        bail!("enroll {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = c.agent_dir(name);
    Agent::set_config(&dir, "reconnect_cap", "\"2s\"")?;
    let Some((ns, controller)) = ns else {
        return Agent::start_with_env(dir, name, &sys.env());
    };
    Agent::set_config(&dir, "controller", &format!("\"{controller}\""))?;
    Agent::set_config(&dir, "server_name", "\"127.0.0.1\"")?;
    let mut cmd = ns.command(&bin("vesemir-agent"));
    cmd.args(["run", "--config"])
        .arg(dir.join("agent.toml"))
        .env("RUST_LOG", "info");
    for (k, v) in sys.env() {
        cmd.env(k, v);
    }
    let log = dir.join("agent.log");
    Ok(Agent {
        name: name.to_string(),
        proc: Proc::spawn(&format!("agent {name} (netns {})", ns.name), cmd, log)?,
        dir,
    })
}

fn api(
    c: &Controller,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut rb = reqwest::Client::new()
            .request(method, format!("{}{path}", c.url))
            .bearer_auth(&c.token)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    })
}

/// The deployment's stored log (NDJSON) so far.
fn logs(c: &Controller, id: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        Ok(reqwest::Client::new()
            .get(format!("{}/v1/deployments/{id}/logs", c.url))
            .bearer_auth(&c.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .text()
            .await?)
    })
}

fn deployment(c: &Controller, id: &str) -> Result<Value> {
    Ok(api(
        c,
        reqwest::Method::GET,
        &format!("/v1/deployments/{id}"),
        None,
    )?
    .1)
}

fn wait_finished(c: &Controller, id: &str, timeout: Duration) -> Result<Value> {
    wait_for("deployment finished", timeout, || {
        let d = deployment(c, id).ok()?;
        (!matches!(d["status"].as_str(), Some("pending" | "running") | None)).then_some(d)
    })
}

fn host<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == name))
        .unwrap_or(&Value::Null)
}

fn wait_connected(c: &Controller, name: &str, timeout: Duration) -> Result<()> {
    wait_for(&format!("agent {name} connected"), timeout, || {
        (c.agent_state(name).as_deref() == Some("connected")).then_some(())
    })
}

#[test]
fn rolling_deploy_succeeds_through_10_percent_loss_and_200ms_delay() -> Result<()> {
    let Some(ns) =
        netns_or_skip("rolling_deploy_succeeds_through_10_percent_loss_and_200ms_delay")?
    else {
        return Ok(());
    };
    let names = ["lossy-1", "lossy-2", "lossy-3"];
    let c = controller(&names, None)?;
    let token = c.enrollment_token(names.len() as u32)?;
    // Loss and delay on the path: netem where the kernel has it, else the relay.
    let (target, _relay) = match ns.netem("delay 200ms loss 10%") {
        Ok(()) => {
            eprintln!("impairment: tc netem delay 200ms loss 10% on both ends of the veth");
            (format!("{}:{}", ns.host_ip, c.quic.port()).parse()?, None)
        }
        Err(e) => {
            eprintln!(
                "impairment: {e:#}; using a UDP relay on {} dropping 10% and delaying 200 ms each way",
                ns.host_ip
            );
            let relay = LossyRelay::start(
                format!("{}:0", ns.host_ip).parse()?,
                format!("127.0.0.1:{}", c.quic.port()).parse()?,
                0.10,
                Duration::from_millis(200),
            )?;
            (relay.addr, Some(relay))
        }
    };
    let playbooks = repo().join("playbooks");
    let mut agents = Vec::new();
    let mut systemctls = Vec::new();
    for name in names {
        let port = free_port().expect("free port");
        let sys = Systemctl::with_sample_app(port)?;
        agents.push(agent(
            &c,
            &token,
            name,
            &playbooks,
            &sys,
            port,
            Some((&ns, target)),
        )?);
        systemctls.push(sys);
    }
    for name in names {
        wait_connected(&c, name, Duration::from_secs(30))?;
    }
    let req = json!({
        "application": "nf", "environment": "test", "team": "qa",
        "selector": {"tags": ["app:nf"]},
        "concurrency": 1, "playbook": "restart.yml",
        "vars": {"service": "app", "health_delay": "200ms"},
        "job_timeout_seconds": 120,
    });
    let (status, v) = api(&c, reqwest::Method::POST, "/v1/deployments", Some(req))?;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let d = wait_finished(&c, &id, Duration::from_secs(180))?;
    eprintln!(
        "deployment over the lossy link took {:?}",
        started.elapsed()
    );
    assert_eq!(d["status"], "succeeded", "{d:#}");
    for name in names {
        assert_eq!(host(&d, name)["status"], "succeeded", "{name}: {d:#}");
    }
    for sys in &systemctls {
        let calls = sys.calls()?;
        assert_eq!(
            calls.iter().filter(|(_, a)| a == "restart app").count(),
            1,
            "exactly one restart per host despite retransmissions: {calls:?}"
        );
    }
    drop(agents);
    Ok(())
}

/// A playbook that works long enough for the test to cut the link under it,
/// under a name the controller knows (it checks names, the agent has the
/// playbooks).
fn slow_playbooks(dir: &Path) -> Result<PathBuf> {
    let p = dir.join("playbooks");
    std::fs::create_dir_all(&p)?;
    std::fs::write(
        p.join("restart.yml"),
        "name: slow\ntasks:\n  - name: Work for a while\n    command: sleep 6\n  - name: Done\n    command: \"true\"\n",
    )?;
    Ok(p)
}

/// Three hosts, one at a time, the first behind a veth that is cut while
/// its playbook runs.
fn partition_mid_job(max_fail_percentage: u32) -> Result<Option<Partitioned>> {
    let Some(ns) = netns_or_skip("partition_mid_job")? else {
        return Ok(None);
    };
    let names = ["part-1", "part-2", "part-3"];
    // A short idle timeout: the controller notices the cut in seconds.
    let c = controller(&names, Some("3s"))?;
    let token = c.enrollment_token(names.len() as u32)?;
    let playbooks = slow_playbooks(c.root.path())?;
    let target: SocketAddr = format!("{}:{}", ns.host_ip, c.quic.port()).parse()?;
    let mut agents = Vec::new();
    let mut systemctls = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let port = free_port().expect("free port");
        let sys = Systemctl::with_sample_app(port)?;
        let inside = (i == 0).then_some((&ns, target));
        agents.push(agent(&c, &token, name, &playbooks, &sys, port, inside)?);
        systemctls.push(sys);
    }
    for name in names {
        wait_connected(&c, name, Duration::from_secs(20))?;
    }
    let job_timeout = 12;
    let req = json!({
        "application": "nf", "environment": "test", "team": "qa",
        "selector": {"tags": ["app:nf"]},
        "concurrency": 1, "max_fail_percentage": max_fail_percentage,
        "playbook": "restart.yml", "job_timeout_seconds": job_timeout,
    });
    let (status, v) = api(&c, reqwest::Method::POST, "/v1/deployments", Some(req))?;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // Cut the link once part-1's playbook is under way.
    let job_id = wait_for("part-1's playbook started", Duration::from_secs(20), || {
        let d = deployment(&c, &id).ok()?;
        let h = host(&d, "part-1");
        (h["status"] == "running" && h["step"] == "deploying")
            .then(|| h["job_id"].as_str().map(str::to_string))
            .flatten()
    })?;
    // The job's first task started on the agent (its event came back).
    wait_for(
        "part-1's first task started",
        Duration::from_secs(10),
        || {
            logs(&c, &id)
                .ok()?
                .lines()
                .any(|l| l.contains("\"task_started\"") && l.contains("\"part-1\""))
                .then_some(())
        },
    )?;
    ns.link(false)?;
    let cut = Instant::now();
    let d = wait_finished(&c, &id, Duration::from_secs(job_timeout + 60))?;
    let took = cut.elapsed();
    Ok(Some(Partitioned {
        d,
        c,
        agents,
        ns,
        job_id,
        took,
    }))
}

/// What [`partition_mid_job`] leaves for the assertions.
struct Partitioned {
    /// The finished deployment.
    d: Value,
    c: Controller,
    agents: Vec<Agent>,
    ns: Netns,
    /// part-1's job id.
    job_id: String,
    /// From the cut to the deployment's end.
    took: Duration,
}

/// After the link is back: the agent reconnects, and the job it ran through
/// the partition is in its journal with its real outcome.
fn reconnects_and_journal_answers(
    c: &Controller,
    agents: &mut [Agent],
    ns: &Netns,
    job_id: &str,
) -> Result<()> {
    ns.link(true)?;
    wait_connected(c, "part-1", Duration::from_secs(30))
        .with_context(|| agents[0].proc.log_text())?;
    // Through the controller, where `vesemir agents job` exists (issue 11.5).
    let out = c.cli(&["agents", "job", "part-1", job_id]);
    if out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("succeeded"), "agents job answered: {text}");
        return Ok(());
    }
    // Otherwise the journal record itself (written atomically by rename),
    // once the job that ran on through the partition has finished.
    let path = agents[0].dir.join("journal").join(format!("{job_id}.json"));
    let rec: Value = wait_for(
        "the job's journal record finished",
        Duration::from_secs(20),
        || {
            let rec: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            // (The journal spells statuses as the enum does: `Running`.)
            (rec["status"] != "Running").then_some(rec)
        },
    )?;
    assert_eq!(
        rec["status"], "Succeeded",
        "the playbook ran on through the partition: {rec:#}"
    );
    assert!(
        agents[0].proc.is_running(),
        "the agent survived the partition"
    );
    Ok(())
}

#[test]
fn partition_mid_job_marks_the_host_unreachable_and_the_deployment_continues_within_max_fail_percentage(
) -> Result<()> {
    let Some(Partitioned {
        d,
        c,
        mut agents,
        ns,
        job_id,
        took,
    }) = partition_mid_job(34)?
    else {
        return Ok(());
    };
    let h = host(&d, "part-1");
    assert_eq!(h["status"], "unreachable", "{d:#}");
    assert!(
        took < Duration::from_secs(12 + 20),
        "part-1 ended {took:?} after the cut; its deadline was 12s"
    );
    // 1 of 3 failed ≤ 34%: the others ran and the deployment ended failed.
    for name in ["part-2", "part-3"] {
        assert_eq!(host(&d, name)["status"], "succeeded", "{name}: {d:#}");
    }
    assert_eq!(d["status"], "failed", "{d:#}");
    assert_eq!(d["summary"]["unreachable"], 1, "{d:#}");
    reconnects_and_journal_answers(&c, &mut agents, &ns, &job_id)
}

#[test]
fn partition_mid_job_aborts_the_deployment_at_max_fail_percentage_0() -> Result<()> {
    let Some(Partitioned {
        d,
        c,
        mut agents,
        ns,
        job_id,
        ..
    }) = partition_mid_job(0)?
    else {
        return Ok(());
    };
    assert_eq!(host(&d, "part-1")["status"], "unreachable", "{d:#}");
    assert_eq!(d["status"], "aborted", "{d:#}");
    for name in ["part-2", "part-3"] {
        let h = host(&d, name);
        assert_eq!(h["status"], "skipped", "{name}: {d:#}");
        assert!(h["started_at"].is_null(), "{name} was started: {d:#}");
    }
    reconnects_and_journal_answers(&c, &mut agents, &ns, &job_id)
}
