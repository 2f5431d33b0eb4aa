//! Deployments, their hosts, logs and HAProxy actions.

use super::{now_ms, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A deployment as stored.
#[derive(Debug, Clone)]
pub struct DeploymentRow {
    /// Id.
    pub id: String,
    /// Application.
    pub application: String,
    /// Environment.
    pub environment: String,
    /// Team.
    pub team: String,
    /// pending, running, succeeded, failed, aborted, cancelled.
    pub status: String,
    /// Token name of the requester.
    pub requested_by: String,
    /// The whole request, JSON.
    pub request: String,
    /// Changeset version, for listings and rollback.
    pub changeset_version: Option<String>,
    /// Query sent to the inventory for the app's hosts.
    pub query: Option<String>,
    /// Query for the HAProxy VMs.
    pub haproxy_query: Option<String>,
    /// HAProxy VM names, JSON array.
    pub haproxy_vms: Option<String>,
    /// Number of hosts.
    pub hosts_total: i64,
    /// Cancel was requested.
    pub cancel_requested: bool,
    /// Times, Unix ms.
    pub created_at: i64,
    /// Start.
    pub started_at: Option<i64>,
    /// End.
    pub finished_at: Option<i64>,
    /// Why it failed or aborted.
    pub error: Option<String>,
    /// The freeze override it was submitted with, JSON
    /// ([`vesemir_api::FreezeOverrideView`]); None outside a freeze.
    pub freeze_override: Option<String>,
}

/// A host of a deployment as stored.
#[derive(Debug, Clone)]
pub struct HostRow {
    /// Position in the rollout order.
    pub position: i64,
    /// Node name.
    pub name: String,
    /// Address.
    pub address: String,
    /// HAProxy server name.
    pub server_name: String,
    /// pending, running, succeeded, failed, unreachable, skipped.
    pub status: String,
    /// Current step while running.
    pub step: Option<String>,
    /// The playbook job id (the agent journal's key).
    pub job_id: Option<String>,
    /// in, out or maint: the HAProxy state we left the server in.
    pub rotation: String,
    /// Counters.
    pub stats: [i64; 5],
    /// Start.
    pub started_at: Option<i64>,
    /// End.
    pub finished_at: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A log line or event of a deployment.
#[derive(Debug, Clone)]
pub struct LogRow {
    /// Order within the deployment.
    pub seq: i64,
    /// Time, Unix ms.
    pub ts: i64,
    /// Host, if any.
    pub host: Option<String>,
    /// log, task_started, task_result, step, host_finished, haproxy, deployment.
    pub kind: String,
    /// The event's fields, JSON object.
    pub data: String,
}

/// One HAProxy runtime API action taken.
#[derive(Debug, Clone)]
pub struct HaproxyActionRow {
    /// Time, Unix ms.
    pub at: i64,
    /// The app host whose server it was.
    pub host: String,
    /// The HAProxy VM.
    pub haproxy_vm: String,
    /// Backend.
    pub backend: String,
    /// Server.
    pub server: String,
    /// drain, maint, ready, weight N%, wait_drained.
    pub action: String,
    /// Whether it worked.
    pub ok: bool,
    /// Reply or error.
    pub detail: Option<String>,
}

/// Result of inserting a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// New.
    Created,
    /// The idempotency key was seen before: this deployment.
    Existing(String),
    /// Another deployment of the same application and environment runs.
    Running(String),
}

/// A new deployment.
pub struct NewDeployment<'a> {
    /// Id.
    pub id: &'a str,
    /// Application.
    pub application: &'a str,
    /// Environment.
    pub environment: &'a str,
    /// Team.
    pub team: &'a str,
    /// Requester.
    pub requested_by: &'a str,
    /// Idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// Request JSON.
    pub request: &'a str,
    /// Changeset version.
    pub changeset_version: Option<&'a str>,
    /// The freeze override's record, JSON, when it overrides one.
    pub freeze_override: Option<&'a str>,
}

/// A host in a new plan.
pub struct NewHost {
    /// Node name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Server name.
    pub server_name: String,
    /// pending or unreachable.
    pub status: String,
    /// Error for unreachable hosts.
    pub error: Option<String>,
}

const DEPLOYMENT_COLUMNS: &str = "id, application, environment, team, status, requested_by, request, \
    changeset_version, query, haproxy_query, haproxy_vms, hosts_total, cancel_requested, created_at, \
    started_at, finished_at, error, freeze_override";

const HOST_COLUMNS: &str = "position, name, address, server_name, status, step, job_id, rotation, \
    ok, changed, failed, unreachable, skipped, started_at, finished_at, error";

