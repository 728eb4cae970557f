//! Tying the proxy workers to CPUs (`proxy.cpu_affinity`), one worker per CPU.
//!
//! Why: with the workers free to move, the kernel at times runs two of them on one CPU while
//! the other CPU serves the upstream or the clients; one worker then waits out the other's
//! time slice, about 4 ms, and every connection it serves waits with it. Traced on the load
//! harness's 2-CPU machine (BENCHMARKS.md), that was most of keygate's p99 against HAProxy's:
//! unpinned, a worker waited 2 ms or more behind the other 110 times in 5 s; pinned, never.
//! nginx's `worker_cpu_affinity auto` and HAProxy's `cpu-map` do the same, as options.
//!
//! Only when the workers are exactly as many as the CPUs keygate may run on (a machine or a
//! cpuset of its own). With more CPUs than workers, as in a container held to two CPUs' worth
//! of time by a quota on a large node, pinning would tie every such keygate to the same first
//! CPUs of the node; the kernel spreads them better.

use std::io;

use crate::config::CpuAffinity;

/// The CPU each worker is tied to (worker `i` to `cpus[i]`), or `None` to leave the workers
/// to the kernel.
pub fn plan(mode: CpuAffinity, workers: usize, usable: &[usize]) -> Option<Vec<usize>> {
    match mode {
        CpuAffinity::Auto if workers > 1 && usable.len() == workers => Some(usable.to_vec()),
        CpuAffinity::Auto | CpuAffinity::Off => None,
    }
}

/// The CPUs the calling thread may run on, in ascending order: the process's, when asked
/// before any thread is pinned.
#[cfg(target_os = "linux")]
pub fn usable_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data, valid when zeroed; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live `cpu_set_t` and the size passed is its own.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of_val(&set);
    // SAFETY: `cpu < max`, the number of CPUs a `cpu_set_t` holds.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Ties the calling thread to `cpu`.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as in `usable_cpus`; `CPU_SET` checks `cpu` against the set's size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live `cpu_set_t` and the size passed is its own; 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn usable_cpus() -> io::Result<Vec<usize>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "CPU affinity is only set on Linux",
    ))
}

#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "CPU affinity is only set on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_per_cpu_only_when_they_match() {
        assert_eq!(plan(CpuAffinity::Auto, 2, &[0, 1]), Some(vec![0, 1]));
        // A cpuset of its own that is not the machine's first CPUs.
        assert_eq!(plan(CpuAffinity::Auto, 2, &[4, 6]), Some(vec![4, 6]));
        // More CPUs than workers (a quota on a larger machine), or more workers than CPUs.
        assert_eq!(plan(CpuAffinity::Auto, 2, &[0, 1, 2, 3]), None);
        assert_eq!(plan(CpuAffinity::Auto, 4, &[0, 1]), None);
        // One worker gains nothing from being tied down.
        assert_eq!(plan(CpuAffinity::Auto, 1, &[0]), None);
        assert_eq!(plan(CpuAffinity::Off, 2, &[0, 1]), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_is_pinned_to_the_cpu_asked_for() {
        let usable = usable_cpus().unwrap();
        assert!(!usable.is_empty());
        let last = *usable.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(last).unwrap();
            usable_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![last]);
        // The spawning thread is untouched.
        assert_eq!(usable_cpus().unwrap(), usable);
    }
}
