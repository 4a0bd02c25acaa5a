//! Benchmarks 3 and 4: drain + format, ship to a file, and peak RSS.
//!
//! Method: one child process per size (so `ru_maxrss` is that size's peak),
//! which loads the agent's programs and maps exactly as the agent does
//! (`Capture::loader` with `--max-flows` ≥ the size), fills the flow table of
//! the current generation from userspace with BPF_MAP_UPDATE_BATCH (4,096
//! entries per call, so filling adds no memory of its own), and then times
//! what the agent does once per window (agent.rs): `FlowTables::rotate()`
//! (flip, RCU barrier, batched lookup), `enrich::for_each_record` streaming
//! into `Format::write` (one buffer of lines, reused across windows, as
//! `ship::WindowWriter` does), `Sink::write_batch` to a file, and
//! `FlowTables::release()` (batched delete of what was read). Records alone
//! (`for_each_record` without formatting) are timed in a separate pass.
//! Single-threaded, so records/s is per core; then records + format as the
//! agent runs them, on every core (`WindowRecords::write_parallel`, wall
//! time), and its ranges one after another (thread CPU of each: the wall
//! time on idle cores), checked byte-identical to the single-thread text.
//!
//! Both flow tables: the hash table is filled with BPF_MAP_UPDATE_BATCH of
//! keys and values; the slot table with BPF_MAP_UPDATE_BATCH of array
//! indexes and published slots, each at the slot the programs would have
//! claimed (its home slot, else the next free one), so its drain reads
//! exactly what the kernel would have left.

use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use flowlog_records::{
    format::{reference, Format, LineWriter},
    record::FlowRecord,
};
use flowlog_agent::{
    bpf::TableKind,
    capture::Capture,
    enrich::{self, HostMeta, InterfaceMeta},
    capture::links,
    drain::{Drained, FlowTables},
    ship::{file::FileOutput, parquet, OutputSpec, Part, ShipConfig, Shipper},
};
use flowlog_common::{family, maps, FlowKey, FlowSlot, FlowStats, TcpFlagsSeen};

use crate::{
    kernel::thousands,
    util::{median, thread_cpu_ns},
};

pub const CHILD_ARG: &str = "__drain-child";
const IFINDEX: u32 = 2;
/// Keys per BPF_MAP_UPDATE_BATCH call while filling.
const FILL_CHUNK: usize = 4096;

/// (flows, family, windows timed), each with both tables.
const CASES: [(usize, &str, usize); 4] =
    [(10_000, "v4", 9), (100_000, "v4", 7), (1_000_000, "v4", 5), (1_000_000, "v6", 5)];
const TABLES: [&str; 2] = ["hash", "slots"];

#[derive(Clone, Debug, Default)]
pub struct Row {
    pub flows: usize,
    /// "hash" or "slots".
    pub table: String,
    pub family: String,
    /// Median CPU ms of each stage (rotate: also wall ms, which includes
    /// waiting for the RCU grace period).
    pub rotate_ms: f64,
    pub rotate_wall_ms: f64,
    /// Of `rotate_ms`: emptying the table after shipping (`release`).
    pub release_ms: f64,
    /// Of which CPU time in the kernel (the batched lookup and delete).
    pub rotate_sys_ms: f64,
    pub enrich_ms: f64,
    pub format_ms: f64,
    /// The same with the writer of commit 3c34e0b (`format::reference`).
    pub format_ref_ms: f64,
    /// Records + format as the agent runs them (`WindowRecords::write_parallel`,
    /// `threads` ranges), wall ms.
    pub parallel_ms: f64,
    pub threads: usize,
    /// The same, thread CPU: the sort plus the longest range (the wall
    /// time on idle cores), and the sort plus all ranges.
    pub parallel_path_ms: f64,
    pub parallel_cpu_ms: f64,
    /// Formatter alone, ns per record, on records built beforehand: the
    /// reference writer, `Format::write`, `LineWriter`.
    pub only_ref_ns: f64,
    pub only_write_ns: f64,
    pub only_lines_ns: f64,
    /// The records' lines to a Parquet file and to gzip text (the S3
    /// bodies), ns per record.
    pub parquet_ns: f64,
    /// Of `parquet_ns`: splitting the lines into typed columns.
    pub parquet_cols_ns: f64,
    pub gzip_ns: f64,
    /// Of the peak: the drained flows and the window's text, MiB.
    pub drained_mib: f64,
    pub ship_ms: f64,
    /// Bytes of formatted records per window.
    pub bytes: u64,
    /// Peak and after-load resident set, KiB.
    pub maxrss_kib: u64,
    /// Peak resident set of a second child that only does what the agent
    /// does per window (`Shipper::write_window` to a `file:` output), KiB,
    /// and that call's median wall ms.
    pub agent_maxrss_kib: u64,
    pub agent_write_ms: f64,
    pub base_rss_kib: u64,
    /// rotate() of an empty table: the flip and RCU barrier alone.
    pub empty_rotate_ms: f64,
}

