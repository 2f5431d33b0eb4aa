//! `bench/RESULTS.md` from the groups' JSON files: every figure of the
//! issue with the command that produced it, median (min–max) over the runs,
//! and its target.

use crate::figures::{result_path, Plan, GROUPS};
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

/// The machine, recorded when `bench/run` starts.
pub fn machine() -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    serde_json::json!({
        "cores": cores, "memory": mem, "cpu": cpu, "kernel": kernel,
        "load_average": crate::figures::load_average(),
        "started": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    })
}

fn f(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "—".into(),
    }
}

/// "median (min–max, n runs)".
fn mmm(v: &Value, digits: usize, unit: &str) -> String {
    if v.is_null() {
        return "not measured".into();
    }
    format!(
        "**{}{unit}** ({}–{}{unit}, {} runs)",
        f(&v["median"], digits),
        f(&v["min"], digits),
        f(&v["max"], digits),
        v["n"]
    )
}

/// The Chef row: "not measured" (not 0.00 s) when the group has not run.
fn chef_row(chef: &Value) -> String {
    let ms = |set: &str, k: &str| chef[set][k].as_f64().map(|x| x / 1000.0);
    match (
        ms("all", "median_ms"),
        ms("all", "min_ms"),
        ms("all", "max_ms"),
    ) {
        (Some(m), Some(lo), Some(hi)) => {
            let half = match ms("half", "median_ms") {
                Some(h) => format!("; half the nodes (two tags and a role) **{h:.2} s**"),
                None => String::new(),
            };
            format!(
                "**{m:.2} s** ({lo:.2}–{hi:.2} s, {} runs){half}; creating the nodes took {:.1} s",
                chef["runs"].as_u64().map_or("?".into(), |r| r.to_string()),
                chef["create_ms"].as_f64().unwrap_or(0.0) / 1000.0
            )
        }
        _ => "not measured".into(),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "—",
    }
}

fn med(v: &Value) -> Option<f64> {
    v["median"].as_f64()
}

