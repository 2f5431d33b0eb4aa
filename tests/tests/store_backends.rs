//! The store's cases run on both backends: SQLite (a file in a temp dir) and
//! PostgreSQL 15 (a throwaway cluster started by `vesemir_testkit::postgres`).
//! Every case gets a fresh database; a backend's cases share one cluster so
//! initdb is paid once per backend (about a second), not once per case.
//!
//! The cases are the store's unit tests (controller/src/store) plus the core
//! of store_concurrency.rs at the store level: concurrent enrollments while
//! last-seen batches and deployment writes go on, none refused.

use anyhow::{ensure, Context, Result};
use std::future::Future;
use std::pin::Pin;
use vesemir_controller::store::{
    now_ms, Forget, HaproxyActionRow, Inserted, LastSeen, LogRow, NewDeployment, NewHost, Store,
    TokenRefusal,
};
use vesemir_testkit::postgres::Postgres;

type Case = fn(Store) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! cases {
    ($($f:ident),* $(,)?) => {
        &[$((stringify!($f), (|s| Box::pin($f(s))) as Case)),*]
    };
}

const CASES: &[(&str, Case)] = cases![
    enrollment_tokens_count_down_and_expire,
    revocation_covers_every_certificate_of_the_agent,
    last_seen_is_written_in_batches,
    api_tokens_are_found_by_hash,
    deployments_are_exclusive_per_app_and_env_and_idempotent,
    plan_hosts_logs_and_haproxy_actions_round_trip,
    concurrent_enrollments_while_heartbeats_and_deployments_write,
    one_name_enrolled_concurrently_is_recorded_once,
];

