//! The systemd unit as the tests read it (no systemd runs here): its keys,
//! the system calls its SystemCallFilter groups stand for
//! (`systemd-analyze syscall-filter`), and what an strace of the agent shows
//! it called, to hold the two against each other.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

/// `section → key → values` (a key may repeat; systemd joins or resets).
pub type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

pub fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("unit file: not key=value: {line}"));
        unit.entry(section.clone()).or_default().entry(k.trim().to_string()).or_default().push(v.trim().to_string());
    }
    unit
}

/// `arg` as one word of a unit's command line (ExecStart=): double-quoted,
/// `\\` and `"` escaped, `%` (specifiers) doubled. Checkouts live
/// anywhere, paths with spaces included.
pub fn quote(arg: &str) -> String {
    format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%"))
}

/// The syscalls `systemd-analyze` puts in a filter's groups, recursively.
pub fn expand_syscall_filter(items: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = items.iter().cloned().collect();
    let mut seen = BTreeSet::new();
    while let Some(item) = todo.pop() {
        if !item.starts_with('@') {
            out.insert(item);
            continue;
        }
        if !seen.insert(item.clone()) {
            continue;
        }
        let o = Command::new("systemd-analyze").args(["syscall-filter", "--no-pager", &item]).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && !text.trim().is_empty(), "systemd-analyze syscall-filter {item}");
        for l in text.lines().skip(1).map(str::trim) {
            if !l.is_empty() && !l.starts_with('#') {
                todo.push(l.to_string());
            }
        }
    }
    out
}

/// What an `strace -f` output shows a program called.
#[derive(Debug, Default)]
pub struct Calls {
    /// Whether the trace has the program's successful execve (always true
    /// without `exe`).
    pub started: bool,
    /// System call names.
    pub used: BTreeSet<String>,
    /// First arguments of `socket` (`AF_INET`, ...).
    pub families: BTreeSet<String>,
    /// Lines of mmap/mprotect with PROT_WRITE and PROT_EXEC together.
    pub write_exec: Vec<String>,
}

impl Calls {
    /// The calls in `trace`; with `exe`, only those after its successful
    /// execve (what ran before it, e.g. setpriv, is left out; threads of the
    /// program are new pids, all after its execve).
    pub fn from_strace(trace: &str, exe: Option<&str>) -> Calls {
        let mut c = Calls { started: exe.is_none(), ..Calls::default() };
        let execve = exe.map(|e| format!("execve(\"{e}\""));
        for l in trace.lines() {
            let Some((_pid, call)) = l.split_once(char::is_whitespace) else { continue };
            let call = call.trim_start();
            if let Some(execve) = &execve {
                if call.starts_with(execve.as_str()) && call.ends_with("= 0") {
                    c.started = true;
                    continue;
                }
            }
            if !c.started {
                continue;
            }
            let Some((name, args)) = call.split_once('(') else { continue };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                continue;
            }
            c.used.insert(name.to_string());
            if name == "socket" {
                c.families.insert(args.split(',').next().unwrap().to_string());
            }
            if (name == "mmap" || name == "mprotect") && args.contains("PROT_WRITE") && args.contains("PROT_EXEC") {
                c.write_exec.push(l.to_string());
            }
        }
        c
    }

    /// The unit's SystemCallFilter and RestrictAddressFamilies (of
    /// `service`, the `[Service]` section) allow every call and socket
    /// family seen.
    pub fn assert_allowed_by(&self, service: &BTreeMap<String, Vec<String>>) {
        let words = |k: &str| -> BTreeSet<String> { service.get(k).into_iter().flatten().flat_map(|v| v.split_whitespace()).map(String::from).collect() };
        let allowed = expand_syscall_filter(&words("SystemCallFilter"));
        let denied: Vec<&String> = self.used.difference(&allowed).collect();
        assert!(denied.is_empty(), "the unit's SystemCallFilter denies {denied:?}");
        let families = words("RestrictAddressFamilies");
        let denied: Vec<&String> = self.families.difference(&families).collect();
        assert!(denied.is_empty(), "the unit's RestrictAddressFamilies denies {denied:?}");
    }
}
