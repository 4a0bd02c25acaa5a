//! The driver statistics `ethtool -S` prints, read with the `SIOCETHTOOL`
//! ioctl: `ETHTOOL_GSSET_INFO` (how many), `ETHTOOL_GSTRINGS` (their names,
//! string set `ETH_SS_STATS`) and `ETHTOOL_GSTATS` (their values). The
//! netlink ethtool API has no driver statistics. The one crate that wraps
//! these ioctls (below-ethtool) drops the errno, which is how a driver
//! without statistics is told apart from a vanished interface.
//!
//! The kernel writes as many entries as the driver has *now*, whatever the
//! buffer it was given: a driver that grew its list between two calls (more
//! queues) would write past it. Every buffer here is a mapping followed by an
//! inaccessible page, so such a call fails with EFAULT instead.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
/// Each name's fixed size in `ETHTOOL_GSTRINGS`, its NUL included.
pub const ETH_GSTRING_LEN: usize = 32;

/// A socket of the agent's network namespace: the interfaces named in the
/// ioctls are looked up there.
pub struct Ethtool(OwnedFd);

impl Ethtool {
    pub fn new() -> io::Result<Ethtool> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(Ethtool(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, ifname: &str, data: *mut u8) -> io::Result<()> {
        let name = ifname.as_bytes();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        // SAFETY: all-zero is a valid ifreq.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
            *d = *s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = data as *mut libc::c_char;
        // SAFETY: `data` points to a buffer laid out for the command it starts with.
        #[allow(clippy::useless_conversion)]
        if unsafe { libc::ioctl(self.0.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The names of the interface's driver statistics, in the driver's order;
    /// empty where it has none (loopback, most virtual devices).
    pub fn stat_names(&self, ifname: &str) -> io::Result<Vec<String>> {
        let Some(n) = self.stat_count(ifname)? else { return Ok(Vec::new()) };
        // struct ethtool_gstrings: cmd, string_set, len, then the names.
        let mut buf = Guarded::new(12 + n * ETH_GSTRING_LEN)?;
        buf.put_u32(0, ETHTOOL_GSTRINGS);
        buf.put_u32(4, ETH_SS_STATS);
        self.list(ifname, &mut buf, 8, n)?;
        Ok(buf.bytes()[12..12 + n * ETH_GSTRING_LEN]
            .chunks(ETH_GSTRING_LEN)
            .map(|c| String::from_utf8_lossy(&c[..c.iter().position(|b| *b == 0).unwrap_or(c.len())]).into_owned())
            .collect())
    }

    /// The values of the `n` statistics [`Self::stat_names`] named, in that
    /// order; an error if the driver's list changed in between.
    pub fn stat_values(&self, ifname: &str, n: usize) -> io::Result<Vec<u64>> {
        // struct ethtool_stats: cmd, n_stats, then the u64 values.
        let mut buf = Guarded::new(8 + n * 8)?;
        buf.put_u32(0, ETHTOOL_GSTATS);
        self.list(ifname, &mut buf, 4, n)?;
        Ok(buf.bytes()[8..8 + n * 8].chunks(8).map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    /// A command that answers a list of `n` entries, its length at `len_at`:
    /// an error if the driver has another number now (EFAULT: more than fit).
    fn list(&self, ifname: &str, buf: &mut Guarded, len_at: usize, n: usize) -> io::Result<()> {
        buf.put_u32(len_at, n as u32);
        match self.ioctl(ifname, buf.ptr()) {
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => Err(changed()),
            Err(e) => Err(e),
            Ok(()) if buf.get_u32(len_at) as usize != n => Err(changed()),
            Ok(()) => Ok(()),
        }
    }

    /// `None`: no statistics (no ethtool operations, or none of this set).
    fn stat_count(&self, ifname: &str) -> io::Result<Option<usize>> {
        // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), then one
        // u32 per set asked for.
        let mut buf = Guarded::new(20)?;
        buf.put_u32(0, ETHTOOL_GSSET_INFO);
        buf.put_u64(8, 1 << ETH_SS_STATS);
        match self.ioctl(ifname, buf.ptr()) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(None),
            r => r?,
        }
        let has = buf.get_u64(8) & (1 << ETH_SS_STATS) != 0;
        let n = buf.get_u32(16) as usize;
        Ok((has && n > 0).then_some(n))
    }
}

fn changed() -> io::Error {
    io::Error::other("the driver's list of statistics changed while it was read")
}

/// A zeroed, page-aligned buffer of `len` bytes whose mapping is followed by
/// a `PROT_NONE` page: a kernel write past the pages of `len` faults.
struct Guarded {
    ptr: *mut u8,
    len: usize,
    mapped: usize,
}

impl Guarded {
    fn new(len: usize) -> io::Result<Guarded> {
        // SAFETY: no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let data = len.div_ceil(page).max(1) * page;
        let mapped = data + page;
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let (prot, flags) = (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS);
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), mapped, prot, flags, -1, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let g = Guarded { ptr: ptr as *mut u8, len, mapped };
        // SAFETY: the last page of our own mapping.
        if unsafe { libc::mprotect(g.ptr.add(data) as *mut libc::c_void, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(g)
    }

    fn ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes of our mapping (anonymous: zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn put_u32(&mut self, off: usize, v: u32) {
        // SAFETY: within `len`, checked by the slice below in debug builds too.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len)[off..off + 4].copy_from_slice(&v.to_ne_bytes()) }
    }

    fn put_u64(&mut self, off: usize, v: u64) {
        // SAFETY: as put_u32.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len)[off..off + 8].copy_from_slice(&v.to_ne_bytes()) }
    }

    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.bytes()[off..off + 4].try_into().expect("4 bytes"))
    }

    fn get_u64(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.bytes()[off..off + 8].try_into().expect("8 bytes"))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.mapped) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs no privilege: reading statistics is open to every user.
    #[test]
    fn loopback_has_none_and_a_missing_interface_is_an_error() {
        let e = Ethtool::new().unwrap();
        assert_eq!(e.stat_names("lo").unwrap(), Vec::<String>::new());
        let err = e.stat_names("flnosuch0").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
        assert_eq!(e.stat_names("").unwrap_err().raw_os_error(), Some(libc::ENODEV));
        assert_eq!(e.stat_names("a-name-far-too-long").unwrap_err().raw_os_error(), Some(libc::ENODEV));
    }

    #[test]
    fn a_write_past_the_buffer_faults() {
        let mut g = Guarded::new(20).unwrap();
        g.put_u64(8, u64::MAX);
        assert_eq!((g.get_u64(8), g.get_u32(16)), (u64::MAX, 0));
        // SAFETY: the page after the data is PROT_NONE: read(2) into it fails with EFAULT.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let r = unsafe { libc::read(f.as_raw_fd(), g.ptr().add(page) as *mut libc::c_void, 16) };
        assert_eq!((r, io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EFAULT)));
    }
}
