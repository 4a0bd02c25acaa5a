//! Test support for flowlog, kept out of the agent's `src/` so that no fake
//! can reach the shipped binary: a fake IMDS ([`fake_imds`]), the moto
//! harness and a fault-injecting proxy ([`aws`]), frame builders for
//! `BPF_PROG_TEST_RUN` ([`frames`]), network namespaces with a running
//! agent and a packet capture ([`netns`]).

pub mod aws;
pub mod fake_imds;
pub mod frames;
pub mod netns;

/// Tests that need root (BPF, network namespaces) call this first. Under
/// `cargo xtask test` (and CI) FLOWLOG_REQUIRE_ROOT_TESTS=1 turns a missing
/// privilege into a failure instead of a skip.
pub fn require_root() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("FLOWLOG_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("this test needs root (BPF programs, network namespaces)");
    }
    eprintln!("skipped: needs root; run `cargo xtask test` as root");
    false
}

