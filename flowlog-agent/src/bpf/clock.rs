//! Kernel timestamps to Unix time. The capture programs read
//! CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`) where the kernel has it
//! (5.11) and the precise CLOCK_MONOTONIC (`bpf_ktime_get_ns`) before; the
//! drop program always the precise one. Both helpers read the same clock
//! (the timekeeper's monotonic base; the coarse one only skips the clocksource
//! read and lags by at most a tick), so one offset from CLOCK_MONOTONIC
//! serves every program and kernel.

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    now(libc::CLOCK_REALTIME).max(0) as u64
}

/// Add this to a kernel timestamp to get Unix nanoseconds. Sampled at every
/// drain, so wall-clock steps (NTP) apply from the next window on.
pub fn kernel_to_unix_offset_ns() -> i128 {
    // The smallest bracket of three tries keeps the error to a few µs.
    let mut best: Option<(i128, i128)> = None;
    for _ in 0..3 {
        let b1 = now(libc::CLOCK_MONOTONIC);
        let r = now(libc::CLOCK_REALTIME);
        let b2 = now(libc::CLOCK_MONOTONIC);
        let width = b2 - b1;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, r - (b1 + width / 2)));
        }
    }
    best.map(|(_, off)| off).unwrap_or(0)
}