pub struct Results {
    pub rows: Vec<Row>,
    pub out_dir: PathBuf,
}

pub fn run() -> Result<Results> {
    let exe = std::env::current_exe()?;
    // A disk-backed directory (not tmpfs), under the build's target dir.
    let out_dir = exe.parent().and_then(Path::parent).map(|p| p.join("bench-out")).unwrap_or_else(|| "bench-out".into());
    fs::create_dir_all(&out_dir)?;
    let mut rows = Vec::new();
    for (flows, fam, windows) in CASES {
      for table in TABLES {
        eprintln!("    {} flows ({fam}), {table} table, {windows} windows", thousands(flows));
        let child = |mode: &[&str]| -> Result<String> {
            let out = Command::new(&exe)
                .args([CHILD_ARG, &flows.to_string(), fam, &windows.to_string()])
                .arg(&out_dir)
                .arg(table)
                .args(mode)
                .output()
                .context("starting the drain child")?;
            if !out.status.success() {
                bail!("drain child {mode:?} for {flows} flows failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text.lines().find(|l| l.starts_with("RESULT ")).ok_or_else(|| anyhow!("no result from child: {text}"))?;
            Ok(line.to_string())
        };
        let (line, agent_line) = (child(&[])?, child(&["agent"])?);
        let field = |line: &str, k: &str| -> Result<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .ok_or_else(|| anyhow!("no {k} in {line}"))?
                .parse()
                .with_context(|| format!("{k} in {line}"))
        };
        let get = |k: &str| field(&line, k);
        let agent_get = |k: &str| field(&agent_line, k);
        rows.push(Row {
            agent_maxrss_kib: agent_get("maxrss_kib")? as u64,
            agent_write_ms: agent_get("write_ms")?,
            flows,
            table: table.into(),
            family: if fam == "v4" { "IPv4".into() } else { "IPv6".into() },
            rotate_ms: get("rotate_ms")?,
            rotate_wall_ms: get("rotate_wall_ms")?,
            release_ms: get("release_ms")?,
            rotate_sys_ms: get("rotate_sys_ms")?,
            enrich_ms: get("enrich_ms")?,
            format_ms: get("format_ms")?,
            format_ref_ms: get("format_ref_ms")?,
            parallel_ms: get("parallel_ms")?,
            threads: get("threads")? as usize,
            parallel_path_ms: get("parallel_path_ms")?,
            parallel_cpu_ms: get("parallel_cpu_ms")?,
            only_ref_ns: get("only_ref_ns")?,
            only_write_ns: get("only_write_ns")?,
            only_lines_ns: get("only_lines_ns")?,
            parquet_ns: get("parquet_ns")?,
            parquet_cols_ns: get("parquet_cols_ns")?,
            gzip_ns: get("gzip_ns")?,
            drained_mib: get("drained_mib")?,
            ship_ms: get("ship_ms")?,
            bytes: get("bytes")? as u64,
            maxrss_kib: get("maxrss_kib")? as u64,
            base_rss_kib: get("base_rss_kib")? as u64,
            empty_rotate_ms: get("empty_rotate_ms")?,
        });
      }
    }
    let _ = fs::remove_dir(&out_dir);
    Ok(Results { rows, out_dir })
}

pub fn print(r: &Results) {
    println!("## 3. Drain + format (one window, single thread; median of the timed windows)\n");
    println!(
        "Default (version 2) format; 1 interface; 3/4 TCP, 1/4 UDP, many addresses and ports. Times are the \
         thread's CPU time (so records/s is per core, whatever else runs), except \"drain wall\", which also \
         counts the wait for the RCU grace periods. drain = `FlowTables::rotate()` (generation flip, RCU \
         barriers, then BPF_MAP_LOOKUP_BATCH for the hash table, reading the mmap()ed slots for the slot table) + \
         `FlowTables::release()` after shipping (BPF_MAP_DELETE_BATCH of the keys read, or zeroing the slots \
         read through the mapping; shown apart as \"release\"); \"in kernel\" is the system time of both. records = \
         `enrich::for_each_record` alone; format = the same records streamed into `LineWriter::write` (one \
         buffer of lines, reused across windows as the agent does), minus records; \"format before\" = the same \
         with the writer of commit 3c34e0b (`format::reference`, checked byte-identical to it in every window). \
         \"user part\" = records + format: the agent's own code without the kernel's map operations. \
         \"all cores\": records + format as the agent runs them, the window's ranges formatted on \"threads\" \
         threads (`WindowRecords::write_parallel`, one per core, one per 25,000 records at most), checked \
         byte-identical to the single-thread text, over the last window as many times as there are windows \
         (after the peak RSS is taken): WALL time (the threads' CPU time adds up to more; on a \
         machine whose cores are busy the threads wait for one), and drain (CPU) + that; \"critical path\": \
         the same ranges written one after another, thread CPU of the sort plus the longest range (the wall \
         time on idle cores), and \"CPU, all threads\": the sort plus every range. Peak RSS = \
         `ru_maxrss` of a child process that loads the programs as the agent does and runs these windows; \
         \"drained\" is the part of it that is the window's `Vec` of drained flows (the text is the bytes of \
         section 4); that child holds each pass's whole text. \"agent peak RSS\": a second child that does only \
         what the agent does per window (`Shipper::write_window` to a `file:` output: records on every core, \
         written out 65,536 at a time), and \"agent write\" that call's wall time.\n"
    );
    println!(
        "| flows | family | table | drain | (in kernel) | (release) | drain wall | records | format | format before | drain+format | records/s/core | user part /core | user part before | threads | user part, all cores (wall) | records/s, all cores | drain+format, all cores | critical path | records/s, critical path | CPU, all threads | peak RSS | (drained) | RSS after load | agent peak RSS | agent write |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for x in &r.rows {
        let total = x.rotate_ms + x.enrich_ms + x.format_ms;
        println!(
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} M | {:.2} M | {:.2} M | {} | {:.1} ms | {:.2} M | {:.1} ms | {:.1} ms | {:.2} M | {:.1} ms | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} ms |",
            thousands(x.flows),
            x.family,
            x.table,
            x.rotate_ms,
            x.rotate_sys_ms,
            x.release_ms,
            x.rotate_wall_ms,
            x.enrich_ms,
            x.format_ms,
            x.format_ref_ms,
            total,
            x.flows as f64 / total * 1e3 / 1e6,
            x.flows as f64 / (x.enrich_ms + x.format_ms) * 1e3 / 1e6,
            x.flows as f64 / (x.enrich_ms + x.format_ref_ms) * 1e3 / 1e6,
            x.threads,
            x.parallel_ms,
            x.flows as f64 / x.parallel_ms * 1e3 / 1e6,
            x.rotate_ms + x.parallel_ms,
            x.parallel_path_ms,
            x.flows as f64 / x.parallel_path_ms * 1e3 / 1e6,
            x.parallel_cpu_ms,
            x.maxrss_kib as f64 / 1024.0,
            x.drained_mib,
            x.base_rss_kib as f64 / 1024.0,
            x.agent_maxrss_kib as f64 / 1024.0,
            x.agent_write_ms,
        );
    }
    let mut empty: Vec<f64> = r.rows.iter().map(|x| x.empty_rotate_ms).collect();
    println!(
        "\nA window's fixed cost, `rotate()` of an empty table (flip + RCU barriers, wall): {:.1} ms (median of {}).\n",
        median(&mut empty),
        empty.len()
    );
    println!("### The formatter alone, and the S3 bodies (ns per record)\n");
    println!(
        "Up to 100,000 records of the window built beforehand, then written by: the writer of commit 3c34e0b \
         (`format::reference`), `Format::write` (the compiled plan), `LineWriter` (the plan with the \
         per-interface prefix, what the agent uses); median of 5 passes, thread CPU time; all three checked \
         byte-identical. Parquet and gzip text: the same lines to the S3 object bodies (`ship::parquet`), one \
         pass; \"columns\": the part of the Parquet body that splits the lines into typed columns \
         (`parquet::Columns::from_lines`), the rest is encoding and compressing them: filling the columns \
         straight from the records could save at most that part.\n"
    );
    println!("| flows | family | table | before | Format::write | LineWriter | speed-up | LineWriter records/s | Parquet | (columns) | gzip text |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for x in &r.rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.1} M | {:.0} | {:.0} | {:.0} |",
            thousands(x.flows),
            x.family,
            x.table,
            x.only_ref_ns,
            x.only_write_ns,
            x.only_lines_ns,
            x.only_ref_ns / x.only_lines_ns,
            1e3 / x.only_lines_ns,
            x.parquet_ns,
            x.parquet_cols_ns,
            x.gzip_ns
        );
    }
    println!();
    println!("## 4. Ship to a local file (`Sink::write_batch`, `--output file:`)\n");
    println!(
        "One `write` of the window's formatted records, appended to a new file in {} (ext4 on the VM's disk, into \
         the page cache: the sink does not fsync). CPU time of the call.\n",
        r.out_dir.display()
    );
    println!("| flows | family | bytes | write | records/s | MB/s |");
    println!("|---:|---|---:|---:|---:|---:|");
    for x in &r.rows {
        println!(
            "| {} | {} | {:.1} MB | {:.1} ms | {:.1} M | {:.0} |",
            thousands(x.flows),
            x.family,
            x.bytes as f64 / 1e6,
            x.ship_ms,
            x.flows as f64 / x.ship_ms * 1e3 / 1e6,
            x.bytes as f64 / 1e6 / (x.ship_ms / 1e3)
        );
    }
    println!();
}

