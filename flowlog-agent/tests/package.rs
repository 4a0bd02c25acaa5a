//! The artefacts of `cargo xtask package` in target/packages/: the release
//! binary (glibc floor 2.28, runs), the .deb installed on this machine with
//! dpkg and removed again, the .rpm's files, scripts and dependencies.
//!
//! Skipped when target/packages/ has not been built, unless
//! FLOWLOG_REQUIRE_PACKAGES=1 (then a missing package is a failure). The
//! rpm test needs Debian's `rpm` package (rpm -qp, rpm2archive); the
//! dpkg test needs root and a machine without another flowlog-agent
//! package installed.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

const GLIBC_FLOOR: (u32, u32) = (2, 28);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn packages() -> PathBuf {
    root().join("target/packages")
}

/// The one file in target/packages ending in `ext`, if built.
fn artefact(ext: &str) -> Option<PathBuf> {
    let found: Vec<PathBuf> = fs::read_dir(packages())
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(ext)))
        .collect();
    assert!(found.len() <= 1, "several {ext} in target/packages: {found:?}");
    let got = found.into_iter().next();
    if got.is_none() {
        assert!(std::env::var("FLOWLOG_REQUIRE_PACKAGES").as_deref() != Ok("1"), "no {ext} in target/packages: run `cargo xtask package`");
        eprintln!("no {ext} in target/packages (run `cargo xtask package`): skipped");
    }
    got
}

fn out(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The `GLIBC_x.y` versions the binary's dynamic symbols need (readelf).
fn glibc_versions(bin: &Path) -> BTreeSet<(u32, u32)> {
    let text = out(Command::new("readelf").arg("--version-info").arg("--wide").arg(bin));
    let mut v = BTreeSet::new();
    for word in text.split_whitespace() {
        let Some(rest) = word.strip_prefix("GLIBC_") else { continue };
        let mut parts = rest.split('.').map(|p| p.parse::<u32>());
        if let (Some(Ok(a)), Some(Ok(b))) = (parts.next(), parts.next()) {
            v.insert((a, b));
        }
    }
    assert!(!v.is_empty(), "no GLIBC_ versions in {}:\n{text}", bin.display());
    v
}

fn check_runs_anywhere(bin: &Path) {
    let v = glibc_versions(bin);
    let max = *v.iter().max().unwrap();
    assert!(max <= GLIBC_FLOOR, "{} needs GLIBC_{}.{} (> {}.{}): {v:?}", bin.display(), max.0, max.1, GLIBC_FLOOR.0, GLIBC_FLOOR.1);
    // Dynamically linked against libc only (plus the loader and libgcc_s).
    let dynamic = out(Command::new("readelf").arg("-d").arg("--wide").arg(bin));
    for l in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
        let lib = l.split('[').nth(1).and_then(|r| r.split(']').next()).unwrap();
        assert!(
            ["libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libgcc_s.so.1", "ld-linux-x86-64.so.2"].contains(&lib),
            "{} needs {lib}",
            bin.display()
        );
    }
    let version = out(Command::new(bin).arg("--version"));
    assert!(version.starts_with("flowlog-agent "), "{version}");
    let check = out(Command::new(bin).arg("check-config").arg("--config").arg(root().join("flowlog.example.toml")).env_clear());
    assert!(check.contains("pin-dir = \"/sys/fs/bpf/flowlog\"\n"), "{check}");
}

/// The release binary of the packages needs glibc 2.28 at most, and runs.
#[test]
fn release_binary_needs_glibc_2_28_at_most() {
    let bin = packages().join("flowlog-agent");
    if !bin.is_file() {
        assert!(std::env::var("FLOWLOG_REQUIRE_PACKAGES").as_deref() != Ok("1"), "no target/packages/flowlog-agent: run `cargo xtask package`");
        eprintln!("no target/packages/flowlog-agent (run `cargo xtask package`): skipped");
        return;
    }
    check_runs_anywhere(&bin);
}

/// The unit the packages install: deploy/systemd's with the packaged path.
fn packaged_unit() -> String {
    let unit = read("deploy/systemd/flowlog.service").replace("/usr/local/bin/flowlog-agent", "/usr/bin/flowlog-agent");
    format!("# Installed by the flowlog-agent package (from deploy/systemd/flowlog.service).\n{unit}")
}

/// Purges the package on drop (also when an assertion failed).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "flowlog-agent"]).output();
    }
}

