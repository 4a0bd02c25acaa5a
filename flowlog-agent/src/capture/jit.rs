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
//! unusable ([`crate::bpf::probe::probe_jited`]) and the startup line says which programs run
//! interpreted ([`JitState::log`]).

use std::os::fd::AsFd;

use aya::Ebpf;

use crate::bpf::{probe::jit_enabled, sys::prog_jited};

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