// ---- child ----

fn rss_kib(field: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix(field).map(|v| v.trim().trim_end_matches(" kB").trim().to_string())))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A dup of this process's fd of the map called `name`: FlowTables owns the
/// maps, so they are found through /proc/self/fdinfo (map_id) and their ids.
fn own_map_fd(name: &str) -> Result<OwnedFd> {
    for e in fs::read_dir("/proc/self/fdinfo")? {
        let e = e?;
        let Ok(info) = fs::read_to_string(e.path()) else { continue };
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|v| v.trim().parse::<u32>().ok()) else {
            continue;
        };
        let Ok(mi) = aya::maps::MapInfo::from_id(id) else { continue };
        if mi.name_as_str() == Some(name) {
            let fd: i32 = e.file_name().to_string_lossy().parse()?;
            // SAFETY: fd is open in this process; F_DUPFD_CLOEXEC returns a new one we own.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            ensure!(dup >= 0, "dup: {}", std::io::Error::last_os_error());
            // SAFETY: new fd, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(dup) });
        }
    }
    bail!("map {name} not found among this process's fds")
}

/// BPF_MAP_UPDATE_BATCH: inserts `keys[i] -> values[i]`.
fn update_batch(map: &OwnedFd, keys: &[FlowKey], values: &[FlowStats]) -> Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = [0u64; 20]; // union bpf_attr, zero tail
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = keys.len() as u64 | ((map.as_raw_fd() as u64) << 32); // count, map_fd
    // SAFETY: attr describes valid arrays of `count` keys and values.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    ensure!(r == 0, "BPF_MAP_UPDATE_BATCH: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Flow `i` of the benchmark's traffic mix: many hosts and ports, 3/4 TCP.