fn dpkg_status() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "flowlog-agent"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn deb_installs_checks_its_config_and_purges() {
    let Some(deb) = artefact(".deb") else { return };
    // What the package says and holds, without installing it.
    let info = out(Command::new("dpkg-deb").arg("--field").arg(&deb));
    for want in ["Package: flowlog-agent", "Architecture: amd64", "Depends: libc6 (>= 2.28)", "Section: net"] {
        assert!(info.lines().any(|l| l == want), "{want} not in\n{info}");
    }
    let listing = out(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for f in [
        "./usr/bin/flowlog-agent",
        "./lib/systemd/system/flowlog.service",
        "./etc/flowlog/flowlog.toml",
        "./usr/share/doc/flowlog-agent/iam/s3.json",
        "./usr/share/man/man1/flowlog-agent.1.gz",
        "./usr/share/man/man1/flowlog-agent-compare.1.gz",
        "./usr/share/bash-completion/completions/flowlog-agent",
        "./usr/share/zsh/vendor-completions/_flowlog-agent",
        "./usr/share/fish/vendor_completions.d/flowlog-agent.fish",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(f)), "{f} not in the deb:\n{listing}");
    }
    let ctrl = std::env::temp_dir().join(format!("flowlog-deb-control-{}", std::process::id()));
    let _ = fs::remove_dir_all(&ctrl);
    out(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(&ctrl));
    assert_eq!(fs::read_to_string(ctrl.join("conffiles")).unwrap().trim(), "/etc/flowlog/flowlog.toml");
    for s in ["postinst", "prerm", "postrm"] {
        assert_eq!(fs::read_to_string(ctrl.join(s)).unwrap(), read(&format!("deploy/packaging/{s}")), "{s}");
    }
    let _ = fs::remove_dir_all(&ctrl);

    if !flowlog_testkit::require_root() {
        return;
    }
    if dpkg_status().contains("installed") {
        panic!("a flowlog-agent package is installed on this machine already: not touching it");
    }
    let _guard = Installed;
    out(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(dpkg_status().contains("install ok installed"), "{}", dpkg_status());

    // The installed files.
    let bin = Path::new("/usr/bin/flowlog-agent");
    assert_eq!(fs::metadata(bin).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(fs::read(bin).unwrap(), fs::read(packages().join("flowlog-agent")).unwrap(), "the deb holds the tested binary");
    check_runs_anywhere(bin);
    assert_eq!(fs::read_to_string("/lib/systemd/system/flowlog.service").unwrap(), packaged_unit());
    assert_eq!(fs::read_to_string("/etc/flowlog/flowlog.toml").unwrap(), read("flowlog.example.toml"));
    for d in ["/var/lib/flowlog", "/var/log/flowlog"] {
        let m = fs::metadata(d).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert!(m.is_dir() && m.permissions().mode() & 0o777 == 0o700, "{d}: {:o}", m.permissions().mode());
    }
    // The installed agent accepts the installed config (and the unit's
    // command line with it); the unit is valid for systemd.
    let check = out(Command::new("/usr/bin/flowlog-agent").args(["check-config", "--config", "/etc/flowlog/flowlog.toml"]).env_clear());
    assert!(check.contains("spool-dir = \"/var/lib/flowlog/spool\"\n"), "{check}");
    let check = out(Command::new("/usr/bin/flowlog-agent")
        .args(["check-config", "--config", "/etc/flowlog/flowlog.toml", "--on-exit", "keep"])
        .env_clear()
        .env("STATE_DIRECTORY", "/var/lib/flowlog"));
    assert!(check.contains("spool-dir = \"/var/lib/flowlog/spool\"\n") && check.contains("on-exit = \"keep\"\n"), "{check}");
    if Command::new("systemd-analyze").arg("--version").output().is_ok() {
        let o = Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/flowlog.service"]).output().unwrap();
        assert!(o.status.success() && o.stderr.is_empty(), "systemd-analyze verify: {}", String::from_utf8_lossy(&o.stderr));
    }
    // man finds and renders the installed page; the installed completions
    // are the binary's own.
    let page = out(Command::new("man").args(["-w", "flowlog-agent"]));
    assert_eq!(page.trim(), "/usr/share/man/man1/flowlog-agent.1.gz");
    let text = out(Command::new("man").arg("flowlog-agent").env("LC_ALL", "C").env("MANWIDTH", "100").env("PAGER", "cat"));
    assert!(text.contains("--exclude-cidr") && text.contains("FLOWLOG_NO_PIN"), "{text}");
    assert_eq!(
        fs::read_to_string("/usr/share/bash-completion/completions/flowlog-agent").unwrap(),
        out(Command::new("/usr/bin/flowlog-agent").args(["completions", "bash"]))
    );
    let files = out(Command::new("dpkg").args(["-L", "flowlog-agent"]));
    assert!(files.lines().any(|l| l == "/usr/bin/flowlog-agent"), "{files}");

    // Remove: the binary and unit go, the config and the spool stay.
    out(Command::new("dpkg").args(["-r", "flowlog-agent"]));
    assert!(!bin.exists() && !Path::new("/lib/systemd/system/flowlog.service").exists());
    assert!(Path::new("/etc/flowlog/flowlog.toml").exists() && Path::new("/var/lib/flowlog").is_dir());
    // Purge: everything.
    out(Command::new("dpkg").args(["--purge", "flowlog-agent"]));
    for p in ["/etc/flowlog/flowlog.toml", "/var/lib/flowlog", "/var/log/flowlog"] {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    assert!(dpkg_status().is_empty() || dpkg_status().contains("not-installed"), "{}", dpkg_status());
}

#[test]
fn rpm_holds_the_same_files_and_scripts() {
    let Some(rpm) = artefact(".rpm") else { return };
    if Command::new("rpm").arg("--version").output().is_err() {
        assert!(std::env::var("FLOWLOG_REQUIRE_PACKAGES").as_deref() != Ok("1"), "rpm not installed (apt-get install rpm)");
        eprintln!("rpm not installed: skipped");
        return;
    }
    let q = |args: &[&str]| out(Command::new("rpm").args(["-qp", "--nosignature"]).args(args).arg(&rpm));
    let files: BTreeSet<String> = q(&["-l"]).lines().map(String::from).collect();
    for f in [
        "/usr/bin/flowlog-agent",
        "/usr/lib/systemd/system/flowlog.service",
        "/etc/flowlog/flowlog.toml",
        "/usr/share/doc/flowlog-agent/flowlog.example.toml",
        "/usr/share/doc/flowlog-agent/iam/s3.json",
        "/usr/share/man/man1/flowlog-agent.1.gz",
        "/usr/share/man/man1/flowlog-agent-compare.1.gz",
        "/usr/share/bash-completion/completions/flowlog-agent",
        "/usr/share/zsh/site-functions/_flowlog-agent",
        "/usr/share/fish/vendor_completions.d/flowlog-agent.fish",
    ] {
        assert!(files.contains(f), "{f} not in the rpm: {files:?}");
    }
    assert_eq!(q(&["--configfiles"]).trim(), "/etc/flowlog/flowlog.toml");
    let info = q(&["--queryformat", "%{NAME} %{ARCH} %{LICENSE}\\n"]);
    assert_eq!(info.trim(), "flowlog-agent x86_64 Apache-2.0");
    let requires = q(&["--requires"]);
    assert!(requires.lines().any(|l| l.trim() == "glibc >= 2.28"), "{requires}");
    // Modes and the noreplace flag of the config.
    let dump = q(&["--dump"]);
    let mode = |f: &str| dump.lines().find(|l| l.starts_with(&format!("{f} "))).and_then(|l| l.split_whitespace().nth(4)).map(String::from);
    assert_eq!(mode("/usr/bin/flowlog-agent").as_deref(), Some("0100755"), "{dump}");
    assert_eq!(mode("/etc/flowlog/flowlog.toml").as_deref(), Some("0100644"), "{dump}");
    let flags = q(&["--queryformat", "[%{FILENAMES} %{FILEFLAGS:fflags}\\n]"]);
    assert!(flags.lines().any(|l| l.starts_with("/etc/flowlog/flowlog.toml ") && l.contains('c') && l.contains('n')), "config noreplace: {flags}");
    // The scripts are the deb's (they take rpm's $1 as well).
    let scripts = q(&["--scripts"]);
    for (what, file) in [("postinstall", "postinst"), ("preuninstall", "prerm"), ("postuninstall", "postrm")] {
        let body = read(&format!("deploy/packaging/{file}"));
        let first = body.lines().nth(1).unwrap();
        assert!(scripts.contains(&format!("{what} scriptlet")) && scripts.contains(first), "{what}: {scripts}");
    }
    // The files themselves: the tested binary, the packaged unit, the example.
    let dir = std::env::temp_dir().join(format!("flowlog-rpm-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        // rpm2archive (in Debian's rpm package; cpio may be missing).
        .arg(format!("rpm2archive - < {} | tar xz", flowlog_testkit::shell_quote(&rpm)))
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "rpm2archive | tar");
    assert_eq!(fs::read(dir.join("usr/bin/flowlog-agent")).unwrap(), fs::read(packages().join("flowlog-agent")).unwrap());
    assert_eq!(fs::read_to_string(dir.join("usr/lib/systemd/system/flowlog.service")).unwrap(), packaged_unit());
    assert_eq!(fs::read_to_string(dir.join("etc/flowlog/flowlog.toml")).unwrap(), read("flowlog.example.toml"));
    let _ = fs::remove_dir_all(&dir);
}
