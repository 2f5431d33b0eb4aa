//! The controller's store (sqlx). SQLite by default; written against
//! `sqlx::Any` with portable SQL (BIGINT Unix-ms times, TEXT ids, no
//! backend-specific types) so PostgreSQL only needs its own migrations
//! directory and the placeholder rewrite in [`Store::sql`].
//!
//! Architecture invariant: only this module (and its submodules) writes SQL.

mod deployments;
pub use deployments::*;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::borrow::Cow;
use std::sync::Once;
use std::time::Duration;

static MIGRATOR_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
// Equal in meaning to the SQLite ones, migration for migration (same numbers
// and names): the schema is portable already (TEXT, BIGINT, no booleans:
// flags are BIGINT 0/1 on both), so a change to one directory needs the
// same change in the other.
static MIGRATOR_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(#[source] sqlx::Error),
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The URL names a backend this build does not support yet.
    #[error("unsupported database URL {0}: use sqlite://PATH or postgres://USER@HOST/DB")]
    Unsupported(String),
}

// By hand rather than `#[from]`: every database error that `?` turns into a
// StoreError is counted in `vesemir_store_errors_total` on the way.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        crate::metrics::store_error(&e);
        StoreError::Db(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// An agent as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentRecord {
    /// Node name (certificate CN).
    pub name: String,
    /// Current certificate serial (hex).
    pub cert_serial: String,
    /// Current certificate SHA-256 (hex).
    pub cert_fingerprint: String,
    /// Current certificate expiry, Unix ms.
    pub cert_not_after: i64,
    /// Last reported agent version.
    pub version: String,
    /// Enrollment time, Unix ms.
    pub first_seen: i64,
    /// Last heartbeat written, Unix ms.
    pub last_seen: Option<i64>,
    /// Last remote address.
    pub remote_addr: Option<String>,
    /// Last facts, JSON.
    pub facts: Option<String>,
    /// When revoked, Unix ms.
    pub revoked_at: Option<i64>,
}

/// A buffered last-seen update, written in batches.
#[derive(Debug, Clone)]
pub struct LastSeen {
    /// Agent.
    pub name: String,
    /// Time of the heartbeat, Unix ms.
    pub at: i64,
    /// Agent version.
    pub version: String,
    /// Remote address.
    pub remote_addr: String,
    /// Facts, JSON.
    pub facts: String,
}

/// Result of [`Store::forget_agent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forget {
    /// Removed.
    Forgotten,
    /// Still trusted: revoke it first.
    NotRevoked,
    /// No such agent.
    NotFound,
}

/// Why an enrollment token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token.
    #[error(
        "unknown enrollment token: check for typos or create one with `vesemir tokens create`"
    )]
    Unknown,
    /// Expired.
    #[error("enrollment token expired: create a new one with `vesemir tokens create`")]
    Expired,
    /// No uses left.
    #[error(
        "enrollment token has no uses left: create a new one with `vesemir tokens create --uses N`"
    )]
    UsedUp,
}