pub fn flow(i: usize, v6: bool, now_ns: u64) -> (FlowKey, FlowStats) {
    let i32 = i as u32;
    let mut key = FlowKey {
        ifindex: IFINDEX,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 1024 + (i32 % 60_000) as u16,
        dst_port: [443, 80, 53, 5432, 8080, 6379, 22, 9092][i % 8],
        protocol: if i % 4 == 3 { 17 } else { 6 },
        direction: (i % 2) as u8,
        family: if v6 { family::IPV6 } else { family::IPV4 },
        _pad: 0,
    };
    if v6 {
        key.src_addr = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        key.dst_addr = [0x20, 0x01, 0x0d, 0xb8, 0xa, 0xb, 0, 0, 0x12, 0x34, 0, 0, 0, 0, (i % 7) as u8, 1];
    } else {
        key.src_addr[..4].copy_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        key.dst_addr[..4].copy_from_slice(&[172, 16, (i % 7) as u8, 10 + (i % 200) as u8]);
    }
    let packets = 1 + (i as u64 * 7919) % 5_000;
    // First packets spread over a 60 s window in ticks of the programs'
    // coarse clock (4 ms here): ~67 flows share a timestamp at 1M flows.
    let tick = (i as u64 * 7919) % 15_000;
    let first_seen_ns = now_ns.saturating_sub(60_000_000_000) + tick * 4_000_000;
    let stats = FlowStats {
        packets,
        bytes: packets * (52 + (i as u64 % 1400)),
        first_seen_ns,
        last_seen_ns: (first_seen_ns + (i as u64 % 97) * 100_000_000).min(now_ns),
        tcp_flags: if key.protocol == 6 { TcpFlagsSeen::of_packet(0x1b) } else { TcpFlagsSeen::NONE },
        _pad: 0,
    };
    (key, stats)
}

/// CLOCK_MONOTONIC, the programs' clock (the boot clock before it; the two
/// differ only by time spent suspended).
fn kernel_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn fill(map: &OwnedFd, n: usize, v6: bool) -> Result<()> {
    let now = kernel_now_ns();
    let mut keys = Vec::with_capacity(FILL_CHUNK);
    let mut values = Vec::with_capacity(FILL_CHUNK);
    let mut i = 0;
    while i < n {
        keys.clear();
        values.clear();
        for j in i..(i + FILL_CHUNK).min(n) {
            let (k, v) = flow(j, v6, now);
            keys.push(k);
            values.push(v);
        }
        update_batch(map, &keys, &values)?;
        i += keys.len();
    }
    Ok(())
}

