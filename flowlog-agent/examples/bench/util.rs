//! Helpers shared by the benchmark sections: frames, clocks, namespaces.

use std::{
    fs,
    os::fd::{AsRawFd, OwnedFd},
    process::Command,
};

use anyhow::{bail, Context, Result};

pub const ETH_HLEN: usize = 14;
/// Offset of the TCP source port in the frames below.
pub const V4_SPORT_OFFSET: u32 = (ETH_HLEN + 20) as u32;
pub const V6_SPORT_OFFSET: u32 = (ETH_HLEN + 40) as u32;

/// IPv4 or IPv6, as the tables print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
    pub fn sport_offset(self) -> u32 {
        match self {
            Family::V4 => V4_SPORT_OFFSET,
            Family::V6 => V6_SPORT_OFFSET,
        }
    }
}

/// The smallest TCP frame of a family, without FCS: IPv4 is padded with 6
/// payload bytes to 60 bytes (64 on the wire); IPv6 + TCP cannot be shorter
/// than 74 bytes (78 on the wire).
pub fn tcp_frame(family: Family, dst_mac: [u8; 6], src_mac: [u8; 6], sport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 20 bytes
    tcp[13] = 0x10; // ACK
    match family {
        Family::V4 => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let payload = 6;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + 20 + payload) as u16).to_be_bytes());
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&[10, 199, 0, 1]);
            ip[16..20].copy_from_slice(&[10, 199, 0, 2]);
            f.extend_from_slice(&ip);
            f.extend_from_slice(&tcp);
            f.extend(std::iter::repeat_n(0u8, payload));
            debug_assert_eq!(f.len(), 60);
        }
        Family::V6 => {
            f.extend_from_slice(&0x86DDu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&"fd00:199::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
            ip[24..40].copy_from_slice(&"fd00:199::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&tcp);
            debug_assert_eq!(f.len(), 74);
        }
    }
    f
}

/// CPU time of the calling thread: unlike wall time, it does not grow while
/// another process (a parallel build, say) holds the CPU.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// 1-minute load average.
pub fn load1() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Moves the calling thread into a network namespace; the guard moves it
/// back. Only this thread changes namespace.
pub struct InNetns {
    home: OwnedFd,
}

impl InNetns {
    pub fn enter(ns: &str) -> Result<InNetns> {
        let home: OwnedFd = fs::File::open("/proc/thread-self/ns/net").context("opening own netns")?.into();
        let target = fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
        // SAFETY: valid netns fd.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {ns}: {}", std::io::Error::last_os_error());
        }
        Ok(InNetns { home })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: valid netns fd that we opened.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}