fn agent_from_row(r: &AnyRow) -> Result<AgentRecord, sqlx::Error> {
    Ok(AgentRecord {
        name: r.try_get("name")?,
        cert_serial: r.try_get("cert_serial")?,
        cert_fingerprint: r.try_get("cert_fingerprint")?,
        cert_not_after: r.try_get("cert_not_after")?,
        version: r.try_get("version")?,
        first_seen: r.try_get("first_seen")?,
        last_seen: r.try_get("last_seen")?,
        remote_addr: r.try_get("remote_addr")?,
        facts: r.try_get("facts")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

const AGENT_COLUMNS: &str = "name, cert_serial, cert_fingerprint, cert_not_after, version, \
     first_seen, last_seen, remote_addr, facts, revoked_at";

impl Store {
    /// Connects and runs migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let _t = crate::metrics::store_op("connect");
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            return Err(StoreError::Unsupported(url.to_string()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        // WAL + NORMAL: a commit is appended to the WAL
                        // without an fsync (the WAL is synced at checkpoints).
                        // A process that dies (kill -9, OOM, panic) loses
                        // nothing committed; only an OS crash or power loss
                        // can drop the last commits, which leaves the
                        // database consistent and is covered by resume
                        // (job ids are derived from deployment and host, and
                        // the agent's journal answers a replayed id). With
                        // FULL, every host step paid an fsync and a 1,000-host
                        // fan-out was bound by the disk (bench/RESULTS.md).
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            MIGRATOR_SQLITE.run(&pool).await?;
        } else {
            // sqlx takes an advisory lock around PostgreSQL migrations, so
            // controllers starting together on one database migrate once.
            MIGRATOR_POSTGRES.run(&pool).await?;
        }
        Ok(Store { pool, backend })
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Rewrites `?` placeholders to `$N` for PostgreSQL; queries are written
    /// once, in SQLite's style.
    fn sql<'a>(&self, q: &'a str) -> Cow<'a, str> {
        match self.backend {
            Backend::Sqlite => Cow::Borrowed(q),
            Backend::Postgres => {
                let mut out = String::with_capacity(q.len() + 8);
                let mut n = 0;
                for c in q.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// Starts a transaction that writes. On PostgreSQL it is a plain `BEGIN`
    /// (READ COMMITTED): writers lock rows, not the database, and no
    /// transaction here depends on a read staying true until it writes: the
    /// one read-then-write, an enrollment claiming a node name, is an
    /// `INSERT … ON CONFLICT DO NOTHING` (atomic on both backends), and the
    /// others are `UPDATE`s whose row locks order concurrent writers. So no
    /// `SELECT … FOR UPDATE` or `LOCK TABLE` is needed. On SQLite it is `BEGIN IMMEDIATE`:
    /// the write lock is taken up front, where `busy_timeout` makes it wait
    /// its turn. A deferred transaction that reads first and then writes
    /// can't wait: when another writer committed in between, SQLite refuses
    /// it at once with `database is locked` whatever the timeout (that is how
    /// enrollments failed under load). Every transaction in the store writes,
    /// so every one starts here; single statements outside a transaction
    /// take the lock when they start and wait under `busy_timeout` already.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let _t = crate::metrics::store_op("write_tx");
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("ping");
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- API tokens ----

    /// Stores an API token's hash.
    pub async fn insert_api_token(
        &self,
        name: &str,
        token_hash: &str,
        role: &str,
    ) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("insert_api_token");
        sqlx::query(&self.sql(
            "INSERT INTO api_tokens (id, name, token_hash, role, created_at) VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(name)
        .bind(token_hash)
        .bind(role)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Finds an API token by hash: its (name, role).
    pub async fn find_api_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let _t = crate::metrics::store_op("find_api_token");
        let row = sqlx::query(&self.sql("SELECT name, role FROM api_tokens WHERE token_hash = ?"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("name")?, r.try_get("role")?)),
            None => None,
        })
    }

    // ---- enrollment tokens ----

    /// Stores an enrollment token's hash.
    pub async fn insert_enrollment_token(
        &self,
        token_hash: &str,
        expires_at: i64,
        uses: i64,
        created_by: &str,
    ) -> Result<String, StoreError> {
        let _t = crate::metrics::store_op("insert_enrollment_token");
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(&self.sql(
            "INSERT INTO enrollment_tokens (id, token_hash, expires_at, uses_left, created_by, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(&id)
        .bind(token_hash)
        .bind(expires_at)
        .bind(uses)
        .bind(created_by)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Takes one use of an enrollment token, atomically.
    pub async fn consume_enrollment_token(
        &self,
        token_hash: &str,
    ) -> Result<Result<(), TokenRefusal>, StoreError> {
        let _t = crate::metrics::store_op("consume_enrollment_token");
        let now = now_ms();
        let done = sqlx::query(&self.sql(
            "UPDATE enrollment_tokens SET uses_left = uses_left - 1 \
             WHERE token_hash = ? AND uses_left > 0 AND expires_at > ?",
        ))
        .bind(token_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        let row = sqlx::query(
            &self.sql("SELECT expires_at, uses_left FROM enrollment_tokens WHERE token_hash = ?"),
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(Err(match row {
            None => TokenRefusal::Unknown,
            Some(r) => {
                let expires: i64 = r.try_get("expires_at")?;
                if expires <= now {
                    TokenRefusal::Expired
                } else {
                    TokenRefusal::UsedUp
                }
            }
        }))
    }

    /// Gives a use back (the enrollment failed after the token was taken).
    pub async fn refund_enrollment_token(&self, token_hash: &str) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("refund_enrollment_token");
        sqlx::query(
            &self
                .sql("UPDATE enrollment_tokens SET uses_left = uses_left + 1 WHERE token_hash = ?"),
        )
        .bind(token_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- agents and certificates ----

    /// Records a certificate issued to an agent and makes it the agent's
    /// current one. An enrollment creates the agent and fails if the name
    /// exists (no token holder can take over a node name, revoked or not); a
    /// renewal only updates an agent that is not revoked. Returns false when
    /// nothing was recorded for those reasons.
    pub async fn record_certificate(
        &self,
        name: &str,
        serial: &str,
        fingerprint: &str,
        not_after_ms: i64,
        enrollment: bool,
    ) -> Result<bool, StoreError> {
        let _t = crate::metrics::store_op("record_certificate");
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let recorded = if enrollment {
            // One statement claims the name: on PostgreSQL a SELECT and then
            // an INSERT would let two enrollments of one name both see it
            // free, and the loser would fail with a key violation instead of
            // a clean refusal. ON CONFLICT is understood by both backends.
            sqlx::query(&self.sql(
                "INSERT INTO agents (name, cert_serial, cert_fingerprint, cert_not_after, version, first_seen) \
                 VALUES (?, ?, ?, ?, '', ?) ON CONFLICT (name) DO NOTHING",
            ))
            .bind(name)
            .bind(serial)
            .bind(fingerprint)
            .bind(not_after_ms)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        } else {
            sqlx::query(&self.sql(
                "UPDATE agents SET cert_serial = ?, cert_fingerprint = ?, cert_not_after = ? \
                 WHERE name = ? AND revoked_at IS NULL",
            ))
            .bind(serial)
            .bind(fingerprint)
            .bind(not_after_ms)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        };
        if !recorded {
            return Ok(false);
        }
        sqlx::query(&self.sql(
            "INSERT INTO certificates (serial, agent_name, fingerprint, not_after, issued_at, revoked) \
             VALUES (?, ?, ?, ?, ?, 0)",
        ))
        .bind(serial)
        .bind(name)
        .bind(fingerprint)
        .bind(not_after_ms)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a revoked agent so its name can be enrolled again (a rebuilt
    /// VM). Its certificates stay revoked.
    pub async fn forget_agent(&self, name: &str) -> Result<Forget, StoreError> {
        let _t = crate::metrics::store_op("forget_agent");
        let done =
            sqlx::query(&self.sql("DELETE FROM agents WHERE name = ? AND revoked_at IS NOT NULL"))
                .bind(name)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 1 {
            return Ok(Forget::Forgotten);
        }
        Ok(match self.get_agent(name).await? {
            Some(_) => Forget::NotRevoked,
            None => Forget::NotFound,
        })
    }

    /// All agents, by name.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let _t = crate::metrics::store_op("list_agents");
        let rows = sqlx::query(&format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(agent_from_row).collect::<Result<_, _>>()?)
    }

    /// One agent.
    pub async fn get_agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let _t = crate::metrics::store_op("get_agent");
        let row = sqlx::query(&self.sql(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE name = ?"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(agent_from_row).transpose()?)
    }

    /// Revokes an agent and every certificate ever issued to it. Returns the
    /// revoked serials, or None if there is no such agent.
    pub async fn revoke_agent(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        let _t = crate::metrics::store_op("revoke_agent");
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            &self.sql("UPDATE agents SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"),
        )
        .bind(now_ms())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let exists = sqlx::query(&self.sql("SELECT name FROM agents WHERE name = ?"))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Ok(None);
            }
        }
        sqlx::query(&self.sql("UPDATE certificates SET revoked = 1 WHERE agent_name = ?"))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(&self.sql("SELECT serial FROM certificates WHERE agent_name = ?"))
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(
            rows.iter()
                .map(|r| r.try_get::<String, _>("serial"))
                .collect::<Result<_, _>>()?,
        ))
    }

    /// Serials of all revoked certificates that have not expired yet.
    pub async fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        let _t = crate::metrics::store_op("revoked_serials");
        let rows = sqlx::query(
            &self.sql("SELECT serial FROM certificates WHERE revoked = 1 AND not_after > ?"),
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("serial"))
            .collect::<Result<_, _>>()?)
    }

    /// Writes a batch of last-seen updates in one transaction.
    pub async fn flush_last_seen(&self, batch: &[LastSeen]) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("flush_last_seen");
        if batch.is_empty() {
            return Ok(());
        }
        let q = self.sql(
            "UPDATE agents SET last_seen = ?, version = ?, remote_addr = ?, facts = ? WHERE name = ?",
        );
        let mut tx = self.write_tx().await?;
        for u in batch {
            sqlx::query(&q)
                .bind(u.at)
                .bind(&u.version)
                .bind(&u.remote_addr)
                .bind(&u.facts)
                .bind(&u.name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        (dir, Store::connect(&url).await.unwrap())
    }

    #[tokio::test]
    async fn enrollment_tokens_count_down_and_expire() {
        let (_d, s) = store().await;
        s.insert_enrollment_token("h1", now_ms() + 60_000, 2, "admin")
            .await
            .unwrap();
        s.insert_enrollment_token("h2", now_ms() - 1, 5, "admin")
            .await
            .unwrap();
        assert_eq!(s.consume_enrollment_token("h1").await.unwrap(), Ok(()));
        assert_eq!(s.consume_enrollment_token("h1").await.unwrap(), Ok(()));
        assert_eq!(
            s.consume_enrollment_token("h1").await.unwrap(),
            Err(TokenRefusal::UsedUp)
        );
        assert_eq!(
            s.consume_enrollment_token("h2").await.unwrap(),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            s.consume_enrollment_token("nope").await.unwrap(),
            Err(TokenRefusal::Unknown)
        );
    }

    #[tokio::test]
    async fn revocation_covers_every_certificate_of_the_agent() {
        let (_d, s) = store().await;
        let far = now_ms() + 3_600_000;
        assert!(s
            .record_certificate("web-1", "aa", "f1", far, true)
            .await
            .unwrap());
        // The name is taken: a second enrollment records nothing.
        assert!(!s
            .record_certificate("web-1", "zz", "f9", far, true)
            .await
            .unwrap());
        s.record_certificate("web-1", "bb", "f2", far, false)
            .await
            .unwrap();
        s.record_certificate("web-2", "cc", "f3", far, true)
            .await
            .unwrap();
        let mut serials = s.revoke_agent("web-1").await.unwrap().unwrap();
        serials.sort();
        assert_eq!(serials, vec!["aa", "bb"]);
        let mut revoked = s.revoked_serials().await.unwrap();
        revoked.sort();
        assert_eq!(revoked, vec!["aa", "bb"]);
        assert!(s.revoke_agent("ghost").await.unwrap().is_none());
        let a = s.get_agent("web-1").await.unwrap().unwrap();
        assert_eq!(a.cert_serial, "bb");
        assert!(a.revoked_at.is_some());
        // Revoked: no renewal, no re-enrollment until an admin forgets it.
        assert!(!s
            .record_certificate("web-1", "dd", "f4", far, false)
            .await
            .unwrap());
        assert!(!s
            .record_certificate("web-1", "dd", "f4", far, true)
            .await
            .unwrap());
        assert_eq!(s.forget_agent("web-2").await.unwrap(), Forget::NotRevoked);
        assert_eq!(s.forget_agent("ghost").await.unwrap(), Forget::NotFound);
        assert_eq!(s.forget_agent("web-1").await.unwrap(), Forget::Forgotten);
        assert!(s
            .record_certificate("web-1", "ee", "f5", far, true)
            .await
            .unwrap());
        // Its old certificates stay revoked.
        assert!(s
            .revoked_serials()
            .await
            .unwrap()
            .contains(&"aa".to_string()));
    }

    #[tokio::test]
    async fn last_seen_is_written_in_batches() {
        let (_d, s) = store().await;
        s.record_certificate("a", "1", "f", now_ms() + 1000, true)
            .await
            .unwrap();
        s.flush_last_seen(&[LastSeen {
            name: "a".into(),
            at: 42,
            version: "0.1.0".into(),
            remote_addr: "127.0.0.1:1".into(),
            facts: "{}".into(),
        }])
        .await
        .unwrap();
        let a = s.get_agent("a").await.unwrap().unwrap();
        assert_eq!(a.last_seen, Some(42));
        assert_eq!(a.version, "0.1.0");
    }
}