/// BPF_MAP_UPDATE_BATCH on an array: `values[i]` at index `keys[i]`.
fn update_slots(map: &OwnedFd, keys: &[u32], values: &[FlowSlot]) -> Result<()> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = [0u64; 20];
    attr[2] = keys.as_ptr() as u64;
    attr[3] = values.as_ptr() as u64;
    attr[4] = keys.len() as u64 | ((map.as_raw_fd() as u64) << 32);
    // SAFETY: attr describes valid arrays of `count` keys and values.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    ensure!(r == 0, "BPF_MAP_UPDATE_BATCH (slots): {}", std::io::Error::last_os_error());
    Ok(())
}

/// Fills a slot table of `capacity` slots as the programs would: each flow
/// in its home slot or the next free one. `used`: one bit per slot.
fn fill_slots(map: &OwnedFd, capacity: u32, n: usize, v6: bool) -> Result<()> {
    let now = kernel_now_ns();
    let mask = capacity - 1;
    let mut used = vec![0u64; capacity as usize / 64 + 1];
    let mut keys = Vec::with_capacity(FILL_CHUNK);
    let mut values = Vec::with_capacity(FILL_CHUNK);
    let mut i = 0;
    while i < n {
        keys.clear();
        values.clear();
        for j in i..(i + FILL_CHUNK).min(n) {
            let (k, v) = flow(j, v6, now);
            let mut slot = FlowSlot::of_key(&k);
            let mut at = slot.home(mask);
            let mut probes = 0;
            while used[at as usize / 64] & (1 << (at % 64)) != 0 {
                at = (at + 1) & mask;
                probes += 1;
                ensure!(probes < flowlog_common::SLOT_PROBES, "flow {j}: no slot within the probe bound");
            }
            used[at as usize / 64] |= 1 << (at % 64);
            slot.flags = FlowSlot::flag_bits(&v.tcp_flags);
            slot.packets = v.packets;
            slot.bytes = v.bytes;
            // Seconds into a 60 s window, as the programs count them.
            slot.first_sec = ((v.first_seen_ns - now.saturating_sub(60_000_000_000)) / 1_000_000_000) as u16;
            slot.last_sec = slot.first_sec + ((v.last_seen_ns - v.first_seen_ns) / 1_000_000_000) as u16;
            keys.push(at);
            values.push(slot);
        }
        update_slots(map, &keys, &values)?;
        i += keys.len();
    }
    Ok(())
}

/// CPU time this process spent in the kernel, ms.
fn sys_cpu_ms() -> f64 {
    // SAFETY: getrusage with a valid out pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_stime.tv_sec as f64 * 1e3 + ru.ru_stime.tv_usec as f64 / 1e3
}

/// Runs `f`; returns its result, the thread's CPU ms and the wall ms. CPU
/// time is what "per core" means, and unlike wall time it does not grow
/// while other work on the machine holds the CPU.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, f64, f64)> {
    let (c0, t0) = (thread_cpu_ns(), Instant::now());
    let v = f()?;
    Ok((v, (thread_cpu_ns() - c0) as f64 / 1e6, t0.elapsed().as_secs_f64() * 1e3))
}

/// Of text given in parts: the same for the same bytes, however split.
fn digest(parts: &[&[u8]]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        h.write(p);
    }
    h.write_usize(parts.iter().map(|p| p.len()).sum());
    h.finish()
}

/// Records + format as agent::ship does it: the window's ranges formatted
/// on every core, one `ship::Part` each (buffers reused across passes as
/// across the agent's windows), joined in order; then the same ranges one
/// after another on this thread, each one's CPU time whatever else runs on
/// the machine. `passes` times over the last window, after the peak RSS is
/// taken (the single-thread text and the ranges' texts together are more
/// than the agent holds). The threads, and medians of the wall ms, the sort
/// plus the longest range (thread CPU ms: the wall time on idle cores), and
/// the sort plus all ranges.
fn all_cores(host: &HostMeta, interfaces: &[InterfaceMeta], drained: &Drained, format: &Format, want: u64, passes: usize) -> Result<(usize, f64, f64, f64)> {
    let (mut wall, mut path, mut cpu) = (vec![], vec![], vec![]);
    let (mut threads, mut texts) = (1, Vec::<Vec<u8>>::new());
    for _ in 0..passes {
        let (parts, _, ms) = timed(|| {
            let records = enrich::WindowRecords::new(host, interfaces, drained, None);
            threads = records.threads();
            let mut parts: Vec<Part> = (0..threads).map(|_| Part::new(format, true, false, texts.pop().unwrap_or_default())).collect();
            records.write_parallel(&mut parts, |p, r| p.push(r));
            Ok(parts)
        })?;
        wall.push(ms);
        ensure!(digest(&parts.iter().map(|p| p.output().0).collect::<Vec<_>>()) == want, "the window formatted on {threads} threads differs from the single-thread text");
        texts = parts.into_iter().map(Part::into_text).collect();
        let (records, sort, _) = timed(|| Ok(enrich::WindowRecords::new(host, interfaces, drained, None)))?;
        let mut ranges = vec![];
        for (range, text) in records.ranges(threads).into_iter().zip(&mut texts) {
            let mut part = Part::new(format, true, false, std::mem::take(text));
            let ((), ms, _) = timed(|| {
                records.write(range, |r| part.push(r));
                Ok(())
            })?;
            ranges.push(ms);
            *text = part.into_text();
        }
        ensure!(digest(&texts.iter().map(Vec::as_slice).collect::<Vec<_>>()) == want, "the ranges written one by one differ from the single-thread text");
        path.push(sort + ranges.iter().copied().fold(0.0, f64::max));
        cpu.push(sort + ranges.iter().sum::<f64>());
    }
    Ok((threads, median(&mut wall), median(&mut path), median(&mut cpu)))
}

