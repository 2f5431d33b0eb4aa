//! The shipped deploy / rollback / restart playbooks, run for real against
//! a local HTTP server (artifact + health) and a recording systemctl
//! stand-in (systemd is not PID 1 on the test machines).

#[path = "fixtures/common.rs"]
mod common;

use std::fs;
use std::path::Path;

use common::*;
use vesemir_agent::journal::Journal;
use vesemir_agent::runner::{check_playbook, lint_playbook, run_job, RunnerConfig};
use vesemir_protocol::job::{Changeset, JobEvent, JobStatus, TaskStatus};

struct Site {
    server: HttpServer,
    tmp: tempfile::TempDir,
    cfg: RunnerConfig,
    journal: Journal,
}

impl Site {
    async fn new() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let server = HttpServer::start().await;
        server.route("/health", 200, b"ok healthy");
        let cfg = config(tmp.path());
        let journal = Journal::open(&tmp.path().join("journal")).unwrap();
        Site {
            server,
            tmp,
            cfg,
            journal,
        }
    }

    fn base(&self) -> std::path::PathBuf {
        self.tmp.path().join("srv/shop")
    }

    fn publish(&self, version: &str) -> Changeset {
        let tgz = tar_gz(&[
            (
                "bin/shop",
                format!("#!/bin/sh\necho shop {version}\n").as_bytes(),
            ),
            ("share/readme.txt", b"hello"),
        ]);
        let path = format!("/artifacts/shop-{version}.tar.gz");
        self.server.route(&path, 200, &tgz);
        Changeset {
            version: version.into(),
            url: self.server.url(&path),
            sha256: sha256_hex(&tgz),
            playbook: None,
        }
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("app", "shop".into()),
            ("service", "shop.service".into()),
            ("health_url", self.server.url("/health")),
            ("health_body", "healthy".into()),
            ("base_dir", self.base().display().to_string()),
            ("keep_releases", "2".into()),
            ("health_delay", "50ms".into()),
            ("listen", "127.0.0.1:9999".into()),
        ]
    }

    async fn run(
        &self,
        id: &str,
        playbook: &str,
        changeset: Option<Changeset>,
    ) -> (vesemir_protocol::job::JobOutcome, Vec<JobEvent>) {
        let vars = self.vars();
        let kv: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let job = job(playbook, &kv, changeset);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let events = tokio::spawn(collect(rx));
        let o = run_job(
            &self.cfg,
            &self.journal,
            id,
            &job,
            tx,
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
        (o, events.await.unwrap())
    }

    fn current(&self) -> std::path::PathBuf {
        fs::read_link(self.base().join("current")).unwrap()
    }
}

