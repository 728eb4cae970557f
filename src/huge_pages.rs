//! Transparent huge pages off for the gateway's own memory.
//!
//! Why: the first touch of a transparent huge page makes the kernel zero 2 MiB at once,
//! inside whichever request touched it. Filling the key cache from empty (a restart, a
//! deploy) grows its shards and the allocator takes fresh memory for them: in the cold-cache
//! benchmark (`benches/load/run cold`) `clear_page_erms` under `do_huge_pmd_anonymous_page`
//! took 48% of keygate's CPU, and about one miss in fifty waited 12–20 ms for it (p99), with
//! every store call under 10 ms. With huge pages off, faults zero 4 KiB at a time and the
//! miss p99 was 0.78–0.84 ms (BENCHMARKS.md). Redis gives the same advice for the same
//! reason. The setting holds for this process and whatever it starts; a machine whose
//! policy is `never` is unaffected, and one set to `always` is overridden for keygate only.

use std::io;

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`). Memory already
/// mapped keeps what it has; everything mapped from now on uses normal pages.
#[cfg(target_os = "linux")]
pub fn disable_for_this_process() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of
    // ours.
    let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether transparent huge pages are off for this process.
#[cfg(target_os = "linux")]
pub fn disabled_for_this_process() -> io::Result<bool> {
    // SAFETY: as above; PR_GET_THP_DISABLE returns the flag.
    let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    if flag < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(flag == 1)
    }
}

#[cfg(not(target_os = "linux"))]
pub fn disable_for_this_process() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "transparent huge pages are a Linux setting",
    ))
}

#[cfg(not(target_os = "linux"))]
pub fn disabled_for_this_process() -> io::Result<bool> {
    Ok(false)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn they_are_off_once_turned_off() {
        // The flag is per process: the other tests in this binary do not depend on it.
        disable_for_this_process().unwrap();
        assert!(disabled_for_this_process().unwrap());
        disable_for_this_process().unwrap(); // a second time is no error
    }
}
