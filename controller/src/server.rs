//! `init` (create a data dir) and `serve` (run the controller until a
//! shutdown signal): the library entry points the binary calls.

use crate::config::{ControllerConfig, DataDir};
use crate::enroll::token_hash;
use crate::fleet::Fleet;
use crate::http::{self, AppState};
use crate::pki::{Ca, PkiError};
use crate::quic::{self, ServerTls};
use crate::store::{Store, StoreError};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use vesemir_daemon::notify::Notifier;

/// Options of `vesemir-controller init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Directory to create.
    pub data_dir: PathBuf,
    /// Extra names/IPs for the server certificate.
    pub sans: Vec<String>,
    /// HTTP API listen address.
    pub api_listen: SocketAddr,
    /// QUIC listen address.
    pub quic_listen: SocketAddr,
    /// Heartbeat interval, seconds.
    pub heartbeat_secs: u32,
    /// Agent certificate lifetime.
    pub agent_cert_ttl: Duration,
    /// `[chef]` section, if given.
    pub chef: Option<crate::inventory::ChefConfig>,
    /// Static inventory file, if given.
    pub inventory: Option<PathBuf>,
    /// `database_url` for controller.toml; None keeps SQLite in the data dir
    /// (or, with `join`, the joined controller's URL).
    pub database_url: Option<String>,
    /// Join the controller whose data dir this is: same CA, reset key,
    /// admin token file and (PostgreSQL) database; a server certificate of
    /// its own. API and enrollment tokens live in the database already.
    pub join: Option<PathBuf>,
}

/// What `init` produced.
#[derive(Debug)]
pub struct InitOutput {
    /// The admin token (shown once).
    pub admin_token: String,
    /// Paths.
    pub data_dir: DataDir,
}

/// Errors of init and serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data dir already has content.
    #[error("{0} already exists and is not empty; refusing to overwrite it (choose another --data-dir or remove it)")]
    DataDirExists(PathBuf),
    /// Filesystem.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// PKI.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Endpoint.
    #[error(transparent)]
    Endpoint(#[from] quic::EndpointError),
    /// `[[freeze]]` or `[notify]` unusable (checked at load too; this is
    /// a config built in code, or a secret file changed since).
    #[error("controller.toml {section}: {message}")]
    Policy {
        /// `freeze` or `notify`.
        section: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// Inventory source unusable.
    #[error("inventory: {0}")]
    Inventory(String),
    /// `init --join` refused.
    #[error("cannot join {from}: {message}")]
    Join {
        /// The data dir given to --join.
        from: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Binding a listener.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a file with the given mode, creating it exclusively.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn read(path: &Path) -> Result<String, ServerError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// Creates a data dir: CA, server certificate, config, database, admin token, CLI config.
pub async fn init(opts: InitOptions) -> Result<InitOutput, ServerError> {
    let root = &opts.data_dir;
    if root.exists() {
        let mut entries = std::fs::read_dir(root).map_err(io_err(root))?;
        if entries.next().is_some() {
            return Err(ServerError::DataDirExists(root.clone()));
        }
    } else {
        std::fs::create_dir_all(root).map_err(io_err(root))?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(root))?;
    }
    let root = std::fs::canonicalize(root).map_err(io_err(root))?;
    let dd = DataDir { root: root.clone() };

    // Joining: the CA (agents trust one CA whichever controller they
    // reach), the reset key and the database are shared; only the server
    // certificate and the listen addresses are this controller's own.
    let joined = match &opts.join {
        None => None,
        Some(from) => Some(read_join_source(from, opts.database_url.as_deref())?),
    };
    let (ca, ca_key_pem) = match &joined {
        None => Ca::generate()?,
        Some(j) => (Ca::load(&j.ca_pem, &j.ca_key_pem)?, j.ca_key_pem.clone()),
    };
    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for s in &opts.sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    let (server_pem, server_key_pem) = ca.issue_server(&sans)?;
    write_file(&dd.ca_cert(), ca.cert_pem.as_bytes(), 0o644)?;
    write_file(&dd.ca_key(), ca_key_pem.as_bytes(), 0o600)?;
    write_file(&dd.server_cert(), server_pem.as_bytes(), 0o644)?;
    write_file(&dd.server_key(), server_key_pem.as_bytes(), 0o600)?;
    match &joined {
        None => write_file(&dd.reset_key(), &rand::random::<[u8; 32]>(), 0o600)?,
        Some(j) => write_file(&dd.reset_key(), &j.reset_key, 0o600)?,
    }

    let mut cfg = ControllerConfig::new(root.clone());
    cfg.api_listen = opts.api_listen;
    cfg.quic_listen = opts.quic_listen;
    cfg.heartbeat_secs = opts.heartbeat_secs;
    cfg.agent_cert_ttl = opts.agent_cert_ttl;
    cfg.quic_idle_timeout = cfg
        .quic_idle_timeout
        .max(Duration::from_secs(u64::from(opts.heartbeat_secs) * 3));
    cfg.chef = opts.chef;
    cfg.inventory = opts.inventory;
    cfg.database_url = match &joined {
        None => opts.database_url,
        Some(j) => Some(j.database_url.clone()),
    };
    write_file(&dd.config(), cfg.to_toml().as_bytes(), 0o644)?;

    let store = Store::connect(&cfg.database_url()).await?;
    let admin_token = match &joined {
        // The admin token's hash is in the shared database already.
        Some(j) => j.admin_token.clone(),
        None => {
            let t = format!("vsm_adm_{}", hex::encode(rand::random::<[u8; 24]>()));
            store
                .insert_api_token("admin", &token_hash(&t), "admin")
                .await?;
            t
        }
    };
    store.close().await;
    write_file(
        &dd.admin_token(),
        format!("{admin_token}\n").as_bytes(),
        0o600,
    )?;

    let api_host = if opts.api_listen.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), opts.api_listen.port())
    } else {
        opts.api_listen
    };
    let cli = format!(
        "# written by vesemir-controller init\nurl = \"http://{api_host}\"\ntoken_file = \"{}\"\n",
        dd.admin_token().display()
    );
    write_file(&dd.cli_config(), cli.as_bytes(), 0o600)?;
    Ok(InitOutput {
        admin_token,
        data_dir: dd,
    })
}

