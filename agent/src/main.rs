//! `vesemir-agent`: enroll, run, and local playbook tools.
//! Exit codes: 0 ok, 1 failure, 64 bad usage or configuration.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vesemir_agent::config::AgentConfig;
use vesemir_agent::enroll::{enroll, EnrollError, EnrollOptions};
use vesemir_daemon::notify::Notifier;
use vesemir_daemon::{exit_error, init_logging, shutdown_signal, LogEnv, LogFormat, EX_USAGE};

#[derive(Parser)]
#[command(name = "vesemir-agent", version, about = "vesemir agent")]
struct Cli {
    /// Log format [default: json when systemd runs us (JOURNAL_STREAM or INVOCATION_ID), else text].
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this VM with a controller: generates the key here, sends a CSR and the token.
    Enroll {
        /// Controller HOST:PORT.
        #[arg(long)]
        controller: String,
        /// Enrollment token (or set VESEMIR_ENROLL_TOKEN to keep it out of `ps`).
        #[arg(long, env = "VESEMIR_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// The controller's CA certificate (ca.pem).
        #[arg(long)]
        ca_cert: PathBuf,
        /// This node's name (its Chef node name).
        #[arg(long)]
        name: String,
        /// Directory for key, certificate, CA, journal and agent.toml.
        #[arg(long)]
        data_dir: PathBuf,
        /// Enroll again even if agent.toml exists.
        #[arg(long)]
        force: bool,
        /// Directory of the playbooks this agent runs.
        #[arg(long)]
        playbook_dir: Option<PathBuf>,
        /// Service manager command (default systemctl).
        #[arg(long)]
        systemctl: Option<PathBuf>,
        /// HAProxy admin socket on this VM.
        #[arg(long)]
        haproxy_socket: Option<PathBuf>,
        /// Host variable K=V given to every playbook on this VM (repeatable).
        #[arg(long = "var", value_name = "K=V")]
        vars: Vec<String>,
    },
    /// Run the agent: hold the connection to the controller and serve jobs.
    Run {
        /// Path to agent.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate or run a playbook locally, without a controller.
    Playbook {
        #[command(subcommand)]
        cmd: vesemir_agent::runner::cli::PlaybookCommand,
    },
}

fn main() -> ExitCode {
    // Before any thread exists: this reads and removes NOTIFY_SOCKET & co,
    // so playbooks and the systemctl they run never see them.
    let notify = Notifier::take_from_env();
    let cli = Cli::parse();
    init_logging(LogFormat::choose(cli.log_format, &LogEnv::detect()));
    let notify = notify.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "not reporting readiness to systemd");
        Notifier::disabled()
    });
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Enroll {
            controller,
            token,
            ca_cert,
            name,
            data_dir,
            force,
            playbook_dir,
            systemctl,
            haproxy_socket,
            vars,
        } => {
            let mut host_vars = std::collections::BTreeMap::new();
            for kv in vars {
                match vesemir_daemon::parse_key_value(&kv) {
                    Ok((k, v)) => {
                        host_vars.insert(k.to_string(), v.to_string());
                    }
                    Err(e) => {
                        eprintln!("error: --var {e}");
                        return ExitCode::from(EX_USAGE);
                    }
                }
            }
            let opts = EnrollOptions {
                vars: host_vars,
                controller,
                token,
                ca_cert,
                name,
                data_dir,
                force,
                playbook_dir,
                systemctl,
                haproxy_socket,
            };
            match rt.block_on(enroll(opts)) {
                Ok(path) => {
                    println!(
                        "enrolled; start the agent with: vesemir-agent run --config {}",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e @ (EnrollError::Usage(_) | EnrollError::AlreadyEnrolled(_))) => {
                    exit_error(EX_USAGE, &e)
                }
                Err(e) => exit_error(1, &e),
            }
        }
        Command::Run { config } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return exit_error(EX_USAGE, &e),
            };
            tracing::info!(agent = %cfg.name, controller = %cfg.controller, "agent starting");
            // Once settled (connected, first heartbeat), give back the
            // pages only start-up used (footprint.rs).
            rt.spawn(async {
                tokio::time::sleep(std::time::Duration::from_secs(15)).await;
                let n = vesemir_agent::footprint::release_startup_pages();
                tracing::debug!(bytes = n, "start-up pages given back");
            });
            match rt.block_on(vesemir_agent::session::run(cfg, shutdown_signal(), notify)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => exit_error(1, &e),
            }
        }
        Command::Playbook { cmd } => rt.block_on(vesemir_agent::runner::cli::main(cmd)),
    }
}
