//! Tar extraction with hostile archives: entries with arbitrary raw names,
//! link targets and types, built into a real tar.gz, unpacked the way the
//! `unarchive` module does into `T/root/dest` of a fresh temp dir `T`.
//! Invariant checked after every run, whether the archive was accepted or
//! refused: nothing was created, changed or linked outside `T/root/dest`,
//! and no symlink inside resolves outside it.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::io::Write;
use std::path::Path;

#[derive(Arbitrary, Debug)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Fifo,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    /// Raw name bytes (the tar crate's `set_path` would refuse `..`; a
    /// hostile archive is not built with it).
    name: Vec<u8>,
    link: Vec<u8>,
    kind: Kind,
    data: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    strip: u8,
    entries: Vec<Entry>,
}

/// Names the fuzzer is likely to need to reach the interesting cases.
const DICT: &[&[u8]] = &[b"..", b"../outside/x", b"/tmp", b"a/../..", b"link", b"link/x"];

fn expand(raw: &[u8]) -> Vec<u8> {
    // A leading byte below 8 picks a dictionary word as prefix.
    match raw.split_first() {
        Some((&b, rest)) if (b as usize) < DICT.len() => [DICT[b as usize], rest].concat(),
        _ => raw.to_vec(),
    }
}

fn header(e: &Entry) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let g = h.as_gnu_mut().expect("gnu header");
        let name = expand(&e.name);
        let n = name.len().min(g.name.len());
        g.name[..n].copy_from_slice(&name[..n]);
        let link = expand(&e.link);
        let n = link.len().min(g.linkname.len());
        g.linkname[..n].copy_from_slice(&link[..n]);
    }
    h.set_entry_type(match e.kind {
        Kind::File => tar::EntryType::Regular,
        Kind::Dir => tar::EntryType::Directory,
        Kind::Symlink => tar::EntryType::Symlink,
        Kind::HardLink => tar::EntryType::Link,
        Kind::Fifo => tar::EntryType::Fifo,
        Kind::Other(b) => tar::EntryType::new(b),
    });
    h.set_mode(0o644);
    h.set_size(e.data.len() as u64);
    h.set_cksum();
    h
}

/// Every path under `dir` (not following symlinks).
fn listing(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            listing(&p, out);
        }
    }
}

fuzz_target!(|input: Input| {
    if input.entries.len() > 32 {
        return;
    }
    // tmpfs when there is one: this target is IO-bound.
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let t = base.path();
    let outside = t.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("x"), b"keep").unwrap();
    let root = t.join("root");
    fs::create_dir(&root).unwrap();
    let dest = root.join("dest");
    // As in Ansible, `unarchive` extracts into a directory that exists.
    fs::create_dir(&dest).unwrap();

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut b = tar::Builder::new(&mut gz);
        for e in &input.entries {
            b.append(&header(e), e.data.as_slice()).unwrap();
        }
        b.finish().unwrap();
    }
    let archive = t.join("a.tar.gz");
    fs::File::create(&archive)
        .unwrap()
        .write_all(&gz.finish().unwrap())
        .unwrap();
    let before = {
        let mut v = Vec::new();
        listing(t, &mut v);
        v.sort();
        v
    };

    let result = vesemir_agent::fuzzing::unarchive(&archive, &dest, input.strip as usize % 4);

    // Outside: exactly what was there, unchanged.
    let mut after = Vec::new();
    listing(t, &mut after);
    after.sort();
    let outside_now: Vec<&String> = after
        .iter()
        .filter(|p| !Path::new(p).starts_with(&dest))
        .collect();
    let outside_before: Vec<&String> = before
        .iter()
        .filter(|p| !Path::new(p).starts_with(&dest))
        .collect();
    assert_eq!(outside_now, outside_before, "result {result:?}: something appeared outside dest");
    assert_eq!(fs::read(outside.join("x")).unwrap(), b"keep", "outside file changed");
    let meta = fs::metadata(outside.join("x")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&meta), 1, "outside file hard-linked");
    if result.is_err() {
        let left = fs::read_dir(&dest).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "a refused archive left {left} entries in {}", dest.display());
    }
    if dest.exists() {
        let croot = fs::canonicalize(&dest).unwrap();
        let mut inside = Vec::new();
        listing(&dest, &mut inside);
        for p in inside {
            let p = Path::new(&p);
            if fs::symlink_metadata(p).map(|m| m.file_type().is_symlink()).unwrap_or(false) {
                if let Ok(real) = fs::canonicalize(p) {
                    assert!(real.starts_with(&croot), "{} resolves to {}", p.display(), real.display());
                }
            }
        }
    }
});
