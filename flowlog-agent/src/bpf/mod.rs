//! The base the pipeline stages stand on, and the one place for what talks
//! to the kernel's BPF machinery below aya: raw `bpf(2)` and other syscalls
//! ([`sys`]: the commands aya lacks, the BPF filesystem, the memlock limit,
//! program info), the kernel feature probes and the flow table they choose
//! ([`probe`], [`TableKind`]), the clocks the programs stamp packets
//! with ([`clock`]), and the one other raw ioctl of the agent: the driver
//! statistics of `ethtool -S` ([`ethtool`], for the link counters).
//!
//! Capture and drain both use it; it uses neither (nor any other module of
//! the agent), so no stage reaches back into another for these.

pub mod clock;
pub mod ethtool;
pub mod probe;
pub mod sys;

pub use probe::{KernelFeatures, TableKind};