/// What `init --join` takes from the first controller's data dir.
struct JoinSource {
    ca_pem: String,
    ca_key_pem: String,
    reset_key: Vec<u8>,
    admin_token: String,
    database_url: String,
}

fn read_join_source(from: &Path, url: Option<&str>) -> Result<JoinSource, ServerError> {
    let refuse = |message: String| ServerError::Join {
        from: from.to_owned(),
        message,
    };
    let cfg = ControllerConfig::load(&from.join("controller.toml")).map_err(|e| {
        refuse(format!(
            "{e} (give the data dir of a controller made by `init`)"
        ))
    })?;
    let database_url = url.map(str::to_owned).unwrap_or_else(|| cfg.database_url());
    if !database_url.starts_with("postgres") {
        return Err(refuse(format!(
            "its database is {database_url}: controllers share one PostgreSQL database; \
             init the first one with --database-url postgres://… (or pass that URL here)"
        )));
    }
    let src = DataDir { root: cfg.data_dir };
    Ok(JoinSource {
        ca_pem: read(&src.ca_cert())?,
        ca_key_pem: read(&src.ca_key())?,
        reset_key: std::fs::read(src.reset_key()).map_err(io_err(&src.reset_key()))?,
        admin_token: read(&src.admin_token())?.trim().to_string(),
        database_url,
    })
}

/// Sockets handed to [`serve`] already bound (a systemd `.socket` unit, a
/// test harness, an embedding program); each one missing is bound from the
/// config's address. Pre-bound sockets let the caller pick free ports
/// without racing other processes for them between choosing and binding.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The HTTP API (TCP), instead of `api_listen`.
    pub api: Option<std::net::TcpListener>,
    /// Enrollment (TCP, on the QUIC port number), instead of `quic_listen`.
    pub enroll: Option<std::net::TcpListener>,
    /// Agent connections (UDP, QUIC), instead of `quic_listen`.
    pub quic: Option<std::net::UdpSocket>,
}