/// Records formatted without building them in the same pass: up to
/// 100,000 records of the window, built once, then written by the reference
/// writer, `Format::write` and `LineWriter` (median of 5 passes each), and
/// their lines to a Parquet file and to gzip text once. ns per record, in
/// that order.
fn formatter_only(host: &HostMeta, interfaces: &[InterfaceMeta], drained: &Drained, format: &Format) -> Result<[f64; 6]> {
    const SAMPLE: usize = 100_000;
    let mut sample: Vec<FlowRecord> = Vec::with_capacity(SAMPLE);
    enrich::for_each_record(host, interfaces, drained, None, |r| {
        if sample.len() < SAMPLE {
            sample.push(r.clone())
        }
    });
    let per = |ms: f64| ms * 1e6 / sample.len() as f64;
    let mut out = Vec::with_capacity(sample.len() * 160);
    let mut pass = |write: &mut dyn FnMut(&FlowRecord, &mut Vec<u8>)| -> Result<(f64, Vec<u8>)> {
        let mut t = vec![];
        for _ in 0..5 {
            out.clear();
            let ((), cpu, _) = timed(|| {
                for r in &sample {
                    write(r, &mut out);
                    out.push(b'\n');
                }
                Ok(())
            })?;
            t.push(cpu);
        }
        Ok((per(median(&mut t)), out.clone()))
    };
    let (reference, want) = pass(&mut |r, o| reference::write(format, r, o))?;
    let (write, got) = pass(&mut |r, o| format.write(r, o))?;
    ensure!(got == want, "Format::write differs from the reference writer");
    let mut lines = LineWriter::new(format);
    let (streamed, got) = pass(&mut |r, o| lines.write(r, o))?;
    ensure!(got == want, "LineWriter differs from the reference writer");
    let text = std::str::from_utf8(&want)?;
    let lines: Vec<&str> = text.lines().collect();
    let header = format.header();
    let (cols, cols_ms, _) = timed(|| parquet::Columns::from_lines(&header, &lines))?;
    let (body, encode_ms, _) = timed(|| cols.write(false))?;
    ensure!(body.starts_with(b"PAR1"), "not a Parquet file");
    ensure!(body == parquet::parquet_file(&header, &lines)?, "the Parquet body in two steps differs");
    let (_, gzip_ms, _) = timed(|| parquet::gzip_text(&header, &lines))?;
    Ok([reference, write, streamed, per(cols_ms + encode_ms), per(gzip_ms), per(cols_ms)])
}

