//! The artefacts of `cargo xtask package` in target/packages/, for each
//! architecture of the release (x86_64 and aarch64): the release binary
//! (its ELF machine, glibc floor 2.28, runs: natively, or through
//! qemu-user for the other architecture), the .deb (its architecture and
//! files; the one of this machine's architecture installed with dpkg and
//! removed again), the .rpm's architecture, files, scripts and
//! dependencies. Both architectures' packages hold the same files.
//!
//! Skipped when target/packages/ has not been built, unless
//! FLOWLOG_REQUIRE_PACKAGES=1 (then a missing package is a failure). The
//! rpm test needs Debian's `rpm` package (rpm -qp, rpm2archive); the
//! dpkg test needs root and a machine without another flowlog-agent
//! package installed; the other architecture's binary runs when
//! qemu-user-static and that architecture's libc (libc6-arm64-cross) are
//! installed.

use std::{
    collections::BTreeSet,
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

const GLIBC_FLOOR: (u32, u32) = (2, 28);

/// One architecture of the release (xtask/src/package.rs's ARCHES).
struct Arch {
    /// `uname -m`, and the directory of its binary in target/packages/.
    name: &'static str,
    deb: &'static str,
    rpm: &'static str,
    /// The ELF header's e_machine: EM_X86_64, EM_AARCH64.
    e_machine: u16,
    /// The dynamic loader, the binary's one architecture-named NEEDED.
    loader: &'static str,
    /// qemu-user and the libc (Debian's cross package) it runs on elsewhere.
    qemu: &'static str,
    sysroot: &'static str,
}

const ARCHES: [Arch; 2] = [
    Arch {
        name: "x86_64",
        deb: "amd64",
        rpm: "x86_64",
        e_machine: 62,
        loader: "ld-linux-x86-64.so.2",
        qemu: "qemu-x86_64-static",
        sysroot: "/usr/x86_64-linux-gnu",
    },
    Arch {
        name: "aarch64",
        deb: "arm64",
        rpm: "aarch64",
        e_machine: 183,
        loader: "ld-linux-aarch64.so.1",
        qemu: "qemu-aarch64-static",
        sysroot: "/usr/aarch64-linux-gnu",
    },
];

impl Arch {
    fn native(&self) -> bool {
        self.name == std::env::consts::ARCH
    }

    fn binary(&self) -> PathBuf {
        packages().join(self.name).join("flowlog-agent")
    }

    /// `bin` run on this machine: directly, or through qemu-user with this
    /// architecture's libc; None when this machine cannot run it.
    fn command(&self, bin: &Path) -> Option<Command> {
        if self.native() {
            return Some(Command::new(bin));
        }
        let qemu_there = Command::new(self.qemu).arg("--version").output().is_ok_and(|o| o.status.success());
        if !qemu_there || !Path::new(self.sysroot).join("lib").join(self.loader).exists() {
            return None;
        }
        let mut cmd = Command::new(self.qemu);
        cmd.arg("-L").arg(self.sysroot).arg(bin);
        Some(cmd)
    }
}

fn native() -> &'static Arch {
    ARCHES.iter().find(|a| a.native()).expect("this machine's architecture is one of the release's")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn packages() -> PathBuf {
    root().join("target/packages")
}

fn required() -> bool {
    std::env::var("FLOWLOG_REQUIRE_PACKAGES").as_deref() == Ok("1")
}

/// The one file in target/packages ending in `suffix`, if built.
fn artefact(suffix: &str) -> Option<PathBuf> {
    let found: Vec<PathBuf> = fs::read_dir(packages())
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(suffix)))
        .collect();
    assert!(found.len() <= 1, "several *{suffix} in target/packages: {found:?}");
    let got = found.into_iter().next();
    if got.is_none() {
        assert!(!required(), "no *{suffix} in target/packages: run `cargo xtask package`");
        eprintln!("no *{suffix} in target/packages (run `cargo xtask package`): skipped");
    }
    got
}