fn deployment_from_row(r: &AnyRow) -> Result<DeploymentRow, sqlx::Error> {
    Ok(DeploymentRow {
        id: r.try_get("id")?,
        application: r.try_get("application")?,
        environment: r.try_get("environment")?,
        team: r.try_get("team")?,
        status: r.try_get("status")?,
        requested_by: r.try_get("requested_by")?,
        request: r.try_get("request")?,
        changeset_version: r.try_get("changeset_version")?,
        query: r.try_get("query")?,
        haproxy_query: r.try_get("haproxy_query")?,
        haproxy_vms: r.try_get("haproxy_vms")?,
        hosts_total: r.try_get("hosts_total")?,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: r.try_get("created_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        error: r.try_get("error")?,
        freeze_override: r.try_get("freeze_override")?,
    })
}

fn host_from_row(r: &AnyRow) -> Result<HostRow, sqlx::Error> {
    Ok(HostRow {
        position: r.try_get("position")?,
        name: r.try_get("name")?,
        address: r.try_get("address")?,
        server_name: r.try_get("server_name")?,
        status: r.try_get("status")?,
        step: r.try_get("step")?,
        job_id: r.try_get("job_id")?,
        rotation: r.try_get("rotation")?,
        stats: [
            r.try_get("ok")?,
            r.try_get("changed")?,
            r.try_get("failed")?,
            r.try_get("unreachable")?,
            r.try_get("skipped")?,
        ],
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        error: r.try_get("error")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.message().contains("UNIQUE constraint failed")
                || d.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}

/// The key that is unique among running deployments.
fn active_key(application: &str, environment: &str) -> String {
    format!("{application}/{environment}")
}

impl Store {
    /// Inserts a pending deployment, atomically enforcing idempotency and
    /// "one running deployment per application and environment".
    pub async fn insert_deployment(&self, d: &NewDeployment<'_>) -> Result<Inserted, StoreError> {
        let _t = crate::metrics::store_op("insert_deployment");
        if let Some(key) = d.idempotency_key {
            if let Some(existing) = self.deployment_by_idempotency_key(key).await? {
                return Ok(Inserted::Existing(existing));
            }
        }
        let res = sqlx::query(&self.sql(
            "INSERT INTO deployments (id, application, environment, team, status, requested_by, \
             idempotency_key, request, changeset_version, created_at, active_key, freeze_override) \
             VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(d.id)
        .bind(d.application)
        .bind(d.environment)
        .bind(d.team)
        .bind(d.requested_by)
        .bind(d.idempotency_key)
        .bind(d.request)
        .bind(d.changeset_version)
        .bind(now_ms())
        .bind(active_key(d.application, d.environment))
        .bind(d.freeze_override)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(Inserted::Created),
            Err(e) if is_unique_violation(&e) => {
                // Either a concurrent request with the same key won, or a
                // deployment of this app and env is running.
                if let Some(key) = d.idempotency_key {
                    if let Some(existing) = self.deployment_by_idempotency_key(key).await? {
                        return Ok(Inserted::Existing(existing));
                    }
                }
                let row = sqlx::query(&self.sql("SELECT id FROM deployments WHERE active_key = ?"))
                    .bind(active_key(d.application, d.environment))
                    .fetch_optional(&self.pool)
                    .await?;
                match row {
                    Some(r) => Ok(Inserted::Running(r.try_get("id")?)),
                    None => Err(StoreError::Db(e)),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The deployment submitted with `key`, if any.
    pub async fn deployment_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(&self.sql("SELECT id FROM deployments WHERE idempotency_key = ?"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("id")?),
            None => None,
        })
    }

    /// One deployment.
    pub async fn get_deployment(&self, id: &str) -> Result<Option<DeploymentRow>, StoreError> {
        let _t = crate::metrics::store_op("get_deployment");
        let row = sqlx::query(&self.sql(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(deployment_from_row).transpose()?)
    }

    /// Deployments, newest first, filtered; with the total count.
    pub async fn list_deployments(
        &self,
        application: Option<&str>,
        environment: Option<&str>,
        status: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<DeploymentRow>, i64), StoreError> {
        let _t = crate::metrics::store_op("list_deployments");
        // NULL-tolerant filters keep this one static statement.
        let filter = "(? IS NULL OR application = ?) AND (? IS NULL OR environment = ?) \
                      AND (? IS NULL OR status = ?)";
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE {filter} \
             ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        )))
        .bind(application)
        .bind(application)
        .bind(environment)
        .bind(environment)
        .bind(status)
        .bind(status)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query(&self.sql(&format!(
            "SELECT COUNT(*) AS n FROM deployments WHERE {filter}"
        )))
        .bind(application)
        .bind(application)
        .bind(environment)
        .bind(environment)
        .bind(status)
        .bind(status)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        Ok((
            rows.iter()
                .map(deployment_from_row)
                .collect::<Result<_, _>>()?,
            total,
        ))
    }

    /// Ids of deployments that were pending or running (to resume after a restart).
    pub async fn unfinished_deployments(&self) -> Result<Vec<String>, StoreError> {
        let _t = crate::metrics::store_op("unfinished_deployments");
        let rows = sqlx::query(
            "SELECT id FROM deployments WHERE status IN ('pending', 'running') ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?)
    }

    /// Stores the plan: resolution results and every host, and marks the
    /// deployment running. One transaction: a restart sees all or nothing.
    pub async fn start_deployment(
        &self,
        id: &str,
        query: &str,
        haproxy_query: Option<&str>,
        haproxy_vms: &str,
        hosts: &[NewHost],
    ) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("start_deployment");
        let mut tx = self.write_tx().await?;
        sqlx::query(&self.sql(
            "UPDATE deployments SET status = 'running', started_at = ?, query = ?, haproxy_query = ?, \
             haproxy_vms = ?, hosts_total = ? WHERE id = ?",
        ))
        .bind(now_ms())
        .bind(query)
        .bind(haproxy_query)
        .bind(haproxy_vms)
        .bind(hosts.len() as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let q = self.sql(
            "INSERT INTO deployment_hosts (deployment_id, position, name, address, server_name, status, \
             error, unreachable, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        for (i, h) in hosts.iter().enumerate() {
            let unreachable = h.status == "unreachable";
            sqlx::query(&q)
                .bind(id)
                .bind(i as i64)
                .bind(&h.name)
                .bind(&h.address)
                .bind(&h.server_name)
                .bind(&h.status)
                .bind(&h.error)
                .bind(i64::from(unreachable))
                .bind(unreachable.then(now_ms))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends a deployment and frees its application/environment slot.
    pub async fn finish_deployment(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("finish_deployment");
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query(&self.sql(
            "UPDATE deployment_hosts SET status = 'skipped', finished_at = ? \
             WHERE deployment_id = ? AND status = 'pending'",
        ))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&self.sql(
            "UPDATE deployments SET status = ?, error = ?, finished_at = ?, \
             started_at = COALESCE(started_at, ?), active_key = NULL WHERE id = ?",
        ))
        .bind(status)
        .bind(error)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a cancel request. False if the deployment is already finished.
    pub async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        let _t = crate::metrics::store_op("request_cancel");
        let done = sqlx::query(&self.sql(
            "UPDATE deployments SET cancel_requested = 1 WHERE id = ? AND status IN ('pending', 'running')",
        ))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The hosts of a deployment in rollout order.
    pub async fn deployment_hosts(&self, id: &str) -> Result<Vec<HostRow>, StoreError> {
        let _t = crate::metrics::store_op("deployment_hosts");
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT {HOST_COLUMNS} FROM deployment_hosts WHERE deployment_id = ? ORDER BY position"
        )))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(host_from_row).collect::<Result<_, _>>()?)
    }

    /// A host starts: running, with its job id, before anything is touched.
    pub async fn host_started(&self, id: &str, name: &str, job_id: &str) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("host_started");
        sqlx::query(&self.sql(
            "UPDATE deployment_hosts SET status = 'running', job_id = ?, started_at = COALESCE(started_at, ?) \
             WHERE deployment_id = ? AND name = ?",
        ))
        .bind(job_id)
        .bind(now_ms())
        .bind(id)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A host's step and rotation state (written before the step acts).
    pub async fn host_step(
        &self,
        id: &str,
        name: &str,
        step: &str,
        rotation: &str,
    ) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("host_step");
        sqlx::query(&self.sql(
            "UPDATE deployment_hosts SET step = ?, rotation = ? WHERE deployment_id = ? AND name = ?",
        ))
        .bind(step)
        .bind(rotation)
        .bind(id)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A host's playbook counters (ok, changed, failed, unreachable, skipped).
    pub async fn host_stats(
        &self,
        id: &str,
        name: &str,
        stats: [i64; 5],
    ) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("host_stats");
        sqlx::query(&self.sql(
            "UPDATE deployment_hosts SET ok = ?, changed = ?, failed = ?, unreachable = ?, skipped = ? \
             WHERE deployment_id = ? AND name = ?",
        ))
        .bind(stats[0])
        .bind(stats[1])
        .bind(stats[2])
        .bind(stats[3])
        .bind(stats[4])
        .bind(id)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A host is done.
    pub async fn host_finished(
        &self,
        id: &str,
        name: &str,
        status: &str,
        rotation: &str,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("host_finished");
        sqlx::query(&self.sql(
            "UPDATE deployment_hosts SET status = ?, rotation = ?, error = ?, step = NULL, finished_at = ?, \
             unreachable = CASE WHEN ? = 'unreachable' THEN 1 ELSE unreachable END \
             WHERE deployment_id = ? AND name = ?",
        ))
        .bind(status)
        .bind(rotation)
        .bind(error)
        .bind(now_ms())
        .bind(status)
        .bind(id)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Appends log rows in one transaction.
    pub async fn append_logs(&self, id: &str, rows: &[LogRow]) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("append_logs");
        if rows.is_empty() {
            return Ok(());
        }
        let q = self.sql(
            "INSERT INTO deployment_logs (deployment_id, seq, ts, host, kind, data) VALUES (?, ?, ?, ?, ?, ?)",
        );
        let mut tx = self.write_tx().await?;
        for r in rows {
            sqlx::query(&q)
                .bind(id)
                .bind(r.seq)
                .bind(r.ts)
                .bind(&r.host)
                .bind(&r.kind)
                .bind(&r.data)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Log rows after `seq`, at most `limit`.
    pub async fn logs_after(
        &self,
        id: &str,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<LogRow>, StoreError> {
        let _t = crate::metrics::store_op("logs_after");
        let rows = sqlx::query(&self.sql(
            "SELECT seq, ts, host, kind, data FROM deployment_logs WHERE deployment_id = ? AND seq > ? \
             ORDER BY seq LIMIT ?",
        ))
        .bind(id)
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LogRow {
                    seq: r.try_get("seq")?,
                    ts: r.try_get("ts")?,
                    host: r.try_get("host")?,
                    kind: r.try_get("kind")?,
                    data: r.try_get("data")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The highest log seq of a deployment (0 if none).
    pub async fn max_log_seq(&self, id: &str) -> Result<i64, StoreError> {
        let _t = crate::metrics::store_op("max_log_seq");
        let row =
            sqlx::query(&self.sql(
                "SELECT COALESCE(MAX(seq), 0) AS n FROM deployment_logs WHERE deployment_id = ?",
            ))
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Records an HAProxy action.
    pub async fn insert_haproxy_action(
        &self,
        id: &str,
        a: &HaproxyActionRow,
    ) -> Result<(), StoreError> {
        let _t = crate::metrics::store_op("insert_haproxy_action");
        sqlx::query(&self.sql(
            "INSERT INTO haproxy_actions (deployment_id, at, host, haproxy_vm, backend, server, action, ok, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(id)
        .bind(a.at)
        .bind(&a.host)
        .bind(&a.haproxy_vm)
        .bind(&a.backend)
        .bind(&a.server)
        .bind(&a.action)
        .bind(i64::from(a.ok))
        .bind(&a.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// HAProxy actions of a deployment in order.
    pub async fn haproxy_actions(&self, id: &str) -> Result<Vec<HaproxyActionRow>, StoreError> {
        let _t = crate::metrics::store_op("haproxy_actions");
        let rows = sqlx::query(&self.sql(
            "SELECT at, host, haproxy_vm, backend, server, action, ok, detail FROM haproxy_actions \
             WHERE deployment_id = ? ORDER BY at",
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HaproxyActionRow {
                    at: r.try_get("at")?,
                    host: r.try_get("host")?,
                    haproxy_vm: r.try_get("haproxy_vm")?,
                    backend: r.try_get("backend")?,
                    server: r.try_get("server")?,
                    action: r.try_get("action")?,
                    ok: r.try_get::<i64, _>("ok")? != 0,
                    detail: r.try_get("detail")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Succeeded deployments of an application and environment, newest first.
    pub async fn succeeded_deployments(
        &self,
        application: &str,
        environment: &str,
        limit: i64,
    ) -> Result<Vec<DeploymentRow>, StoreError> {
        let _t = crate::metrics::store_op("succeeded_deployments");
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE application = ? AND environment = ? \
             AND status = 'succeeded' ORDER BY finished_at DESC LIMIT ?"
        )))
        .bind(application)
        .bind(environment)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(deployment_from_row)
            .collect::<Result<_, _>>()?)
    }
}
