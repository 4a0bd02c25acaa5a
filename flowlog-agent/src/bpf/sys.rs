//! The `bpf(2)` commands aya 0.14 does not wrap: creating an `ARRAY_OF_MAPS`
//! without an ELF definition (our RCU barrier), the hash map batch
//! operations, the small probes of [`super::probe`] and a program's JIT
//! state; and the other raw syscalls around BPF: the memlock limit and the
//! BPF filesystem the maps and links are pinned on.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// `union bpf_attr` is 160 bytes on 6.x kernels; the kernel accepts any
/// size up to what it knows as long as the unknown tail is zero.
#[repr(C, align(8))]
struct Attr([u8; 160]);

impl Attr {
    fn new() -> Self {
        Attr([0; 160])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr for `cmd`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Waits for every running XDP/TC program to finish.
///
/// Updating an `ARRAY_OF_MAPS` slot from userspace makes the kernel call
/// `synchronize_rcu()` before the syscall returns (`maybe_wait_bpf_programs`
/// in kernel/bpf/syscall.c), so that userspace knows no program still uses
/// the old value. XDP and TC programs run inside RCU read-side sections, so
/// after the call no program that read the old generation is still running.
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    /// `template` is any map that can be an inner map (an array is fine);
    /// the barrier keeps its own copy of the fd.
    pub fn new(template: BorrowedFd<'_>) -> io::Result<Self> {
        let inner = template.try_clone_to_owned()?;
        let mut attr = Attr::new();
        attr.put_u32(0, BPF_MAP_TYPE_ARRAY_OF_MAPS);
        attr.put_u32(4, 4); // key_size
        attr.put_u32(8, 4); // value_size (an fd)
        attr.put_u32(12, 1); // max_entries
        attr.put_u32(20, inner.as_raw_fd() as u32); // inner_map_fd
        attr.0[28..28 + 12].copy_from_slice(b"flowlog_rcu\0");
        let fd = bpf(BPF_MAP_CREATE, &mut attr)? as RawFd;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        let outer = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(RcuBarrier { outer, inner })
    }

    pub fn wait(&self) -> io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = Attr::new();
        attr.put_u32(0, self.outer.as_raw_fd() as u32);
        attr.put_u64(8, &key as *const u32 as u64);
        attr.put_u64(16, &value as *const u32 as u64);
        attr.put_u64(24, 0); // BPF_ANY
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

/// Whether the kernel has the hash map batch operations (5.6): a batch
/// lookup of an empty hash answers ENOENT; kernels without the command EINVAL.
pub fn hash_batch_supported() -> io::Result<bool> {
    let mut attr = Attr::new();
    attr.put_u32(0, BPF_MAP_TYPE_HASH);
    attr.put_u32(4, 4); // key_size
    attr.put_u32(8, 4); // value_size
    attr.put_u32(12, 1); // max_entries
    let fd = bpf(BPF_MAP_CREATE, &mut attr)? as RawFd;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    let map = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out: Vec<(u32, u32)> = Vec::new();
    match lookup_all(map.as_fd(), 1, &mut out) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Loads a tiny program (without a verifier log) to see whether the kernel
/// accepts it; the fd is closed at once. EINVAL and EACCES are the
/// verifier's "no"; other errors are returned.
pub fn program_loads(prog_type: u32, insns: &[u64]) -> io::Result<bool> {
    match load_program(prog_type, insns) {
        // Dropping the fd unloads the program.
        Ok(_fd) => Ok(true),
        // ENOTSUPP (524): the JIT cannot translate it (arm64 atomics before 5.18).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EACCES | 524)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `BPF_PROG_LOAD` of a GPL program without a verifier log; the program
/// lives as long as the returned fd.
pub fn load_program(prog_type: u32, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = Attr::new();
    attr.put_u32(0, prog_type);
    attr.put_u32(4, insns.len() as u32);
    attr.put_u64(8, insns.as_ptr() as u64);
    attr.put_u64(16, license.as_ptr() as u64);
    let fd = bpf(BPF_PROG_LOAD, &mut attr)? as RawFd;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sizes of a loaded program from `BPF_OBJ_GET_INFO_BY_FD`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgSizes {
    /// Machine code the JIT made; 0 when the program runs in the interpreter.
    pub jited: u32,
    /// The instructions after the verifier's rewrites.
    pub xlated: u32,
}

/// [`ProgSizes`] of the program behind `prog` (aya offers this only for
/// programs it loaded itself).
pub fn prog_sizes(prog: BorrowedFd<'_>) -> io::Result<ProgSizes> {
    // struct bpf_prog_info up to xlated_prog_len: type, id, tag[8],
    // jited_prog_len, xlated_prog_len. The kernel fills only the `info_len`
    // bytes asked for.
    let mut info = [0u32; 6];
    let mut attr = Attr::new();
    attr.put_u32(0, prog.as_raw_fd() as u32); // bpf_fd
    attr.put_u32(4, std::mem::size_of_val(&info) as u32); // info_len
    attr.put_u64(8, info.as_mut_ptr() as u64); // info
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(ProgSizes { jited: info[4], xlated: info[5] })
}

/// Whether the program behind `prog` was JIT-compiled (else the kernel
/// interprets it, or cannot run it at all under `CONFIG_BPF_JIT_ALWAYS_ON`).
pub fn prog_jited(prog: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(prog_sizes(prog)?.jited > 0)
}

/// Lifts `RLIMIT_MEMLOCK`: kernels < 5.11 charge BPF memory to it, later
/// ones ignore it. A failure shows later as EPERM from map creation.
pub fn raise_memlock() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain setrlimit with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `p` is on a BPF filesystem (where maps and links can be pinned).
pub fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: valid path and out struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts a BPF filesystem on /sys/fs/bpf.
pub fn mount_bpffs() -> io::Result<()> {
    let (src, dst, ty) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: constant C strings.
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads every entry of a hash map, `chunk` entries per syscall. Only call it
/// on a map no program writes to any more (see [`RcuBarrier`]).
pub fn lookup_all<K: Copy, V: Copy>(map: BorrowedFd<'_>, chunk: usize, out: &mut Vec<(K, V)>) -> io::Result<()> {
    batch(BPF_MAP_LOOKUP_BATCH, map, chunk, out)
}

/// Reads and deletes every entry of a hash map.
pub fn lookup_and_delete_all<K: Copy, V: Copy>(map: BorrowedFd<'_>, chunk: usize, out: &mut Vec<(K, V)>) -> io::Result<()> {
    batch(BPF_MAP_LOOKUP_AND_DELETE_BATCH, map, chunk, out)
}

/// Deletes `keys`, which must all be present.
pub fn delete_keys<K: Copy>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    for chunk in keys.chunks(65_536) {
        let mut attr = Attr::new();
        attr.put_u64(16, chunk.as_ptr() as u64);
        attr.put_u32(32, chunk.len() as u32);
        attr.put_u32(36, map.as_raw_fd() as u32);
        bpf(BPF_MAP_DELETE_BATCH, &mut attr)?;
    }
    Ok(())
}

fn batch<K: Copy, V: Copy>(cmd: libc::c_long, map: BorrowedFd<'_>, chunk: usize, out: &mut Vec<(K, V)>) -> io::Result<()> {
    let mut chunk = chunk.max(1);
    let mut keys: Vec<K> = Vec::with_capacity(chunk);
    let mut values: Vec<V> = Vec::with_capacity(chunk);
    // The batch token of hash maps is a bucket index (u32); 8 bytes is ample.
    let mut in_batch = [0u8; 8];
    let mut out_batch = [0u8; 8];
    let mut first = true;
    loop {
        if keys.capacity() < chunk {
            keys.reserve(chunk);
            values.reserve(chunk);
        }
        let mut attr = Attr::new();
        attr.put_u64(0, if first { 0 } else { in_batch.as_ptr() as u64 });
        attr.put_u64(8, out_batch.as_mut_ptr() as u64);
        attr.put_u64(16, keys.as_mut_ptr() as u64);
        attr.put_u64(24, values.as_mut_ptr() as u64);
        attr.put_u32(32, chunk as u32); // count
        attr.put_u32(36, map.as_raw_fd() as u32);
        let res = bpf(cmd, &mut attr);
        let n = attr.get_u32(32) as usize;
        // SAFETY: the kernel wrote n keys and n values (n <= chunk <= capacity).
        unsafe {
            keys.set_len(n.min(chunk));
            values.set_len(n.min(chunk));
        }
        out.extend(keys.iter().copied().zip(values.iter().copied()));
        keys.clear();
        values.clear();
        match res {
            Ok(_) => {
                in_batch = out_batch;
                first = false;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more entries than `chunk`: retry bigger.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => chunk *= 2,
            Err(e) => return Err(e),
        }
    }
}

/// A shared mapping of part of a `BPF_F_MMAPABLE` array (the kernel maps
/// the array's values from file offset 0), writable or read-only.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Bytes `[offset, offset + len)` of the array's values, writable;
    /// `offset` a multiple of the page size.
    pub fn new(map: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<Mapping> {
        Self::map(map, offset, len, libc::PROT_READ | libc::PROT_WRITE)
    }

    /// The same, read-only: a write through it faults instead of changing a count.
    pub fn read_only(map: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<Mapping> {
        Self::map(map, offset, len, libc::PROT_READ)
    }

    fn map(map: BorrowedFd<'_>, offset: usize, len: usize, prot: libc::c_int) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of the fd; checked for failure.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, map.as_raw_fd(), offset as libc::off_t) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: ptr as *mut u8, len })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
