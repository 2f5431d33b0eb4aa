//! `unarchive` refuses archives whose entries escape the destination, and
//! extracts into an existing `dest` as Ansible does.
//! The tar crate's builder refuses such paths, so they are written by hand.

#[path = "fixtures/common.rs"]
mod common;

use std::path::Path;

use common::*;
use vesemir_protocol::job::{JobEvent, JobStatus, TaskStatus};

/// Unpacks `tgz` with the unarchive module into tmp/out; returns the job
/// status and the task message.
async fn unpack(tmp: &Path, tgz: &[u8]) -> (JobStatus, String) {
    let archive = tmp.join("a.tar.gz");
    std::fs::write(&archive, tgz).unwrap();
    let pb = tmp.join("pb.yml");
    std::fs::write(
        &pb,
        format!(
            "tasks:\n  - file:\n      path: {}\n      state: directory\n  - unarchive:\n      src: {}\n      dest: {}\n",
            tmp.join("work/out").display(),
            archive.display(),
            tmp.join("work/out").display()
        ),
    )
    .unwrap();
    let cfg = config(tmp);
    let (o, events) = run_file(&cfg, &pb, &job("pb.yml", &[], None)).await;
    let msg = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::TaskResult(r) if r.module == "unarchive" => Some(r.msg.clone()),
            _ => None,
        })
        .next()
        .unwrap();
    (o.status, msg)
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> RawEntry<'a> {
    RawEntry {
        name,
        kind: b'0',
        link: "",
        data,
    }
}

async fn refused(entries: &[RawEntry<'_>], why: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (status, msg) = unpack(tmp.path(), &raw_tar_gz(entries)).await;
    assert_eq!(status, JobStatus::Failed, "{msg}");
    assert!(msg.contains(why), "{msg} !~ {why}");
    let in_dest: Vec<_> = std::fs::read_dir(tmp.path().join("work/out"))
        .unwrap()
        .collect();
    assert!(in_dest.is_empty(), "something reached dest: {in_dest:?}");
    assert!(!tmp.path().join("work/evil").exists());
    assert!(!tmp.path().join("evil").exists());
    // No temporary directory left behind.
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("work"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "out")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn dotdot_entry_is_refused() {
    refused(
        &[file("ok.txt", b"fine"), file("../evil", b"x")],
        "contains `..`",
    )
    .await;
}

#[tokio::test]
async fn absolute_entry_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("evil");
    let name = target.display().to_string();
    refused(
        &[file("ok.txt", b"fine"), file(&name, b"x")],
        "is an absolute path",
    )
    .await;
    assert!(!target.exists());
}

#[tokio::test]
async fn symlink_out_is_refused() {
    let link = RawEntry {
        name: "etc",
        kind: b'2',
        link: "../../..",
        data: b"",
    };
    refused(&[link], "points outside").await;
    let abs = RawEntry {
        name: "etc",
        kind: b'2',
        link: "/etc",
        data: b"",
    };
    refused(&[abs], "points outside").await;
}

#[tokio::test]
async fn write_through_symlink_is_refused() {
    let link = RawEntry {
        name: "d",
        kind: b'2',
        link: ".",
        data: b"",
    };
    refused(&[link, file("d/x", b"x")], "through the symlink").await;
}

#[tokio::test]
async fn hardlink_out_is_refused() {
    let link = RawEntry {
        name: "h",
        kind: b'1',
        link: "../../etc/passwd",
        data: b"",
    };
    refused(&[link], "outside").await;
}

#[tokio::test]
async fn good_archive_with_inner_links_unpacks() {
    let tmp = tempfile::tempdir().unwrap();
    let tgz = raw_tar_gz(&[
        RawEntry {
            name: "app/",
            kind: b'5',
            link: "",
            data: b"",
        },
        file("app/bin/run", b"#!/bin/sh\n"),
        RawEntry {
            name: "app/run",
            kind: b'2',
            link: "bin/run",
            data: b"",
        },
        RawEntry {
            name: "app/hard",
            kind: b'1',
            link: "app/bin/run",
            data: b"",
        },
    ]);
    let (status, msg) = unpack(tmp.path(), &tgz).await;
    assert_eq!(status, JobStatus::Succeeded, "{msg}");
    let out = tmp.path().join("work/out");
    assert_eq!(std::fs::read(out.join("app/run")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(std::fs::read(out.join("app/hard")).unwrap(), b"#!/bin/sh\n");
    // Unpacking again changes nothing and says so.
    let (status, msg) = unpack(tmp.path(), &tgz).await;
    assert_eq!(status, JobStatus::Succeeded);
    assert!(msg.contains("already holds"), "{msg}");
    let _ = TaskStatus::Ok;
}
