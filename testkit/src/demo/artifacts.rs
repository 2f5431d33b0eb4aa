//! Changeset artifacts: small tar.gz files built in the fleet's dir and
//! served over plain HTTP on loopback from inside this process, where the
//! agents' `get_url` fetches them.

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A changeset as the deployment request carries it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Changeset {
    /// Release version (the sample app serves it on `GET /`).
    pub version: String,
    /// Where the artifact is.
    pub url: String,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// Builds a gzipped tarball from `(path, contents)` entries.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(enc);
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, path, *data)?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A tiny HTTP/1.1 server answering GET for registered paths.
pub(crate) struct ArtifactServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Path → body.
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// The accept loop; aborted on drop.
    task: JoinHandle<()>,
}

impl ArtifactServer {
    /// Binds a free loopback port and starts serving.
    pub async fn start() -> Result<ArtifactServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the artifact server")?;
        let addr = listener.local_addr()?;
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let shared = files.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let files = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, files).await;
                });
            }
        });
        Ok(ArtifactServer { addr, files, task })
    }

    /// Serves `body` at `path`; returns its URL.
    pub fn put(&self, path: &str, body: Vec<u8>) -> String {
        self.files
            .lock()
            .expect("artifact files")
            .insert(path.to_string(), body);
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for ArtifactServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request per connection, then close.
async fn serve(mut conn: TcpStream, files: Arc<Mutex<HashMap<String, Vec<u8>>>>) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let body = files.lock().expect("artifact files").get(path).cloned();
    let (status, body) = match (method, body) {
        ("GET", Some(b)) => ("200 OK", b),
        ("GET", None) => ("404 Not Found", b"not found\n".to_vec()),
        _ => ("405 Method Not Allowed", b"GET only\n".to_vec()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(resp.as_bytes()).await?;
    conn.write_all(&body).await?;
    conn.shutdown().await?;
    Ok(())
}
