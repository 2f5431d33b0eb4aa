//! A throwaway PostgreSQL cluster for tests: `initdb` + `pg_ctl` in a temp
//! dir, on a free loopback port, its unix socket in the temp dir, trust auth
//! (only loopback and the private socket dir can reach it), fsync off (the
//! cluster dies with the test). Dropping it runs `pg_ctl stop -m immediate`.
//!
//! initdb refuses to run as root, so as root the cluster belongs to the
//! `postgres` user (Debian's package creates it) and the commands run through
//! `runuser`. One file, no other harness module used, so it can move.
//!
//! When `initdb` is not installed, [`Postgres::start`] returns `None` and the
//! caller says SKIPPED; with `VESEMIR_REQUIRE_POSTGRES=1` (set by `.ci/run`,
//! which installs PostgreSQL) a missing `initdb` is an error instead, so CI
//! can't pass by skipping.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

use crate::procs::free_port;

/// The superuser initdb creates; trust auth, so no password.
const USER: &str = "vesemir";

/// A running cluster.
pub struct Postgres {
    bin: PathBuf,
    /// Holds `data/`, the socket and `server.log`.
    dir: tempfile::TempDir,
    port: u16,
    /// `Some("postgres")` when running as root.
    run_as: Option<String>,
    stopped: bool,
}

/// Where `initdb` lives: PATH first, then Debian's versioned directories.
pub fn find_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").is_file() && d.join("pg_ctl").is_file() {
                return Some(
                    std::fs::canonicalize(d.join("initdb"))
                        .ok()?
                        .parent()?
                        .into(),
                );
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn check(what: &str, out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

impl Postgres {
    /// Starts a cluster, or None (with a SKIPPED line on stderr) when
    /// PostgreSQL is not installed and not required.
    pub fn start() -> Result<Option<Postgres>> {
        let Some(bin) = find_bin() else {
            if std::env::var("VESEMIR_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                bail!("initdb not found (PATH, /usr/lib/postgresql/*/bin) but VESEMIR_REQUIRE_POSTGRES=1: apt-get install postgresql");
            }
            eprintln!("SKIPPED: PostgreSQL half of this test: initdb not found (install the postgresql package)");
            return Ok(None);
        };
        let run_as = nix::unistd::geteuid()
            .is_root()
            .then(|| "postgres".to_string());
        let dir = tempfile::Builder::new().prefix("vesemir-pg-").tempdir()?;
        if let Some(user) = &run_as {
            let u = nix::unistd::User::from_name(user)?.with_context(|| {
                format!("running as root, the cluster must belong to another user and `{user}` does not exist: useradd --system {user}")
            })?;
            nix::unistd::chown(dir.path(), Some(u.uid), Some(u.gid))?;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        let mut pg = Postgres {
            bin,
            dir,
            port: 0,
            run_as,
            stopped: true,
        };
        let data = pg.dir.path().join("data");
        check(
            "initdb",
            pg.command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C"])
                .args(["--no-sync", "--no-instructions"])
                .output()?,
        )?;
        // A port taken between free_port and the bind shows up as a failed
        // start: try a few.
        let mut last = None;
        for _ in 0..3 {
            pg.port = free_port()?;
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=200",
                pg.port,
                pg.dir.path().display()
            );
            let out = pg
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.dir.path().join("server.log"))
                .args(["-w", "-t", "30", "-o", &opts, "start"])
                .output()?;
            if out.status.success() {
                pg.stopped = false;
                return Ok(Some(pg));
            }
            let log = std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default();
            last = Some(format!(
                "pg_ctl start: {}{}\nserver.log:\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        bail!("{}", last.unwrap_or_default())
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data, socket, server.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a fresh database with a unique name and returns its URL, so
    /// cases sharing one cluster never see each other's rows.
    pub fn create_database(&self) -> Result<String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        check(
            "createdb",
            self.command("createdb")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
                .arg(&name)
                .output()?,
        )?;
        Ok(self.url(&name))
    }

    /// URL of database `db` over TCP on loopback.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the cluster at once (`-m immediate`: no checkpoint, it is
    /// thrown away).
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-w", "-t", "20", "-m", "immediate", "stop"])
                .output()?,
        )?;
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
    }
}