/// `__drain-child <flows> <v4|v6> <windows> <out dir>`
/// The agent's own per-window path, alone in its process: drain, then
/// `Shipper::write_window` (records on every core, written to a `file:`
/// output a piece at a time), then release. Its peak RSS is the agent's.
fn child_agent(n: usize, v6: bool, windows: usize, out_dir: &str, kind: TableKind) -> Result<()> {
    let mut w = Windows::load(n, kind)?;
    let (host, interfaces) = bench_interfaces();
    let format = Format::default();
    let path = Path::new(out_dir).join(format!("agent-{}.log", std::process::id()));
    let cfg = ShipConfig { outputs: vec![format!("file:{}", path.display()).parse().map_err(|e| anyhow!("{e}"))?], ..ShipConfig::default() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut shipper = rt.block_on(Shipper::start(&cfg))?;
    w.tables.rotate()?;
    let mut write = vec![];
    for _ in 0..windows {
        w.fill(n, v6)?;
        let drained = w.tables.rotate()?;
        let t0 = Instant::now();
        let records = enrich::WindowRecords::new(&host, &interfaces, &drained, None);
        let (results, counts) = shipper.write_window(&format, &records);
        write.push(t0.elapsed().as_secs_f64() * 1e3);
        ensure!(results.iter().all(|(_, ok)| *ok) && counts.total() == n, "{results:?}, {} records", counts.total());
        // Gone before the release, as in the agent (`Agent::ship`).
        drop(records);
        w.tables.release(&drained)?;
        w.tables.recycle(drained);
        // Counted a buffer at a time: reading the file whole would add its
        // size to the peak this child measures.
        let lines = count_lines(&path)?;
        ensure!(lines == n, "the file holds {lines} lines, the window {n} flows");
        // Emptied for the next window (the output appends: O_APPEND).
        fs::OpenOptions::new().write(true).open(&path)?.set_len(0)?;
    }
    // SAFETY: getrusage with a valid out pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    rt.block_on(shipper.shutdown());
    let _ = fs::remove_file(&path);
    println!("RESULT maxrss_kib={} write_ms={:.3}", ru.ru_maxrss, median(&mut write));
    Ok(())
}

fn count_lines(path: &Path) -> Result<usize> {
    use std::io::Read;
    let (mut f, mut buf, mut n) = (fs::File::open(path)?, vec![0u8; 1 << 16], 0);
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(n),
            k => n += buf[..k].iter().filter(|&&b| b == b'\n').count(),
        }
    }
}

/// The agent's programs and maps for windows of `n` flows, filled from
/// userspace one window at a time.
struct Windows {
    _capture: Capture,
    tables: FlowTables,
    kind: TableKind,
    /// Both generations' flow maps, and the one the next window fills.
    maps: [OwnedFd; 2],
    current: usize,
    capacity: u32,
}

impl Windows {
    fn load(n: usize, kind: TableKind) -> Result<Windows> {
        let max_flows = (n.next_power_of_two() as u32).max(65_536);
        let (_capture, tables) = Capture::loader(max_flows).table(kind).load()?;
        let maps = match kind {
            TableKind::Hash => [own_map_fd(maps::FLOWS_0)?, own_map_fd(maps::FLOWS_1)?],
            TableKind::Slots => [own_map_fd(maps::SLOTS_0)?, own_map_fd(maps::SLOTS_1)?],
        };
        let capacity = tables.slot_capacity().unwrap_or(0);
        // Generation 0 is current after loading; each rotate() flips it.
        Ok(Windows { _capture, tables, kind, maps, current: 1, capacity })
    }

    /// Fills the generation the next `rotate()` reads (call `rotate()` once
    /// after loading, so that it is generation 1).
    fn fill(&mut self, n: usize, v6: bool) -> Result<()> {
        match self.kind {
            TableKind::Hash => fill(&self.maps[self.current], n, v6)?,
            TableKind::Slots => fill_slots(&self.maps[self.current], self.capacity, n, v6)?,
        }
        self.current = 1 - self.current;
        Ok(())
    }
}

/// The one interface every bench window's flows are on.
fn bench_interfaces() -> (HostMeta, [InterfaceMeta; 1]) {
    let host = HostMeta::new("123456789012");
    let interfaces = [InterfaceMeta {
        ifindex: IFINDEX,
        name: "eth0".into(),
        interface_id: links::derived_interface_id("bench-machine", "eth0").into(),
        meta: None,
        tags: None,
        ecs: None,
    }];
    (host, interfaces)
}

