//! The agent's resident memory is mostly its own code and read-only data:
//! start-up (argument parsing, config, TLS and QUIC setup, the first
//! handshake) touches code that an idle agent never runs again, and the
//! kernel maps the pages around each fault too ("fault-around"). Measured
//! (bench/fixes.md): 4.6 of the 7.5 MiB of code resident after start, 2.4
//! MiB once the start-up pages are given back and the agent idles.
//! [`release_startup_pages`] gives them back (`MADV_PAGEOUT` on the
//! executable's read-only mappings) once the agent has settled.
//!
//! Invariant: best effort and harmless: only clean, file-backed pages of
//! our own executable are advised (never writable or anonymous memory), so
//! a page needed again is faulted back in from the page cache; any failure
//! (no /proc, an older kernel) leaves the process exactly as it was.

/// The `[start, end)` address ranges of the executable's own read-only
/// mappings (code and constants, not `rw`), read from `/proc/self/maps`.
pub fn read_only_ranges(maps: &str, exe: &std::path::Path) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (range, perms, path) = (f.first()?, f.get(1)?, f.get(5)?);
            if perms.contains('w') || std::path::Path::new(path) != exe {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// Gives the kernel back the pages of our executable's read-only
/// mappings (see the module docs). Returns how many bytes were advised.
pub fn release_startup_pages() -> usize {
    let (Ok(maps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return 0;
    };
    let mut advised = 0;
    for (start, end) in read_only_ranges(&maps, &exe) {
        // SAFETY: a hint on our own read-only file mapping, page-aligned as
        // /proc gives it; paging out clean file pages changes no contents.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        if rc == 0 {
            advised += end - start;
        }
    }
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_read_only_mappings_are_taken() {
        let maps = "\
55a0-55b0 r--p 00000000 fe:00 1 /usr/bin/vesemir-agent
55b0-55c0 r-xp 00010000 fe:00 1 /usr/bin/vesemir-agent
55c0-55d0 rw-p 00020000 fe:00 1 /usr/bin/vesemir-agent
7f00-7f10 r-xp 00000000 fe:00 2 /usr/lib/libc.so.6
7f20-7f30 rw-p 00000000 00:00 0
7ff0-7ff1 r-xp 00000000 00:00 0 [vdso]
";
        let got = read_only_ranges(maps, std::path::Path::new("/usr/bin/vesemir-agent"));
        assert_eq!(got, vec![(0x55a0, 0x55b0), (0x55b0, 0x55c0)]);
    }

    #[test]
    fn paging_out_our_own_code_works_and_the_process_runs_on() {
        // The test binary has read-only mappings of its own; code runs on
        // after they are paged out (this very assertion does).
        let n = release_startup_pages();
        assert!(n > 0);
        assert_eq!(
            read_only_ranges("garbage\n\n", std::path::Path::new("/x")),
            vec![]
        );
    }
}
