//! CPU lists and thread pinning. `parse_cpu_list("0-3,6")` gives `[0, 1, 2, 3, 6]`.

use std::io;

/// Parses a Linux-style CPU list (`0-3,6`), keeping the order given and refusing duplicates.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .map_err(|_| format!("bad CPU number {lo:?} in {text:?}"))?;
        let hi: usize = hi
            .parse()
            .map_err(|_| format!("bad CPU number {hi:?} in {text:?}"))?;
        if hi < lo {
            return Err(format!("bad CPU range {part:?} in {text:?}"));
        }
        for cpu in lo..=hi {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} listed twice in {text:?}"));
            }
            cpus.push(cpu);
        }
    }
    if cpus.is_empty() {
        return Err(format!("empty CPU list {text:?}"));
    }
    Ok(cpus)
}

/// The CPUs this process may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most size_of bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// A `cpu_set_t` holding exactly `cpu`.
pub fn cpu_set_of(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: zeroed cpu_set_t is the empty set; CPU_SET writes inside it (callers pass CPUs
    // below CPU_SETSIZE: ones this process may use).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins the calling thread to exactly `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    pin_current_thread_to_set(&[cpu])
}

/// Restricts the calling thread to `cpus` (which must not be empty).
pub fn pin_current_thread_to_set(cpus: &[usize]) -> io::Result<()> {
    if let Some(bad) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {bad} out of range"),
        ));
    }
    if cpus.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty CPU set"));
    }
    // SAFETY: zeroed cpu_set_t is the empty set; every CPU was checked to be in range.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        set
    };
    // SAFETY: pid 0 is the calling thread; the set is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
pub fn current_thread_cpus() -> io::Result<Vec<usize>> {
    allowed_cpus()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse_cpu_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpu_list("1").unwrap(), vec![1]);
        assert_eq!(parse_cpu_list(" 2 , 0 ").unwrap(), vec![2, 0]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("0,0").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn pinning_restricts_the_thread() {
        let first = allowed_cpus().unwrap()[0];
        std::thread::spawn(move || {
            pin_current_thread(first).unwrap();
            assert_eq!(current_thread_cpus().unwrap(), vec![first]);
        })
        .join()
        .unwrap();
    }
}