/// Renders the report for `plan` from what is in `target`.
pub fn render(target: &Path, plan: &Plan, machine: &Value, command: &str) -> String {
    let load = |g: &str| -> Value {
        std::fs::read_to_string(result_path(target, plan, g))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    };
    let (real, ans, ansr, mid, enroll, large, chef) = (
        load("real"),
        load("ansible"),
        load("ansible-rolling"),
        load("sim-mid"),
        load("enroll"),
        load("sim-large"),
        load("chef"),
    );
    let bin = "target/release/vesemir-bench";
    let mode = if plan.mode == "quick" { " --quick" } else { "" };
    let cmd = |g: &str| format!("`{bin} run --only {g}{mode}`");
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Benchmark results\n\nWritten by `{command}` ({} mode). Regenerate with `bench/run`; \
         each figure's own command is given with it (build first: `cargo build --release --bins`). \
         Medians over the runs, with min–max.\n",
        plan.mode
    );
    let _ = writeln!(
        o,
        "## Machine\n\n- {} cores ({}), {} memory, Linux {}\n- load average when the run started: **{}** \
         (1, 5, 15 min); this machine is shared with other engineers' compiles, so the load \
         at each group's start and end is listed with it\n- run started {}\n",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or(""),
        machine["memory"].as_str().unwrap_or(""),
        machine["kernel"].as_str().unwrap_or(""),
        machine["load_average"].as_str().unwrap_or(""),
        machine["started"].as_str().unwrap_or(""),
    );
    let loads = |v: &Value| {
        format!(
            "load {} → {}, group took {} s",
            v["load_at_start"].as_str().unwrap_or("?"),
            v["load_at_end"].as_str().unwrap_or("?"),
            f(&v["took_s"], 0)
        )
    };

    let _ = writeln!(o, "## Figures against targets\n");
    let _ = writeln!(o, "| figure | result | target | |\n|---|---|---|---|");
    let ratio = match (med(&ans["adhoc_s"]), med(&real["fanout_s"])) {
        (Some(a), Some(v)) if v > 0.0 => Some(a / v),
        _ => None,
    };
    let rows: Vec<(String, String, String, Option<bool>)> = vec![
        (
            format!("fan-out no-op, {} real agents", real["agents"]),
            mmm(&real["fanout_s"], 3, " s"),
            "—".into(),
            None,
        ),
        (
            format!("fan-out no-op, {} simulated", mid["agents"]),
            mmm(&mid["fanout_s"], 3, " s"),
            "< 0.5 s at 1,000".into(),
            med(&mid["fanout_s"]).map(|x| x < 0.5),
        ),
        (
            format!("fan-out no-op, {} simulated", large["agents"]),
            mmm(&large["fanout_s"], 3, " s"),
            "< 3 s at 10,000".into(),
            med(&large["fanout_s"]).map(|x| x < 3.0),
        ),
        (
            format!(
                "Ansible `-m command -a true`, {} hosts, forks 50",
                ans["hosts"]
            ),
            mmm(&ans["adhoc_s"], 2, " s"),
            "—".into(),
            None,
        ),
        (
            "vesemir vs Ansible, no-op (Ansible median / vesemir median)".into(),
            ratio.map(|r| format!("**{r:.0}×**")).unwrap_or("—".into()),
            "≥ 60×".into(),
            ratio.map(|r| r >= 60.0),
        ),
        (
            format!(
                "vesemir rolling, {} real hosts, concurrency 10, 1 s work, HAProxy steps",
                real["agents"]
            ),
            format!(
                "{}; ratio to ideal {} s: {}",
                mmm(&real["rolling_haproxy_s"], 2, " s"),
                real["rolling_ideal_s"],
                mmm(&real["rolling_ratio"], 3, "×")
            ),
            "≤ 1.05×".into(),
            med(&real["rolling_ratio"]).map(|x| x <= 1.05),
        ),
        (
            format!(
                "Ansible rolling playbook, {} hosts, `serial: 10`, HAProxy via LB host",
                ansr["hosts"]
            ),
            format!(
                "{}; ratio to ideal: {}",
                mmm(&ansr["rolling_s"], 2, " s"),
                mmm(&ansr["rolling_ratio"], 2, "×")
            ),
            "(comparison)".into(),
            None,
        ),
        (
            format!(
                "rolling, {} simulated hosts, concurrency {}, 1 s work, HAProxy steps",
                mid["agents"], mid["rolling_concurrency"]
            ),
            format!(
                "{}; ratio to ideal {} s: {}",
                mmm(&mid["rolling_haproxy_s"], 2, " s"),
                mid["rolling_ideal_s"],
                mmm(&mid["rolling_ratio"], 3, "×")
            ),
            "≤ 1.10×".into(),
            med(&mid["rolling_ratio"]).map(|x| x <= 1.10),
        ),
        (
            format!("enrollment storm, {} agents, 64 at once", enroll["agents"]),
            format!(
                "{}; refusals {}; `database is locked` in log: {}",
                mmm(&enroll["time_s"], 2, " s"),
                enroll["refusals_total"],
                enroll["database_is_locked_in_log"]
            ),
            "< 30 s, zero refusals".into(),
            med(&enroll["time_s"])
                .map(|x| x < 30.0 && enroll["refusals_total"].as_u64() == Some(0)),
        ),
        (
            "controller idle, 0 agents connected".into(),
            format!(
                "RSS {}; CPU {}",
                mmm(&large["idle_0"]["rss_mib"], 1, " MiB"),
                mmm(&large["idle_0"]["cpu_pct_of_one_core"], 2, " %")
            ),
            "—".into(),
            None,
        ),
        (
            format!("controller idle, {} agents heartbeating", mid["agents"]),
            format!(
                "RSS {}; CPU {}",
                mmm(&mid["idle_n"]["rss_mib"], 1, " MiB"),
                mmm(&mid["idle_n"]["cpu_pct_of_one_core"], 2, " %")
            ),
            "—".into(),
            None,
        ),
        (
            format!("controller idle, {} agents heartbeating", large["agents"]),
            format!(
                "RSS {}; CPU {}",
                mmm(&large["idle_n"]["rss_mib"], 1, " MiB"),
                mmm(&large["idle_n"]["cpu_pct_of_one_core"], 2, " %")
            ),
            "< 512 MiB, < 5 % of one core".into(),
            match (
                med(&large["idle_n"]["rss_mib"]),
                med(&large["idle_n"]["cpu_pct_of_one_core"]),
            ) {
                (Some(r), Some(c)) => Some(r < 512.0 && c < 5.0),
                _ => None,
            },
        ),
        (
            "controller memory per connected agent".into(),
            match (
                med(&large["idle_n"]["rss_mib"]),
                med(&large["idle_0"]["rss_mib"]),
                large["agents"].as_f64(),
            ) {
                (Some(a), Some(b), Some(n)) => {
                    format!(
                        "**{:.1} KiB** ((RSS at N − RSS at 0) / N)",
                        (a - b) * 1024.0 / n
                    )
                }
                _ => "—".into(),
            },
            "—".into(),
            None,
        ),
        (
            format!(
                "reconnect storm, {} agents, controller `kill -9` + restart",
                large["agents"]
            ),
            format!(
                "all back in {}; failed connection attempts {}; sessions lost to the kill {}; \
                 controller crashed: {}; longest backoff chosen in the last storm {} ms",
                mmm(&large["reconnect_all_back_s"], 2, " s"),
                mmm(&large["reconnect_errors_seen"], 0, ""),
                mmm(&large["reconnect_sessions_lost"], 0, ""),
                large["controller_crashed"],
                large["reconnect_last_max_backoff_ms"]
            ),
            "< 30 s, no crash, none stuck".into(),
            med(&large["reconnect_all_back_s"])
                .map(|x| x < 30.0 && large["controller_crashed"] == false),
        ),
        (
            format!("real agent idle {} s", f(&real["agent_idle_s"], 0)),
            format!(
                "RSS {}; CPU {} %",
                mmm(&real["agent_idle_rss_mib"], 2, " MiB"),
                f(&real["agent_idle_cpu_pct"], 3)
            ),
            "RSS < 8 MB".into(),
            med(&real["agent_idle_rss_mib"]).map(|x| x * 1.048_576 < 8.0),
        ),
        (
            "agent binary, stripped (release)".into(),
            format!(
                "**{:.1} MiB** (unstripped {:.1} MiB)",
                real["agent_stripped_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
                real["agent_unstripped_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0
            ),
            "—".into(),
            None,
        ),
        (
            format!("Chef resolve, {} nodes, all match", chef["nodes"]),
            chef_row(&chef),
            "—".into(),
            None,
        ),
    ];
    for (a, b, c, ok) in rows {
        let _ = writeln!(o, "| {a} | {b} | {c} | {} |", verdict(ok));
    }

    let _ = writeln!(o, "\n## How each figure was measured\n");
    let _ = writeln!(
        o,
        "### real — {} real agents ({})\n\n{}\n\n\
         A release controller (static inventory, heartbeat 10 s) and {} real `vesemir-agent` \
         processes plus one LB agent whose `haproxy_socket` is a real HAProxy 2.6 with the {} servers \
         in backend `app` (no health checks: nothing serves behind them; the runtime-API steps are \
         real). Fan-out: one `POST /v1/deployments` of `bench/playbooks/noop.yml` (one `command: true` \
         task) at concurrency `100%`; the time runs from the POST until the deployment is stored \
         finished (polled every 10 ms). Rolling: `sleep.yml` with `seconds=1` at concurrency 10 with \
         `haproxy: {{backend: app, selector: role:lb, weights: [100]}}` (drain, wait for 0 sessions, \
         job, ready + weight per host); ideal = 10 batches × 1 s. Servers left out of rotation \
         afterwards: {}. Agent footprint: agent `web-00002`, idle (connected, heartbeating) for the \
         time given, RSS sampled 6 times, CPU from /proc over the whole window; the binary is \
         `strip`ped from `target/release/vesemir-agent`.\n",
        real["agents"],
        loads(&real),
        cmd("real"),
        real["agents"],
        real["agents"],
        real["servers_left_out_of_rotation"],
    );
    let _ = writeln!(
        o,
        "### ansible — the same {} hosts over SSH ({})\n\n{}\n\n\
         {} from Debian. The bench starts its own `sshd` on a loopback port with a generated host key \
         and user key (`MaxStartups 500`), and an inventory of {} aliases of localhost (named like the \
         vesemir hosts) plus `lb`. Each run gets a fresh `ANSIBLE_SSH_CONTROL_PATH_DIR`, so \
         connections are cold as in a first run (ControlPersist does not carry over from the previous \
         run). No-op: `ansible web -i hosts.ini -m command -a true -f 50`. Rolling: \
         `ansible-playbook -f 50 rolling.yml` with `serial: 10`: `set server app/HOST state maint` \
         delegated to `lb` (a 15-line python3 client of the admin socket, since `community.general` \
         is not part of ansible-core), `command: sleep 1`, then `state ready` delegated to `lb`, \
         against a real HAProxy holding the {} servers. The rolling playbook is group \
         `ansible-rolling` ({}; {}), run at most 2 times because each run takes minutes here.\n",
        ans["hosts"],
        loads(&ans),
        cmd("ansible"),
        ans["ansible_version"].as_str().unwrap_or("ansible"),
        ans["hosts"],
        ans["hosts"],
        cmd("ansible-rolling"),
        loads(&ansr),
    );
    let _ = writeln!(
        o,
        "### sim-mid — {} simulated agents ({})\n\n{}\n\n\
         The fleet simulator (`bench/src/sim.rs`) in the bench process: every simulated agent \
         enrolled (64 at once) with its own key and certificate and holds its own QUIC connection \
         (2,500 connections per UDP socket); one real LB agent with a real HAProxy of {} servers. \
         All connected in {} s. Fan-out as above. Rolling: concurrency {}, `sleep.yml` \
         `seconds=1 lines=5`, HAProxy steps through the real LB agent; at most {} jobs ran at once. \
         Idle: controller RSS and CPU share over {}-s windows, before the simulator connects (0) and \
         with all connected and heartbeating every 10 s.\n",
        mid["agents"],
        loads(&mid),
        cmd("sim-mid"),
        mid["agents"],
        f(&mid["connect_all_s"], 2),
        mid["rolling_concurrency"],
        mid["rolling_max_jobs_at_once"],
        plan.idle_window.as_secs(),
    );
    let _ = writeln!(
        o,
        "### enroll — enrollment storm ({})\n\n{}\n\n\
         A fresh controller per run; {} simulated agents enroll over TLS/TCP exactly as \
         `vesemir-agent enroll` does (key generated, CSR + token), 64 at once; time from the first \
         connect to the last answer.\n",
        loads(&enroll),
        cmd("enroll"),
        enroll["agents"],
    );
    let _ = writeln!(
        o,
        "### sim-large — {} simulated agents ({})\n\n{}\n\n\
         The controller's data dir and the {} identities are cached under \
         `target/bench/cache-{}/` (enrolled once: this run enrolled {} and took {} from the cache). \
         Idle at 0 (controller started, nothing connected) and at N (all connected for 3 s+). \
         All connected in {} s. Reconnect storm: `kill -9` of the controller, start it again \
         (same data dir and ports), time until `/metrics` counts all N connected and the simulator \
         agrees; the simulated agents use the agent's own backoff (`vesemir_agent::session::backoff`, \
         1 s base, 60 s cap, full jitter). Error examples: {}.\n",
        large["agents"],
        loads(&large),
        cmd("sim-large"),
        large["agents"],
        large["agents"],
        large["enrolled_now"],
        large["cached"],
        f(&large["connect_all_s"], 2),
        large["reconnect_error_examples"],
    );
    let _ = writeln!(
        o,
        "### chef — resolve {} nodes ({})\n\n{}\n\nSee `bench/README.md` (`chef-resolve`).\n",
        chef["nodes"],
        loads(&chef),
        cmd("chef"),
    );
    if let Ok(fixes) = std::fs::read_to_string(crate::harness::bench_dir().join("fixes.md")) {
        let _ = writeln!(o, "\n{fixes}");
    }
    let missing: Vec<&str> = GROUPS
        .iter()
        .copied()
        .filter(|g| !result_path(target, plan, g).exists())
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            o,
            "\n**Not measured in this run:** {} (see the run's output for why).\n",
            missing.join(", ")
        );
    }
    o
}
