//! `vesemir-controller`: parse arguments, load and validate config before
//! binding anything, serve until SIGTERM/SIGINT, drain, exit 0.
//! Exit codes: 0 ok, 1 runtime failure, 64 bad usage or configuration.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use vesemir_controller::config::ControllerConfig;
use vesemir_controller::server::{self, InitOptions};
use vesemir_daemon::notify::Notifier;
use vesemir_daemon::{exit_error, init_logging, shutdown_signal, LogEnv, LogFormat, EX_USAGE};

#[derive(Parser)]
#[command(name = "vesemir-controller", version, about = "vesemir controller")]
struct Cli {
    /// Log format [default: json when systemd runs us (JOURNAL_STREAM or INVOCATION_ID), else text].
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create a data dir: CA, server certificate, controller.toml, database, admin token, cli.toml.
    Init {
        /// Directory to create (must not exist or be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// Extra DNS name or IP for the server certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// HTTP API listen address.
        #[arg(long, default_value = "127.0.0.1:7080")]
        api_listen: SocketAddr,
        /// QUIC (UDP) listen address for agents; enrollment uses TCP on the same address.
        #[arg(long, default_value = "0.0.0.0:7443")]
        quic_listen: SocketAddr,
        /// Agent heartbeat interval in seconds.
        #[arg(long, default_value_t = 10)]
        heartbeat_secs: u32,
        /// Agent certificate lifetime (e.g. 7d, 12h).
        #[arg(long, default_value = "7d")]
        agent_cert_ttl: humantime::Duration,
        /// Chef server URL (may carry /organizations/ORG).
        #[arg(long, requires_all = ["chef_client", "chef_key"], conflicts_with = "inventory")]
        chef_url: Option<String>,
        /// Chef client name the controller signs requests as.
        #[arg(long, requires = "chef_url")]
        chef_client: Option<String>,
        /// That client's RSA private key (PEM).
        #[arg(long, requires = "chef_url")]
        chef_key: Option<PathBuf>,
        /// A static inventory file (TOML or YAML) instead of Chef.
        #[arg(long)]
        inventory: Option<PathBuf>,
        /// Database: postgres://USER@HOST/DB (an existing, empty database;
        /// the schema is created) or sqlite://PATH. Default: SQLite in the
        /// data dir. Written to controller.toml as `database_url`.
        #[arg(long)]
        database_url: Option<String>,
        /// Join an existing controller: DIR is its data dir (or a copy of
        /// it); the CA, reset key, admin token and PostgreSQL database are
        /// shared, the server certificate is new.
        #[arg(long, value_name = "DIR")]
        join: Option<PathBuf>,
    },
    /// Run the controller.
    Serve {
        /// Path to controller.toml.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // Before any thread exists: this reads and removes NOTIFY_SOCKET & co.
    let notify = Notifier::take_from_env();
    // Sockets bound by a systemd .socket unit or a test harness; the
    // variables are removed so nothing this process starts inherits them.
    let inherited = vesemir_daemon::listen::Inherited::from_env();
    for var in ["LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PID"] {
        std::env::remove_var(var);
    }
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
        Command::Init {
            data_dir,
            sans,
            api_listen,
            quic_listen,
            heartbeat_secs,
            agent_cert_ttl,
            chef_url,
            chef_client,
            chef_key,
            inventory,
            database_url,
            join,
        } => {
            let joining = join.is_some();
            if let Some(url) = &database_url {
                if let Err(e) = vesemir_controller::config::check_database_url(url) {
                    eprintln!("error: --database-url: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            }
            if heartbeat_secs == 0 {
                eprintln!("error: --heartbeat-secs must be at least 1");
                return ExitCode::from(EX_USAGE);
            }
            let opts = InitOptions {
                data_dir,
                sans,
                api_listen,
                quic_listen,
                heartbeat_secs,
                agent_cert_ttl: agent_cert_ttl.into(),
                chef: match (chef_url, chef_client, chef_key) {
                    (Some(server_url), Some(client_name), Some(key)) => {
                        let client_key = match std::fs::canonicalize(&key) {
                            Ok(k) => k,
                            Err(e) => {
                                eprintln!("error: --chef-key {}: {e}", key.display());
                                return ExitCode::from(EX_USAGE);
                            }
                        };
                        Some(vesemir_controller::inventory::ChefConfig::new(
                            server_url,
                            client_name,
                            client_key,
                        ))
                    }
                    _ => None,
                },
                inventory: match inventory.map(|p| std::fs::canonicalize(&p).map_err(|e| (p, e))) {
                    None => None,
                    Some(Ok(p)) => Some(p),
                    Some(Err((p, e))) => {
                        eprintln!("error: --inventory {}: {e}", p.display());
                        return ExitCode::from(EX_USAGE);
                    }
                },
                database_url,
                join,
            };
            match rt.block_on(server::init(opts)) {
                Ok(out) => {
                    let dd = &out.data_dir;
                    println!("initialised {}", dd.root.display());
                    println!("  config:      {}", dd.config().display());
                    println!("  CA:          {}", dd.ca_cert().display());
                    println!("  admin token: {} (0600)", dd.admin_token().display());
                    println!("  CLI config:  {}", dd.cli_config().display());
                    println!();
                    if joining {
                        println!(
                            "joined: same CA, database and API tokens as the --join controller"
                        );
                    } else {
                        println!("admin token (shown once): {}", out.admin_token);
                    }
                    println!();
                    println!("next:");
                    println!(
                        "  vesemir-controller serve --config {}",
                        dd.config().display()
                    );
                    println!("  export VESEMIR_CONFIG={}", dd.cli_config().display());
                    println!("  vesemir tokens create --ttl 1h --uses 3");
                    ExitCode::SUCCESS
                }
                Err(e) => exit_error(1, &e),
            }
        }
        Command::Serve { config } => {
            let cfg = match ControllerConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return exit_error(EX_USAGE, &e),
            };
            let listeners = match inherited.and_then(server::Listeners::inherited) {
                Ok(l) => l,
                Err(e) => return exit_error(EX_USAGE, &e),
            };
            match rt.block_on(server::serve(cfg, listeners, shutdown_signal(), notify)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "controller failed");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