impl Listeners {
    /// The names [`Listeners::inherited`] takes, in `LISTEN_FDNAMES`.
    pub const NAMES: [&'static str; 3] = ["api", "enroll", "quic"];

    /// The sockets in `LISTEN_FDS` (systemd socket activation), by name:
    /// `api`, `enroll`, `quic`. Any other inherited socket is an error.
    pub fn inherited(
        mut set: vesemir_daemon::listen::Inherited,
    ) -> Result<Listeners, vesemir_daemon::listen::ListenError> {
        let l = Listeners {
            api: set.tcp("api")?,
            enroll: set.tcp("enroll")?,
            quic: set.udp("quic")?,
        };
        set.finish(&Self::NAMES)?;
        Ok(l)
    }

    fn api_addr(&self, cfg: &ControllerConfig) -> SocketAddr {
        let bound = self.api.as_ref().and_then(|l| l.local_addr().ok());
        bound.unwrap_or(cfg.api_listen)
    }

    fn quic_addr(&self, cfg: &ControllerConfig) -> SocketAddr {
        let bound = self.quic.as_ref().and_then(|l| l.local_addr().ok());
        bound.unwrap_or(cfg.quic_listen)
    }
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, ServerError> {
    std::net::UdpSocket::bind(addr).map_err(|source| ServerError::Bind { addr, source })
}

/// `inherited` as a tokio listener, or a new one bound to `addr`.
async fn tcp_listener(
    inherited: Option<std::net::TcpListener>,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, ServerError> {
    let bind_err = |source| ServerError::Bind { addr, source };
    match inherited {
        Some(l) => {
            l.set_nonblocking(true).map_err(bind_err)?;
            tokio::net::TcpListener::from_std(l).map_err(bind_err)
        }
        None => tokio::net::TcpListener::bind(addr).await.map_err(bind_err),
    }
}

/// Runs the controller until `shutdown` resolves, then closes agent
/// connections cleanly (they reconnect later) and flushes the store.
/// `notify` tells systemd `READY=1` once every listener is bound and the
/// database is migrated, then keeps its status and watchdog fed (see
/// [`report_to_systemd`]).
pub async fn serve(
    cfg: ControllerConfig,
    mut listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    notify: Notifier,
) -> Result<(), ServerError> {
    // Checked at load; parsed again here so a bad one stops the start
    // before anything is bound.
    let freeze =
        crate::freeze::FreezeCalendar::new(&cfg.freeze).map_err(|e| ServerError::Policy {
            section: "[[freeze]]",
            message: e.to_string(),
        })?;
    let notify_secret = match &cfg.notify {
        None => None,
        Some(n) => Some(
            crate::notify::read_secret(&n.secret_file).map_err(|message| ServerError::Policy {
                section: "[notify] secret_file",
                message,
            })?,
        ),
    };
    let dd = DataDir {
        root: cfg.data_dir.clone(),
    };
    let tls = ServerTls {
        ca_pem: read(&dd.ca_cert())?,
        cert_pem: read(&dd.server_cert())?,
        key_pem: read(&dd.server_key())?,
    };
    let ca = Arc::new(Ca::load(&tls.ca_pem, &read(&dd.ca_key())?)?);
    let reset_key = std::fs::read(dd.reset_key()).map_err(io_err(&dd.reset_key()))?;
    let inventory = load_inventory(&cfg)?;
    let store = Store::connect(&cfg.database_url()).await?;
    let fleet = Fleet::new(
        store.clone(),
        Duration::from_secs(u64::from(cfg.heartbeat_secs)),
    )
    .await?;

    let (api_addr, quic_addr) = (listeners.api_addr(&cfg), listeners.quic_addr(&cfg));
    let inherited: Vec<&str> = [
        ("api", listeners.api.is_some()),
        ("enroll", listeners.enroll.is_some()),
        ("quic", listeners.quic.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, given)| given.then_some(n))
    .collect();
    if !inherited.is_empty() {
        tracing::info!(sockets = %inherited.join(","), "using sockets bound by the parent (LISTEN_FDS)");
    }
    let endpoint = quic::endpoint(
        listeners
            .quic
            .take()
            .map_or_else(|| bind_udp(cfg.quic_listen), Ok)?,
        &tls,
        fleet.revoked_set(),
        &reset_key,
        cfg.quic_idle_timeout,
    )?;
    let enroll_listener = tcp_listener(listeners.enroll.take(), cfg.quic_listen).await?;
    let api_listener = tcp_listener(listeners.api.take(), cfg.api_listen).await?;
    tracing::info!(
        api = %api_addr,
        quic = %quic_addr,
        data_dir = %cfg.data_dir.display(),
        "controller serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    let quic_task = tokio::spawn(quic::serve(
        endpoint.clone(),
        fleet.clone(),
        ca.clone(),
        cfg.agent_cert_ttl,
    ));
    let enroll_task = tokio::spawn(crate::enroll::serve(
        enroll_listener,
        crate::enroll::acceptor(&tls)?,
        store.clone(),
        ca.clone(),
        cfg.agent_cert_ttl,
    ));
    let flusher = tokio::spawn(
        fleet
            .clone()
            .run_flusher(cfg.last_seen_flush, stopped(stop_rx.clone())),
    );
    if cfg.database_url().starts_with("postgres") {
        // Other controllers may share this database: their revocations
        // reach this one within 2 s.
        tokio::spawn(fleet.clone().run_revocation_sync(Duration::from_secs(2)));
    }
    let inventory = inventory.map(Arc::new);
    // Webhooks: a background sender with a bounded queue; deliveries still
    // queued or in flight at shutdown are dropped.
    let webhook_stop = tokio_util::sync::CancellationToken::new();
    let mut webhook_task = None;
    let webhooks = match (&cfg.notify, notify_secret) {
        (Some(n), Some(secret)) => {
            let http = crate::notify::Notifier::http_client(n.timeout).map_err(|e| {
                ServerError::Policy {
                    section: "[notify]",
                    message: format!("cannot build the webhook HTTP client: {e}"),
                }
            })?;
            let (notifier, task) = crate::notify::Notifier::start(
                crate::notify::Settings::from_config(n, secret),
                http,
                webhook_stop.clone(),
            );
            webhook_task = Some(task);
            tracing::info!(
                defaults = n.webhooks.len(),
                queue = n.queue,
                "webhooks enabled"
            );
            Some(crate::deploy::Webhooks {
                notifier,
                defaults: n.webhooks.clone(),
            })
        }
        _ => None,
    };
    if !freeze.windows().is_empty() {
        tracing::info!(windows = freeze.windows().len(), "freeze windows in force");
    }
    let deployments = crate::deploy::Deployments::new(
        store.clone(),
        fleet.clone(),
        inventory.clone(),
        crate::deploy::Policies { freeze, webhooks },
    );
    let state = Arc::new(AppState {
        store: store.clone(),
        fleet: fleet.clone(),
        timeout: cfg.api_timeout,
        inventory,
        deployments: deployments.clone(),
    });
    let app = http::router(state, cfg.api_body_limit);
    let api_stop = stopped(stop_rx.clone());
    let api_task = tokio::spawn(async move {
        axum::serve(api_listener, app)
            .with_graceful_shutdown(api_stop)
            .await
    });

    // Deployments left running by a previous process pick up where they
    // were (agents reconnect within seconds; host runs wait for them).
    match deployments.resume_all().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "resumed unfinished deployments"),
        Err(e) => tracing::error!(error = %e, "cannot list unfinished deployments"),
    }
    tokio::spawn(deployments.clone().run_reconciler(Duration::from_secs(10)));

