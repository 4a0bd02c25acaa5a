//! Whether the loaded programs run JIT-compiled or in the kernel's
//! interpreter.
//!
//! A kernel built without `CONFIG_BPF_JIT_ALWAYS_ON` (Debian's arm64 kernels,
//! for one) runs a program its JIT cannot translate in the interpreter
//! instead of refusing it: the load succeeds and only `jited_prog_len` (0)
//! of `BPF_OBJ_GET_INFO_BY_FD` tells. That is the case of BPF
//! compare-and-exchange and the fetch atomics on arm64 kernels 5.12-5.17
//! (the verifier takes them, the arm64 JIT only from 5.18), and of every
//! program when `net.core.bpf_jit_enable=0`. The interpreter costs several
//! times the CPU per packet, so the table probe counts such a program as
//! unusable ([`probe_jited`]) and the startup line says which programs run
//! interpreted ([`JitState::log`]).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use aya::Ebpf;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const JIT_SYSCTL: &str = "/proc/sys/net/core/bpf_jit_enable";

/// The kernel takes a `bpf_attr` shorter than its own (zero tail).
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<RawFd> {
    // SAFETY: attr is a valid, zero-padded bpf_attr for `cmd`.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

/// Whether the program behind `fd` was JIT-compiled: `jited_prog_len` of
/// its `struct bpf_prog_info` (offset 16) is not 0.
pub fn prog_jited(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // type, id, tag[8], jited_prog_len, xlated_prog_len: the first 24 bytes.
    let mut info = [0u8; 24];
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes([info[16], info[17], info[18], info[19]]) != 0)
}

/// Whether the JIT compiles at all (`net.core.bpf_jit_enable` not 0): a
/// program every JIT translates (`r0 = 0; exit`) comes out JIT-compiled.
/// Asked of the kernel rather than read from /proc/sys, which a network
/// namespace other than the first does not show. The sysctl only if the
/// probe cannot load.
pub fn jit_enabled() -> bool {
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    match probe_jited(BPF_PROG_TYPE_SCHED_CLS, &[0xb7, 0x95]) {
        Ok(Some(jited)) => jited,
        _ => std::fs::read_to_string(JIT_SYSCTL).map_or(true, |v| v.trim() != "0"),
    }
}

/// Loads a tiny program: `None` if the kernel refuses it (EINVAL, EACCES,
/// ENOTSUPP), else whether it was JIT-compiled. The fd is closed at once.
pub fn probe_jited(prog_type: u32, insns: &[u64]) -> io::Result<Option<bool>> {
    let license = c"GPL";
    let mut attr = Attr([0; 128]);
    attr.0[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr.0[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => {
            // SAFETY: a new fd that nothing else owns; closing it unloads the program.
            let prog = unsafe { OwnedFd::from_raw_fd(fd) };
            prog_jited(prog.as_fd()).map(Some)
        }
        // ENOTSUPP (524): a JIT that cannot translate it on a JIT-always-on kernel.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EACCES | 524)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The programs loaded at startup and whether each runs JIT-compiled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JitState {
    /// Names of the loaded programs the kernel interprets.
    pub interpreted: Vec<String>,
    /// Programs checked.
    pub checked: usize,
    /// `net.core.bpf_jit_enable` was not 0.
    pub jit_enabled: bool,
}

impl JitState {
    /// Reads every loaded program of `ebpf` (the others are loaded later,
    /// when an interface needs them, and share these programs' code).
    pub fn of(ebpf: &Ebpf) -> JitState {
        let mut s = JitState { jit_enabled: jit_enabled(), ..JitState::default() };
        for (name, prog) in ebpf.programs() {
            let Ok(fd) = prog.fd() else { continue };
            s.checked += 1;
            match prog_jited(fd.as_fd()) {
                Ok(true) => {}
                Ok(false) => s.interpreted.push(name.to_string()),
                Err(e) => tracing::debug!("reading the JIT state of {name}: {e}"),
            }
        }
        s.interpreted.sort();
        s
    }

    /// Every checked program is JIT-compiled (the `jited` label).
    pub fn all_jited(&self) -> bool {
        self.interpreted.is_empty()
    }

    /// The startup line.
    pub fn log(&self) {
        if self.all_jited() {
            tracing::info!(programs = self.checked, "eBPF programs: all JIT-compiled");
        } else if !self.jit_enabled {
            tracing::warn!(
                interpreted = %self.interpreted.join(","),
                "eBPF programs run in the kernel's interpreter: the JIT is off (net.core.bpf_jit_enable=0), so nothing \
                 can be JIT-compiled; counts stay exact, each packet costs more CPU. Set net.core.bpf_jit_enable=1 and restart"
            );
        } else {
            tracing::warn!(
                interpreted = %self.interpreted.join(","),
                "eBPF programs run in the kernel's interpreter although the JIT is on: this kernel's JIT cannot translate \
                 them (arm64 before 5.18 lacks the fetch atomics); counts stay exact, each event costs more CPU"
            );
        }
    }
}