fn deb_of(arch: &Arch) -> Option<PathBuf> {
    artefact(&format!("_{}.deb", arch.deb))
}

fn rpm_of(arch: &Arch) -> Option<PathBuf> {
    artefact(&format!(".{}.rpm", arch.rpm))
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

/// The ELF header's e_machine, after checking the header is a 64-bit
/// little-endian one (both architectures' ABI); the first 20 bytes.
fn elf_machine(bin: &Path) -> u16 {
    let mut h = [0u8; 20];
    fs::File::open(bin).and_then(|mut f| f.read_exact(&mut h)).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert_eq!(&h[..4], b"\x7fELF", "{}: not ELF", bin.display());
    assert_eq!((h[4], h[5]), (2, 1), "{}: not ELFCLASS64, ELFDATA2LSB", bin.display());
    u16::from_le_bytes([h[18], h[19]])
}

/// `arch`'s binary: its machine, glibc 2.28 at most, libc only; and it
/// runs (`--version`, `check-config`) when this machine can run it (for
/// the other architecture through qemu-user). Returns its `--version`.
fn check_runs_anywhere(arch: &Arch, bin: &Path) -> Option<String> {
    assert_eq!(elf_machine(bin), arch.e_machine, "{}: not an {} binary", bin.display(), arch.name);
    let v = glibc_versions(bin);
    let max = *v.iter().max().unwrap();
    assert!(max <= GLIBC_FLOOR, "{} needs GLIBC_{}.{} (> {}.{}): {v:?}", bin.display(), max.0, max.1, GLIBC_FLOOR.0, GLIBC_FLOOR.1);
    // Dynamically linked against libc only (plus the loader and libgcc_s).
    let dynamic = out(Command::new("readelf").arg("-d").arg("--wide").arg(bin));
    for l in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
        let lib = l.split('[').nth(1).and_then(|r| r.split(']').next()).unwrap();
        assert!(
            ["libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libgcc_s.so.1", arch.loader].contains(&lib),
            "{} needs {lib}",
            bin.display()
        );
    }
    let Some(mut run) = arch.command(bin) else {
        assert!(!required(), "cannot run {} here: apt-get install qemu-user-static and {}'s libc ({})", bin.display(), arch.name, arch.sysroot);
        eprintln!("{}: no {} or no {}: not run", bin.display(), arch.qemu, arch.sysroot);
        return None;
    };
    let version = out(run.arg("--version"));
    assert!(version.starts_with("flowlog-agent "), "{version}");
    let mut run = arch.command(bin).unwrap();
    let check = out(run.arg("check-config").arg("--config").arg(root().join("flowlog.example.toml")).env_clear());
    assert!(check.contains("pin-dir = \"/sys/fs/bpf/flowlog\"\n"), "{check}");
    Some(version)
}