    // Listening, migrated (Store::connect), resumed: ready.
    notify.ready(&format!(
        "serving: API {}, agents {}; {}",
        api_addr,
        quic_addr,
        status_line(&fleet, &deployments)
    ));
    let reporter = notify.is_enabled().then(|| {
        tokio::spawn(report_to_systemd(
            notify.clone(),
            fleet.clone(),
            deployments.clone(),
        ))
    });

    shutdown.await;
    tracing::info!("shutting down: closing agent connections");
    if let Some(r) = reporter {
        r.abort();
    }
    notify.stopping("stopping: draining deployments and agent connections");
    // Orchestrators stop where they are (their state is stored) before the
    // agent connections close, so no host is marked failed by the shutdown.
    deployments.stop_all();
    if !deployments.wait_stopped(Duration::from_secs(10)).await {
        tracing::warn!("some deployments did not stop within 10s; they resume on the next start");
    }
    webhook_stop.cancel();
    if let Some(t) = webhook_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let _ = stop_tx.send(true);
    fleet.close_all();
    endpoint.close(
        vesemir_protocol::control::CloseReason::Shutdown
            .code()
            .into(),
        b"controller shutting down",
    );
    enroll_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    let _ = flusher.await;
    quic_task.abort();
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// What `systemctl status vesemir-controller` shows.
fn status_line(fleet: &Fleet, deployments: &crate::deploy::Deployments) -> String {
    format!(
        "{} agents connected, {} deployments running",
        fleet.connected_count(),
        deployments.running_count()
    )
}

/// Keeps systemd's `STATUS=` current and, when `WatchdogSec=` is set,
/// sends `WATCHDOG=1` every half period. The ping comes from a task on the
/// same runtime as everything else and reads the fleet and deployment
/// registries (the locks every heartbeat and orchestrator take): when the
/// runtime is starved or those locks are stuck, this task is the first to
/// stop, the pings stop, and systemd restarts the controller (deployments
/// resume from the store). The database is deliberately not a condition:
/// a restart does not bring back an unreachable PostgreSQL, `/readyz`
/// reports that instead.
async fn report_to_systemd(
    notify: Notifier,
    fleet: Arc<Fleet>,
    deployments: Arc<crate::deploy::Deployments>,
) {
    let every = notify.watchdog_every().unwrap_or(Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let status = status_line(&fleet, &deployments);
        if notify.watchdog_every().is_some() {
            notify.watchdog(Some(&status));
        } else {
            notify.status(&status);
        }
    }
}

/// The inventory the config names, if any.
pub fn load_inventory(
    cfg: &ControllerConfig,
) -> Result<Option<crate::inventory::InventorySource>, ServerError> {
    use crate::inventory::{ChefInventory, InventorySource, StaticInventory};
    if let Some(path) = &cfg.inventory {
        let inv = StaticInventory::load(path).map_err(|e| ServerError::Inventory(e.to_string()))?;
        return Ok(Some(InventorySource::Static(inv)));
    }
    if let Some(chef) = &cfg.chef {
        let inv = ChefInventory::new(chef).map_err(|e| ServerError::Inventory(e.to_string()))?;
        return Ok(Some(InventorySource::Chef(inv)));
    }
    Ok(None)
}