pub fn child(args: &[String]) -> Result<()> {
    let [n, fam, windows, out_dir, table, mode @ ..] = args else { bail!("usage: {CHILD_ARG} FLOWS v4|v6 WINDOWS OUT_DIR hash|slots [agent]") };
    let n: usize = n.parse()?;
    let windows: usize = windows.parse()?;
    let v6 = fam == "v6";
    let kind = if table == "slots" { TableKind::Slots } else { TableKind::Hash };
    match mode {
        [] => {}
        [m] if m == "agent" => return child_agent(n, v6, windows, out_dir, kind),
        _ => bail!("unknown drain child mode {mode:?}"),
    }
    let mut w = Windows::load(n, kind)?;
    let (host, interfaces) = bench_interfaces();
    let format = Format::default();
    let path = Path::new(out_dir).join(format!("flows-{}.log", std::process::id()));
    let base_rss = rss_kib("VmRSS:");

    let ((), _, empty_rotate) = timed(|| w.tables.rotate().map(drop))?;

    let (mut rot, mut rot_wall, mut rot_sys, mut enr, mut fmt, mut shp) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut fmt_ref = vec![];
    let mut last: Option<Drained> = None;
    let mut bytes = 0;
    let mut rel = vec![];
    let mut batch = Vec::new();
    let mut single = 0;
    for _ in 0..windows {
        // The last window's flows are kept for the formatter-only pass; the
        // one before goes back to the tables, as the agent does.
        if let Some(d) = last.take() {
            w.tables.recycle(d);
        }
        w.fill(n, v6)?;

        let sys0 = sys_cpu_ms();
        let (drained, cpu, wall) = timed(|| w.tables.rotate())?;
        rot.push(cpu);
        rot_wall.push(wall);
        rot_sys.push(sys_cpu_ms() - sys0);
        ensure!(drained.flows.len() == n, "drained {} flows, filled {n}", drained.flows.len());

        // Records alone (what formatting leaves aside).
        let (count, cpu, _) = timed(|| {
            let mut count = 0usize;
            enrich::for_each_record(&host, &interfaces, &drained, None, |r| count += std::hint::black_box(r).packets.is_some() as usize);
            Ok(count)
        })?;
        ensure!(count == n, "built {count} records from {n} flows");
        enr.push(cpu);

        // The writer of commit 3c34e0b, into the same buffer, for the
        // before/after comparison in one run.
        batch.clear();
        let ((), cpu, _) = timed(|| {
            enrich::for_each_record(&host, &interfaces, &drained, None, |r| {
                reference::write(&format, r, &mut batch);
                batch.push(b'\n');
            });
            Ok(())
        })?;
        fmt_ref.push(cpu - enr.last().unwrap());
        // A second buffer of this size would add to the peak RSS measured.
        let want = (batch.len(), digest(&[&batch]));

        // As agent::ship does it (ship::WindowWriter): records streamed
        // into the formatter's LineWriter, one buffer of lines.
        // The buffer is reused across windows as WindowWriter reuses it.
        batch.clear();
        let ((), cpu, _) = timed(|| {
            let mut lines = LineWriter::new(&format);
            enrich::for_each_record(&host, &interfaces, &drained, None, |r| {
                lines.write(r, &mut batch);
                batch.push(b'\n');
            });
            Ok(())
        })?;
        fmt.push(cpu - enr.last().unwrap());
        bytes = batch.len();
        ensure!(batch.iter().filter(|&&b| b == b'\n').count() == n, "formatted lines != {n}");
        ensure!((batch.len(), digest(&[&batch])) == want, "the writer's output differs from the reference writer's");
        single = digest(&[&batch]);

        let mut sink = FileOutput { path: path.clone(), mode: None }.open()?;
        let ((), cpu, _) = timed(|| sink.write_batch(&[&batch]))?;
        shp.push(cpu);
        drop(sink);
        fs::remove_file(&path)?;

        // The window leaves the kernel only once shipped: part of the drain.
        let sys0 = sys_cpu_ms();
        let ((), cpu, wall) = timed(|| w.tables.release(&drained))?;
        rel.push(cpu);
        let (last_cpu, last_wall, last_sys) = (rot.last_mut().unwrap(), rot_wall.last_mut().unwrap(), rot_sys.last_mut().unwrap());
        *last_cpu += cpu;
        *last_wall += wall;
        *last_sys += sys_cpu_ms() - sys0;
        last = Some(drained);
    }
    let drained = last.expect("at least one window");
    let drained_mib = (drained.flows.len() * std::mem::size_of_val(&drained.flows[0])) as f64 / (1 << 20) as f64;
    // Peak RSS of the windows as the agent runs them, before the
    // formatter-only measurements below allocate their sample.
    // SAFETY: getrusage with a valid out pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    drop(batch);
    let (threads, par, par_path, par_cpu) = all_cores(&host, &interfaces, &drained, &format, single, windows)?;
    let only = formatter_only(&host, &interfaces, &drained, &format)?;
    println!(
        "RESULT release_ms={:.3} rotate_ms={:.3} rotate_wall_ms={:.3} rotate_sys_ms={:.3} enrich_ms={:.3} format_ms={:.3} format_ref_ms={:.3} parallel_ms={:.3} parallel_path_ms={:.3} parallel_cpu_ms={:.3} threads={threads} ship_ms={:.3} bytes={bytes} maxrss_kib={} base_rss_kib={base_rss} empty_rotate_ms={empty_rotate:.3} only_ref_ns={:.2} only_write_ns={:.2} only_lines_ns={:.2} parquet_ns={:.2} gzip_ns={:.2} parquet_cols_ns={:.2} drained_mib={drained_mib:.1}",
        median(&mut rel),
        median(&mut rot),
        median(&mut rot_wall),
        median(&mut rot_sys),
        median(&mut enr),
        median(&mut fmt),
        median(&mut fmt_ref),
        par,
        par_path,
        par_cpu,
        median(&mut shp),
        ru.ru_maxrss,
        only[0],
        only[1],
        only[2],
        only[3],
        only[4],
        only[5],
    );
    Ok(())
}