fn failed_task(events: &[JobEvent]) -> Option<String> {
    events.iter().find_map(|e| match e {
        JobEvent::TaskResult(r) if r.status == TaskStatus::Failed => Some(r.module.clone()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_upgrade_rollback() {
    let site = Site::new().await;
    let v1 = site.publish("1.0.0");
    let (o, events) = site.run("d1", "deploy.yml", Some(v1)).await;
    assert_eq!(o.status, JobStatus::Succeeded, "{o:?}\n{events:#?}");
    assert_eq!(site.current(), site.base().join("releases/1.0.0"));
    let rel = site.base().join("releases/1.0.0");
    assert_eq!(fs::read_to_string(rel.join("VERSION")).unwrap(), "1.0.0\n");
    assert!(fs::read_to_string(rel.join("bin/shop"))
        .unwrap()
        .contains("shop 1.0.0"));
    let env = fs::read_to_string(rel.join("app.env")).unwrap();
    assert!(
        env.contains("VERSION=1.0.0") && env.contains("LISTEN=127.0.0.1:9999"),
        "{env}"
    );
    assert_eq!(systemctl_calls(site.tmp.path()), ["restart shop.service"]);
    assert!(site.server.hits("/health") >= 1);
    assert!(events.iter().any(|e| matches!(e,
        JobEvent::TaskResult(r) if r.module == "http_check" && r.status == TaskStatus::Ok)));
    // The restart's output was streamed as it happened.
    assert!(events.iter().any(|e| matches!(e,
        JobEvent::Log { line, .. } if line.contains("systemctl stand-in: restart shop.service"))));
    assert!(matches!(events.last(), Some(JobEvent::Finished(f)) if f == &o));
    assert_eq!(o.stats.failed, 0);
    assert!(o.stats.changed >= 5, "{:?}", o.stats);
    // No download left behind.
    assert_eq!(
        fs::read_dir(site.base().join("downloads")).unwrap().count(),
        0
    );

    let v2 = site.publish("2.0.0");
    let (o, events) = site.run("d2", "deploy.yml", Some(v2)).await;
    assert_eq!(o.status, JobStatus::Succeeded, "{o:?}\n{events:#?}");
    assert_eq!(site.current(), site.base().join("releases/2.0.0"));
    assert_eq!(
        fs::read_link(site.base().join("previous")).unwrap(),
        site.base().join("releases/1.0.0")
    );
    assert_eq!(systemctl_calls(site.tmp.path()).len(), 2);

    let (o, events) = site.run("r1", "rollback.yml", None).await;
    assert_eq!(o.status, JobStatus::Succeeded, "{o:?}\n{events:#?}");
    assert_eq!(site.current(), site.base().join("releases/1.0.0"));
    assert_eq!(systemctl_calls(site.tmp.path()).len(), 3);

    let (o, _) = site.run("s1", "restart.yml", None).await;
    assert_eq!(o.status, JobStatus::Succeeded);
    assert_eq!(systemctl_calls(site.tmp.path()).len(), 4);

    // keep_releases=2: a third and fourth release prune the oldest that is
    // neither current nor previous.
    for v in ["3.0.0", "4.0.0"] {
        let cs = site.publish(v);
        let (o, ev) = site.run(&format!("d-{v}"), "deploy.yml", Some(cs)).await;
        assert_eq!(o.status, JobStatus::Succeeded, "{ev:#?}");
    }
    let mut left: Vec<String> = fs::read_dir(site.base().join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["3.0.0", "4.0.0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_checksum_changes_nothing() {
    let site = Site::new().await;
    let v1 = site.publish("1.0.0");
    let (o, _) = site.run("d1", "deploy.yml", Some(v1)).await;
    assert_eq!(o.status, JobStatus::Succeeded);

    let mut v2 = site.publish("2.0.0");
    v2.sha256 = "ab".repeat(32);
    let (o, events) = site.run("d2", "deploy.yml", Some(v2)).await;
    assert_eq!(o.status, JobStatus::Failed);
    assert_eq!(failed_task(&events).as_deref(), Some("get_url"));
    assert!(o.error.unwrap().contains("checksum mismatch"));
    assert!(!site.base().join("releases/2.0.0").exists());
    assert_eq!(site.current(), site.base().join("releases/1.0.0"));
    assert_eq!(
        fs::read_dir(site.base().join("downloads")).unwrap().count(),
        0
    );
    assert_eq!(systemctl_calls(site.tmp.path()).len(), 1);
}

/// Issue: a `..` version made the shipped deploy write into `base_dir`
/// itself, point `current` at `releases/..` and report success. The agent
/// refuses it before any task runs, whoever sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_is_not_one_path_component_is_refused_before_any_task() {
    let site = Site::new().await;
    let v1 = site.publish("1.0.0");
    let (o, _) = site.run("d1", "deploy.yml", Some(v1)).await;
    assert_eq!(o.status, JobStatus::Succeeded);
    for (i, bad) in ["..", ".", ".hidden", "a/b"].iter().enumerate() {
        let mut cs = site.publish("2.0.0");
        cs.version = bad.to_string();
        let (o, events) = site.run(&format!("bad-{i}"), "deploy.yml", Some(cs)).await;
        assert_eq!(o.status, JobStatus::Failed, "{bad:?}");
        let err = o.error.unwrap_or_default();
        assert!(
            err.contains("not one safe path component"),
            "{bad:?}: {err}"
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, JobEvent::TaskStarted { .. })),
            "{bad:?}: a task started"
        );
    }
    assert!(!site.base().join("VERSION").exists());
    assert_eq!(site.current(), site.base().join("releases/1.0.0"));
    assert_eq!(systemctl_calls(site.tmp.path()).len(), 1);
}

/// A deploy that installed nothing fails instead of switching `current`
/// to an empty release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_that_unpacks_nothing_fails_the_deploy() {
    let site = Site::new().await;
    let v1 = site.publish("1.0.0");
    let (o, _) = site.run("d1", "deploy.yml", Some(v1)).await;
    assert_eq!(o.status, JobStatus::Succeeded);
    let empty = tar_gz(&[]);
    site.server.route("/artifacts/empty.tar.gz", 200, &empty);
    let cs = Changeset {
        version: "2.0.0".into(),
        url: site.server.url("/artifacts/empty.tar.gz"),
        sha256: sha256_hex(&empty),
        playbook: None,
    };
    let (o, events) = site.run("d2", "deploy.yml", Some(cs)).await;
    assert_eq!(o.status, JobStatus::Failed);
    assert_eq!(failed_task(&events).as_deref(), Some("assert"));
    assert!(
        events.iter().any(|e| matches!(e, JobEvent::TaskResult(r)
            if r.msg.contains("nothing was unpacked"))),
        "{events:?}"
    );
    assert_eq!(site.current(), site.base().join("releases/1.0.0"));
    assert_eq!(systemctl_calls(site.tmp.path()).len(), 1);
}

#[tokio::test]
async fn unhealthy_release_fails_the_job() {
    let site = Site::new().await;
    site.server.route("/health", 503, b"down");
    let v1 = site.publish("1.0.0");
    let mut vars = site.vars();
    vars.push(("health_retries", "3".into()));
    let kv: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (o, events) = run_file(
        &site.cfg,
        &playbooks_dir().join("deploy.yml"),
        &job("deploy.yml", &kv, Some(v1)),
    )
    .await;
    assert_eq!(o.status, JobStatus::Failed);
    assert_eq!(failed_task(&events).as_deref(), Some("http_check"));
    assert_eq!(site.server.hits("/health"), 3);
}

#[test]
fn shipped_playbooks_check() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    for name in ["deploy.yml", "rollback.yml", "restart.yml"] {
        let p = playbooks_dir().join(name);
        lint_playbook(&p, &Default::default(), &cfg).unwrap_or_else(|e| panic!("{e}"));
    }
    // With the request as the controller sends it, a missing required var
    // names the playbook's line.
    let p = playbooks_dir().join("restart.yml");
    let err = check_playbook(&p, &vars(&[("service", "x")]), None, &cfg).unwrap_err();
    assert!(
        err.to_string().contains("restart.yml:") && err.to_string().contains("health_url"),
        "{err}"
    );
    // deploy.yml needs a changeset.
    let p = playbooks_dir().join("deploy.yml");
    let full = vars(&[("app", "a"), ("service", "s"), ("health_url", "http://h/")]);
    let err = check_playbook(&p, &full, None, &cfg).unwrap_err();
    assert!(err.to_string().contains("changeset"), "{err}");
    let cs = Changeset {
        version: "1".into(),
        url: "http://h/a.tgz".into(),
        sha256: "0".repeat(64),
        playbook: None,
    };
    check_playbook(&p, &full, Some(&cs), &cfg).unwrap();
    assert!(Path::new(&playbooks_dir().join("README.md")).exists());
}
