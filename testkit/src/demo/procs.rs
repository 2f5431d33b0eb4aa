//! Finding the sibling binaries a local fleet runs.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The workspace binaries a local fleet runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `vesemir-controller`.
    pub controller: PathBuf,
    /// `vesemir-agent`.
    pub agent: PathBuf,
    /// `vesemir-sample-app`, the app the demo deploys.
    pub sample_app: PathBuf,
    /// `vesemir`, the CLI itself (absent when only the library is used).
    pub cli: Option<PathBuf>,
}

impl Binaries {
    /// Looks in `dir` if given, else `$VESEMIR_BIN_DIR`, else next to the
    /// running executable (and, from a test binary in `target/*/deps`, in
    /// its parent).
    pub fn find(dir: Option<&Path>) -> Result<Binaries> {
        let mut dirs = Vec::new();
        if let Some(d) = dir {
            dirs.push(d.to_owned());
        } else if let Some(d) = std::env::var_os("VESEMIR_BIN_DIR") {
            dirs.push(PathBuf::from(d));
        } else {
            let exe = std::env::current_exe().context("cannot find the running executable")?;
            if let Some(d) = exe.parent() {
                dirs.push(d.to_owned());
                if d.ends_with("deps") {
                    if let Some(p) = d.parent() {
                        dirs.push(p.to_owned());
                    }
                }
            }
        }
        let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
        let need = |name: &str| {
            find(name).with_context(|| {
                format!(
                    "{name} not found in {}: from a checkout run `cargo build --workspace --bins` first; from packages install vesemir-controller and vesemir-agent (or set VESEMIR_BIN_DIR)",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        };
        Ok(Binaries {
            controller: need("vesemir-controller")?,
            agent: need("vesemir-agent")?,
            sample_app: need("vesemir-sample-app")?,
            cli: find("vesemir"),
        })
    }
}