/// Each architecture's release binary is that architecture's, needs glibc
/// 2.28 at most, and runs; both are the same version.
#[test]
fn release_binaries_need_glibc_2_28_at_most() {
    let mut versions = BTreeSet::new();
    for arch in &ARCHES {
        let bin = arch.binary();
        if !bin.is_file() {
            assert!(!required(), "no {}: run `cargo xtask package`", bin.display());
            eprintln!("no {} (run `cargo xtask package`): skipped", bin.display());
            continue;
        }
        versions.extend(check_runs_anywhere(arch, &bin));
    }
    assert!(versions.len() <= 1, "the architectures' binaries differ in version: {versions:?}");
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

/// A package's files unpacked into a fresh temporary directory, removed on drop.
struct Unpacked(PathBuf);

impl Unpacked {
    fn new(what: &str) -> Unpacked {
        let dir = std::env::temp_dir().join(format!("flowlog-{what}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Unpacked(dir)
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The files (not directories) under `dir`, relative to it.
fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                found.insert(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    found
}

/// Both architectures' packages hold the same files, byte for byte, but
/// for the binary, which is each architecture's tested one.
fn same_files_but_the_binary(kind: &str, unpacked: &[(&Arch, Unpacked)], bin: &str) {
    let [(a, da), (b, db)] = unpacked else { return };
    let files = files_under(&da.0);
    assert_eq!(files, files_under(&db.0), "the {} and {} {kind}s hold different files", a.name, b.name);
    for f in files.iter().filter(|f| *f != Path::new(bin)) {
        assert!(fs::read(da.0.join(f)).unwrap() == fs::read(db.0.join(f)).unwrap(), "{}: differs between the {kind}s", f.display());
    }
}

/// Each architecture's .deb: its fields, files, conffiles and scripts, and
/// the binary it holds is that architecture's tested one; both debs hold
/// the same files.
#[test]
fn debs_hold_their_architecture_s_binary_and_the_same_files() {
    let mut unpacked = Vec::new();
    for arch in &ARCHES {
        let Some(deb) = deb_of(arch) else { continue };
        // What the package says and holds, without installing it.
        let info = out(Command::new("dpkg-deb").arg("--field").arg(&deb));
        let architecture = format!("Architecture: {}", arch.deb);
        for want in ["Package: flowlog-agent", &architecture, "Depends: libc6 (>= 2.28)", "Section: net"] {
            assert!(info.lines().any(|l| l == want), "{want} not in {}:\n{info}", deb.display());
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
            assert!(listing.lines().any(|l| l.ends_with(f)), "{f} not in {}:\n{listing}", deb.display());
        }
        let ctrl = Unpacked::new(&format!("deb-control-{}", arch.deb));
        out(Command::new("dpkg-deb").arg("--control").arg(&deb).arg(ctrl.0.join("DEBIAN")));
        assert_eq!(fs::read_to_string(ctrl.0.join("DEBIAN/conffiles")).unwrap().trim(), "/etc/flowlog/flowlog.toml");
        for s in ["postinst", "prerm", "postrm"] {
            assert_eq!(fs::read_to_string(ctrl.0.join("DEBIAN").join(s)).unwrap(), read(&format!("deploy/packaging/{s}")), "{s}");
        }
        let files = Unpacked::new(&format!("deb-{}", arch.deb));
        out(Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(&files.0));
        let bin = files.0.join("usr/bin/flowlog-agent");
        assert_eq!(elf_machine(&bin), arch.e_machine, "{}: not an {} binary", deb.display(), arch.name);
        assert!(
            fs::read(&bin).unwrap() == fs::read(arch.binary()).unwrap(),
            "{} holds another binary than {}",
            deb.display(),
            arch.binary().display()
        );
        unpacked.push((arch, files));
    }
    same_files_but_the_binary("deb", &unpacked, "usr/bin/flowlog-agent");
}

/// This machine's architecture's .deb installs, its agent accepts the
/// installed config, and it removes and purges cleanly.
#[test]
fn deb_installs_checks_its_config_and_purges() {
    let arch = native();
    let Some(deb) = deb_of(arch) else { return };
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
    assert!(fs::read(bin).unwrap() == fs::read(arch.binary()).unwrap(), "the deb holds the tested binary");
    check_runs_anywhere(arch, bin);
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

/// Each architecture's .rpm: its name, architecture, files, config,
/// modes, scripts (the deb's) and dependencies; the binary it holds is that
/// architecture's tested one; both rpms hold the same files.
#[test]
fn rpm_holds_the_same_files_and_scripts() {
    if Command::new("rpm").arg("--version").output().is_err() {
        assert!(!required(), "rpm not installed (apt-get install rpm)");
        eprintln!("rpm not installed: skipped");
        return;
    }
    let mut unpacked = Vec::new();
    for arch in &ARCHES {
        let Some(rpm) = rpm_of(arch) else { continue };
        unpacked.push((arch, check_rpm(arch, &rpm)));
    }
    same_files_but_the_binary("rpm", &unpacked, "usr/bin/flowlog-agent");
}

/// One rpm's checks; returns its files unpacked.
fn check_rpm(arch: &Arch, rpm: &Path) -> Unpacked {
    let q = |args: &[&str]| out(Command::new("rpm").args(["-qp", "--nosignature"]).args(args).arg(rpm));
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
    assert_eq!(info.trim(), format!("flowlog-agent {} Apache-2.0", arch.rpm));
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
    let unpacked = Unpacked::new(&format!("rpm-{}", arch.rpm));
    let dir = &unpacked.0;
    let st = Command::new("sh")
        .arg("-c")
        // rpm2archive (in Debian's rpm package; cpio may be missing).
        .arg(format!("rpm2archive - < {} | tar xz", flowlog_testkit::shell_quote(rpm)))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "rpm2archive | tar");
    let bin = dir.join("usr/bin/flowlog-agent");
    assert_eq!(elf_machine(&bin), arch.e_machine, "{}: not an {} binary", rpm.display(), arch.name);
    assert!(fs::read(&bin).unwrap() == fs::read(arch.binary()).unwrap(), "{} holds another binary than {}", rpm.display(), arch.binary().display());
    assert_eq!(fs::read_to_string(dir.join("usr/lib/systemd/system/flowlog.service")).unwrap(), packaged_unit());
    assert_eq!(fs::read_to_string(dir.join("etc/flowlog/flowlog.toml")).unwrap(), read("flowlog.example.toml"));
    unpacked
}

/// The Dockerfile built for each platform with buildah, as `docker buildx
/// build --platform` would (the builder sets TARGETARCH; the runtime image
/// is swapped for `scratch`: no registry here, and nothing runs in the
/// build): each image is its platform's and holds that architecture's
/// packaged binary and the example config.
#[test]
fn image_holds_each_platform_s_binary() {
    if let Some(missing) = ARCHES.iter().map(Arch::binary).find(|b| !b.is_file()) {
        assert!(!required(), "no {}: run `cargo xtask package`", missing.display());
        eprintln!("no {} (run `cargo xtask package`): skipped", missing.display());
        return;
    }
    if Command::new("buildah").arg("--version").output().is_err() {
        assert!(!required(), "buildah not installed (apt-get install buildah)");
        eprintln!("buildah not installed: skipped");
        return;
    }
    // A private image store: nothing left in the machine's.
    let store = Unpacked::new("buildah");
    let buildah = || {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root").arg(store.0.join("root")).arg("--runroot").arg(store.0.join("run")).args(["--storage-driver", "vfs"]);
        cmd
    };
    for arch in &ARCHES {
        let tag = format!("localhost/flowlog-test:{}", arch.deb);
        let image = store.0.join(arch.deb);
        out(buildah()
            .args(["build", "--quiet", "--platform", &format!("linux/{}", arch.deb), "--build-arg", "RUNTIME_IMAGE=scratch", "-t", &tag])
            .arg(format!("--output=type=local,dest={}", image.display()))
            .arg(root()));
        let platform = out(buildah().args(["inspect", "--format", "{{.OCIv1.OS}}/{{.OCIv1.Architecture}}", &tag]));
        assert_eq!(platform.trim(), format!("linux/{}", arch.deb));
        let bin = image.join("usr/local/bin/flowlog-agent");
        assert_eq!(elf_machine(&bin), arch.e_machine, "the {} image holds no {} binary", arch.deb, arch.name);
        assert!(
            fs::read(&bin).unwrap() == fs::read(arch.binary()).unwrap(),
            "the {} image holds another binary than {}",
            arch.deb,
            arch.binary().display()
        );
        assert_eq!(fs::metadata(&bin).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::read_to_string(image.join("etc/flowlog/flowlog.toml")).unwrap(), read("flowlog.example.toml"));
    }
}
