//! Benchmark-only kernel programs (`cargo xtask bench`), in their own object
//! so the production object the agent embeds does not grow.
//!
//! - `bench_*_pass`: return at once. The floor of the harness (and, attached
//!   to a veth, the cost of merely having an XDP/TC program there).
//! - `bench_*_min`: the least a flow counter can do: parse Ethernet, IPv4/IPv6
//!   (no VLANs, no extension headers, no validation beyond bounds) and the
//!   ports, and count packets and bytes in a per-CPU hash (no atomics, no
//!   generation, no clock). The yardstick of the 1.2× target.
//! - `bench_*_driver`: rewrite the frame's TCP source port to the next of
//!   `flows` values, then tail-call the program under test. Under
//!   BPF_PROG_TEST_RUN with `repeat` this cycles through distinct flows at
//!   in-kernel speed, which a single prepared frame cannot do.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuHashMap, ProgramArray},
    programs::{TcContext, XdpContext},
};
use flowlog_common::{direction, family, FlowKey};

/// Same capacity as the agent's default `--max-flows`: same load factor.
const MAX_FLOWS: u32 = 65_536;

/// Packets and bytes of one flow on one CPU.
#[repr(C)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
}

/// Driver settings, written by the benchmark before each run.
#[repr(C)]
pub struct Driver {
    /// Distinct source ports to cycle through (1..=65,536).
    pub flows: u32,
    /// Offset of the TCP source port in the frame.
    pub port_offset: u32,
    /// Slot of `TARGETS` to tail-call.
    pub slot: u32,
    /// Next source port; the driver advances it.
    pub next: u32,
}

#[map]
static MIN_FLOWS: PerCpuHashMap<FlowKey, Counts> = PerCpuHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static DRIVER: Array<Driver> = Array::with_max_entries(1, 0);
#[map]
static XDP_TARGETS: ProgramArray = ProgramArray::with_max_entries(4, 0);
#[map]
static TC_TARGETS: ProgramArray = ProgramArray::with_max_entries(4, 0);

#[xdp]
pub fn bench_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[classifier]
pub fn bench_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Ends the TC chain (TC_ACT_OK, TCX "pass"), as a CNI's program does: the
/// e2e tests put it on a hook before the agent starts, and flowlog must still
/// see every packet.
#[classifier]
pub fn bench_tc_stop(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[xdp]
pub fn bench_xdp_min(ctx: XdpContext) -> u32 {
    min_count(ctx.data(), ctx.data_end(), ctx.ingress_ifindex() as u32, direction::INGRESS);
    xdp_action::XDP_PASS
}

#[classifier]
pub fn bench_tc_min(ctx: TcContext) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    min_count(ctx.data(), ctx.data_end(), ifindex, direction::EGRESS);
    TC_ACT_UNSPEC
}

#[xdp]
pub fn bench_xdp_driver(ctx: XdpContext) -> u32 {
    if let Some(slot) = next_flow(ctx.data(), ctx.data_end()) {
        unsafe { XDP_TARGETS.tail_call(&ctx, slot) };
    }
    // Only reached when the tail call failed: the benchmark checks for it.
    xdp_action::XDP_ABORTED
}

#[classifier]
pub fn bench_tc_driver(ctx: TcContext) -> i32 {
    if let Some(slot) = next_flow(ctx.data(), ctx.data_end()) {
        unsafe { TC_TARGETS.tail_call(&ctx, slot) };
    }
    TC_ACT_SHOT as i32
}

/// Writes the next source port into the frame; returns the target slot.
#[inline(always)]
fn next_flow(data: usize, data_end: usize) -> Option<u32> {
    let d = DRIVER.get_ptr_mut(0)?;
    let d = unsafe { &mut *d };
    let port = d.next;
    d.next = if port + 1 >= d.flows { 0 } else { port + 1 };
    // A constant bound on the offset lets the verifier check the write.
    let off = (d.port_offset & 0x7f) as usize;
    if data + off + 2 > data_end {
        return None;
    }
    unsafe { *((data + off) as *mut [u8; 2]) = (port as u16).to_be_bytes() };
    Some(d.slot)
}

/// Same as `parse::v4_slot` of the agent's programs: an IPv4 address in a
/// 16-byte slot, built from words so LLVM emits no byte-wise memset.
#[inline(always)]
fn v4_slot(a: [u8; 4]) -> [u8; 16] {
    let words = [u32::from_ne_bytes(a), 0, 0, 0];
    // SAFETY: same size; any bytes are valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

#[inline(always)]
fn min_count(data: usize, data_end: usize, ifindex: u32, dir: u8) {
    if data + 14 > data_end {
        return;
    }
    let ethertype = unsafe { u16::from_be_bytes(*((data + 12) as *const [u8; 2])) };
    let (mut key, l4, ip_len) = match ethertype {
        0x0800 => {
            if data + 14 + 20 > data_end {
                return;
            }
            let ip = unsafe { &*((data + 14) as *const [u8; 20]) };
            let key = FlowKey {
                ifindex,
                src_addr: v4_slot([ip[12], ip[13], ip[14], ip[15]]),
                dst_addr: v4_slot([ip[16], ip[17], ip[18], ip[19]]),
                src_port: 0,
                dst_port: 0,
                protocol: ip[9],
                direction: dir,
                family: family::IPV4,
                _pad: 0,
            };
            (key, 14 + ((ip[0] & 0x0f) as usize) * 4, u16::from_be_bytes([ip[2], ip[3]]) as u64)
        }
        0x86dd => {
            if data + 14 + 40 > data_end {
                return;
            }
            let ip = unsafe { &*((data + 14) as *const [u8; 40]) };
            let mut key = FlowKey {
                ifindex,
                src_addr: [0; 16],
                dst_addr: [0; 16],
                src_port: 0,
                dst_port: 0,
                protocol: ip[6],
                direction: dir,
                family: family::IPV6,
                _pad: 0,
            };
            key.src_addr.copy_from_slice(&ip[8..24]);
            key.dst_addr.copy_from_slice(&ip[24..40]);
            (key, 14 + 40, 40 + u16::from_be_bytes([ip[4], ip[5]]) as u64)
        }
        _ => return,
    };
    if key.protocol == 6 || key.protocol == 17 {
        if data + l4 + 4 > data_end {
            return;
        }
        let p = unsafe { &*((data + l4) as *const [u8; 4]) };
        key.src_port = u16::from_be_bytes([p[0], p[1]]);
        key.dst_port = u16::from_be_bytes([p[2], p[3]]);
    }
    // Per-CPU values: no other CPU touches them, so a plain add is exact.
    if let Some(c) = MIN_FLOWS.get_ptr_mut(&key) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += ip_len;
        }
        return;
    }
    let _ = MIN_FLOWS.insert(&key, &Counts { packets: 1, bytes: ip_len }, 0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