async fn run_all(mut fresh_url: impl FnMut() -> Result<String>) -> Result<()> {
    let mut failures = Vec::new();
    for (name, case) in CASES {
        let url = fresh_url()?;
        let store = Store::connect(&url)
            .await
            .with_context(|| format!("{name}: connect {url}"))?;
        let res = case(store.clone()).await;
        store.close().await;
        if let Err(e) = res {
            failures.push(format!("{name}: {e:#}"));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_store_case_on_sqlite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut n = 0;
    run_all(|| {
        n += 1;
        Ok(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join(format!("t{n}.db")).display()
        ))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_store_case_on_postgres() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    run_all(|| pg.create_database()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_postgres_migrate_once_and_see_each_other() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    // Two controllers starting together: sqlx's advisory lock serialises
    // the migrations, so neither fails on "relation already exists".
    let (a, b) = tokio::try_join!(Store::connect(&url), Store::connect(&url))?;
    a.insert_api_token("admin", "hash-a", "admin").await?;
    ensure!(b.find_api_token("hash-a").await? == Some(("admin".into(), "admin".into())));
    Ok(())
}

#[tokio::test]
async fn a_bad_database_url_names_what_to_use() -> Result<()> {
    let e = Store::connect("mysql://x/y")
        .await
        .err()
        .context("mysql accepted")?;
    let msg = e.to_string();
    ensure!(
        msg.contains("sqlite://") && msg.contains("postgres://"),
        "{msg}"
    );
    Ok(())
}

async fn enrollment_tokens_count_down_and_expire(s: Store) -> Result<()> {
    s.insert_enrollment_token("h1", now_ms() + 60_000, 2, "admin")
        .await?;
    s.insert_enrollment_token("h2", now_ms() - 1, 5, "admin")
        .await?;
    ensure!(s.consume_enrollment_token("h1").await? == Ok(()));
    ensure!(s.consume_enrollment_token("h1").await? == Ok(()));
    ensure!(s.consume_enrollment_token("h1").await? == Err(TokenRefusal::UsedUp));
    ensure!(s.consume_enrollment_token("h2").await? == Err(TokenRefusal::Expired));
    ensure!(s.consume_enrollment_token("nope").await? == Err(TokenRefusal::Unknown));
    s.refund_enrollment_token("h1").await?;
    ensure!(
        s.consume_enrollment_token("h1").await? == Ok(()),
        "refund gives a use back"
    );
    Ok(())
}

async fn revocation_covers_every_certificate_of_the_agent(s: Store) -> Result<()> {
    let far = now_ms() + 3_600_000;
    ensure!(s.record_certificate("web-1", "aa", "f1", far, true).await?);
    ensure!(
        !s.record_certificate("web-1", "zz", "f9", far, true).await?,
        "a taken name records nothing"
    );
    ensure!(
        s.record_certificate("web-1", "bb", "f2", far, false)
            .await?
    );
    ensure!(s.record_certificate("web-2", "cc", "f3", far, true).await?);
    let mut serials = s.revoke_agent("web-1").await?.context("web-1 exists")?;
    serials.sort();
    ensure!(serials == ["aa", "bb"], "{serials:?}");
    let mut revoked = s.revoked_serials().await?;
    revoked.sort();
    ensure!(revoked == ["aa", "bb"], "{revoked:?}");
    ensure!(s.revoke_agent("ghost").await?.is_none());
    let a = s.get_agent("web-1").await?.context("web-1")?;
    ensure!(a.cert_serial == "bb" && a.revoked_at.is_some(), "{a:?}");
    ensure!(
        !s.record_certificate("web-1", "dd", "f4", far, false)
            .await?
    );
    ensure!(!s.record_certificate("web-1", "dd", "f4", far, true).await?);
    ensure!(s.forget_agent("web-2").await? == Forget::NotRevoked);
    ensure!(s.forget_agent("ghost").await? == Forget::NotFound);
    ensure!(s.forget_agent("web-1").await? == Forget::Forgotten);
    ensure!(s.record_certificate("web-1", "ee", "f5", far, true).await?);
    ensure!(s.revoked_serials().await?.contains(&"aa".to_string()));
    let names: Vec<String> = s.list_agents().await?.into_iter().map(|a| a.name).collect();
    ensure!(names == ["web-1", "web-2"], "{names:?}");
    Ok(())
}

async fn last_seen_is_written_in_batches(s: Store) -> Result<()> {
    s.record_certificate("a", "1", "f", now_ms() + 1000, true)
        .await?;
    s.flush_last_seen(&[LastSeen {
        name: "a".into(),
        at: 42,
        version: "0.1.0".into(),
        remote_addr: "127.0.0.1:1".into(),
        facts: "{}".into(),
    }])
    .await?;
    let a = s.get_agent("a").await?.context("a")?;
    ensure!(a.last_seen == Some(42) && a.version == "0.1.0", "{a:?}");
    ensure!(a.remote_addr.as_deref() == Some("127.0.0.1:1") && a.facts.as_deref() == Some("{}"));
    Ok(())
}

async fn api_tokens_are_found_by_hash(s: Store) -> Result<()> {
    s.insert_api_token("ci", "h-ci", "deployer").await?;
    ensure!(s.find_api_token("h-ci").await? == Some(("ci".into(), "deployer".into())));
    ensure!(s.find_api_token("other").await?.is_none());
    ensure!(
        s.insert_api_token("dup", "h-ci", "admin").await.is_err(),
        "a hash is unique"
    );
    s.ping().await?;
    Ok(())
}

fn new_dep<'a>(id: &'a str, app: &'a str, key: Option<&'a str>) -> NewDeployment<'a> {
    NewDeployment {
        id,
        application: app,
        environment: "prod",
        team: "web",
        requested_by: "ci",
        idempotency_key: key,
        request: "{}",
        changeset_version: Some("v1"),
        freeze_override: None,
    }
}

async fn deployments_are_exclusive_per_app_and_env_and_idempotent(s: Store) -> Result<()> {
    ensure!(
        s.insert_deployment(&new_dep("d1", "shop", Some("k1")))
            .await?
            == Inserted::Created
    );
    ensure!(
        s.insert_deployment(&new_dep("d2", "shop", Some("k1")))
            .await?
            == Inserted::Existing("d1".into())
    );
    ensure!(
        s.insert_deployment(&new_dep("d3", "shop", None)).await? == Inserted::Running("d1".into())
    );
    // A freeze override's record is stored with the deployment.
    let record = r#"{"window":"freeze window 0 (prod, r)","reason":"INC-1","by":"admin","at":"2026-12-06T00:00:00Z"}"#;
    let d4 = NewDeployment {
        freeze_override: Some(record),
        ..new_dep("d4", "blog", None)
    };
    ensure!(s.insert_deployment(&d4).await? == Inserted::Created);
    let row = s.get_deployment("d4").await?.context("d4")?;
    ensure!(row.freeze_override.as_deref() == Some(record), "{row:?}");
    let row = s.get_deployment("d1").await?.context("d1")?;
    ensure!(row.freeze_override.is_none(), "{row:?}");
    ensure!(s.unfinished_deployments().await? == ["d1", "d4"]);
    ensure!(s.request_cancel("d1").await?);
    s.finish_deployment("d1", "succeeded", None).await?;
    ensure!(!s.request_cancel("d1").await?, "finished: no cancel");
    let d1 = s.get_deployment("d1").await?.context("d1")?;
    ensure!(d1.status == "succeeded" && d1.cancel_requested && d1.finished_at.is_some());
    ensure!(s.insert_deployment(&new_dep("d5", "shop", None)).await? == Inserted::Created);
    let (all, total) = s.list_deployments(None, None, None, 10, 0).await?;
    ensure!(total == 3 && all.len() == 3, "{total} {}", all.len());
    let (shop, total) = s
        .list_deployments(Some("shop"), Some("prod"), None, 1, 0)
        .await?;
    ensure!(total == 2 && shop.len() == 1, "{total} {}", shop.len());
    let (done, total) = s
        .list_deployments(None, None, Some("succeeded"), 10, 0)
        .await?;
    ensure!(total == 1 && done[0].id == "d1");
    let ok: Vec<String> = s
        .succeeded_deployments("shop", "prod", 5)
        .await?
        .into_iter()
        .map(|d| d.id)
        .collect();
    ensure!(ok == ["d1"], "{ok:?}");
    Ok(())
}

async fn plan_hosts_logs_and_haproxy_actions_round_trip(s: Store) -> Result<()> {
    s.insert_deployment(&new_dep("d1", "shop", None)).await?;
    let host = |name: &str, status: &str| NewHost {
        name: name.into(),
        address: "10.0.0.1".into(),
        server_name: name.into(),
        status: status.into(),
        error: (status == "unreachable").then(|| "no agent".into()),
    };
    s.start_deployment(
        "d1",
        "app:shop",
        Some("role:lb"),
        "[\"lb-1\"]",
        &[
            host("a", "pending"),
            host("b", "unreachable"),
            host("c", "pending"),
        ],
    )
    .await?;
    s.host_started("d1", "a", "job-a").await?;
    s.host_step("d1", "a", "drain", "out").await?;
    s.host_stats("d1", "a", [3, 1, 0, 0, 2]).await?;
    s.host_finished("d1", "a", "succeeded", "in", None).await?;
    s.append_logs(
        "d1",
        &(1..=5)
            .map(|i| LogRow {
                seq: i,
                ts: now_ms(),
                host: (i % 2 == 0).then(|| "a".into()),
                kind: "log".into(),
                data: format!("{{\"n\":{i}}}"),
            })
            .collect::<Vec<_>>(),
    )
    .await?;
    ensure!(s.max_log_seq("d1").await? == 5);
    ensure!(s.max_log_seq("none").await? == 0);
    let page = s.logs_after("d1", 2, 2).await?;
    ensure!(page.iter().map(|r| r.seq).collect::<Vec<_>>() == [3, 4]);
    ensure!(page[1].host.as_deref() == Some("a") && page[0].host.is_none());
    for ok in [true, false] {
        s.insert_haproxy_action(
            "d1",
            &HaproxyActionRow {
                at: now_ms(),
                host: "a".into(),
                haproxy_vm: "lb-1".into(),
                backend: "shop".into(),
                server: "a".into(),
                action: "drain".into(),
                ok,
                detail: (!ok).then(|| "refused".into()),
            },
        )
        .await?;
    }
    let acts = s.haproxy_actions("d1").await?;
    ensure!(acts.len() == 2 && acts.iter().filter(|a| a.ok).count() == 1);
    s.finish_deployment("d1", "failed", Some("c failed"))
        .await?;
    let hosts = s.deployment_hosts("d1").await?;
    let summary: Vec<(&str, &str)> = hosts
        .iter()
        .map(|h| (h.name.as_str(), h.status.as_str()))
        .collect();
    ensure!(
        summary == [("a", "succeeded"), ("b", "unreachable"), ("c", "skipped")],
        "{summary:?}"
    );
    ensure!(hosts[0].stats == [3, 1, 0, 0, 2] && hosts[0].job_id.as_deref() == Some("job-a"));
    ensure!(hosts[1].stats[3] == 1 && hosts[1].error.as_deref() == Some("no agent"));
    let d = s.get_deployment("d1").await?.context("d1")?;
    ensure!(
        d.hosts_total == 3 && d.error.as_deref() == Some("c failed"),
        "{d:?}"
    );
    Ok(())
}

/// store_concurrency.rs's core without the processes: 200 enrollments, 32
/// in flight, while last-seen batches are flushed and deployments write
/// their plan, progress and logs. None may fail (`database is locked` on
/// SQLite, a serialization or key error on PostgreSQL).
async fn concurrent_enrollments_while_heartbeats_and_deployments_write(s: Store) -> Result<()> {
    const N: usize = 200;
    const IN_FLIGHT: usize = 32;
    let far = now_ms() + 3_600_000;
    s.insert_enrollment_token("tok", far, N as i64, "admin")
        .await?;
    for i in 0..3 {
        s.record_certificate(&format!("app-{i}"), &format!("s-app-{i}"), "f", far, true)
            .await?;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                round += 1;
                let batch: Vec<LastSeen> = (0..3)
                    .map(|i| LastSeen {
                        name: format!("app-{i}"),
                        at: round,
                        version: "1".into(),
                        remote_addr: "127.0.0.1:1".into(),
                        facts: "{}".into(),
                    })
                    .collect();
                s.flush_last_seen(&batch).await?;
                let id = format!("dep-{round}");
                s.insert_deployment(&new_dep(&id, "store", None)).await?;
                s.start_deployment(
                    &id,
                    "q",
                    None,
                    "[]",
                    &[NewHost {
                        name: "app-0".into(),
                        address: "127.0.0.1".into(),
                        server_name: "app-0".into(),
                        status: "pending".into(),
                        error: None,
                    }],
                )
                .await?;
                s.host_started(&id, "app-0", "job").await?;
                s.append_logs(
                    &id,
                    &[LogRow {
                        seq: 1,
                        ts: now_ms(),
                        host: None,
                        kind: "log".into(),
                        data: "{}".into(),
                    }],
                )
                .await?;
                s.host_finished(&id, "app-0", "succeeded", "in", None)
                    .await?;
                s.finish_deployment(&id, "succeeded", None).await?;
            }
            anyhow::Ok(round)
        })
    };
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (s, next) = (s.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut refused = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= N {
                    break;
                }
                let name = format!("node-{i:03}");
                let r: Result<()> = async {
                    ensure!(
                        s.consume_enrollment_token("tok").await? == Ok(()),
                        "token refused"
                    );
                    ensure!(
                        s.record_certificate(&name, &format!("s-{name}"), "f", far, true)
                            .await?,
                        "name refused"
                    );
                    Ok(())
                }
                .await;
                if let Err(e) = r {
                    refused.push(format!("{name}: {e:#}"));
                }
            }
            refused
        }));
    }
    let mut refused = Vec::new();
    for w in workers {
        refused.extend(w.await?);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = background.await??;
    ensure!(
        refused.is_empty(),
        "{} refused:\n{}",
        refused.len(),
        refused.join("\n")
    );
    ensure!(rounds >= 1);
    ensure!(s.list_agents().await?.len() == N + 3);
    ensure!(
        s.consume_enrollment_token("tok").await? == Err(TokenRefusal::UsedUp),
        "exactly N uses were taken"
    );
    Ok(())
}

/// Two enrollments of one name at once (two controllers, or a retry): one is
/// recorded, the other refused cleanly (false, not a database error).
async fn one_name_enrolled_concurrently_is_recorded_once(s: Store) -> Result<()> {
    let far = now_ms() + 3_600_000;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.record_certificate("twin", &format!("serial-{i}"), "f", far, true)
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if t.await?? {
            won += 1;
        }
    }
    ensure!(won == 1, "{won} enrollments of one name recorded");
    Ok(())
}
