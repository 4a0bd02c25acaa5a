//! Is this host an EC2 instance? Answered from local files only.
//!
//! `auto` mode must not send anything to the metadata address on a host that
//! is not on EC2 (there it would be a stray packet to a link-local address,
//! or a multi-second timeout on every start). The firmware already says
//! where we run:
//! - Nitro instances put the instance id in the DMI board asset tag and
//!   "Amazon EC2" in the DMI system vendor;
//! - Xen instances have a hypervisor UUID starting with `ec2`, and a BIOS
//!   version with "amazon" in it.
//!
//! Paths are relative to an injectable sysfs root so tests use fake trees.

use std::{fs, path::Path};

use super::config::Mode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Ec2,
    OnPrem,
}

/// The chosen provider and a sentence saying why, for the startup log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub kind: ProviderKind,
    pub why: String,
}

/// One sign of EC2: a file under the sysfs root and what its content must
/// satisfy. `class/dmi/id` is a symlink to `devices/virtual/dmi/id` on real
/// hosts; both are listed for trees (containers, tests) that have only one.
type Sign = (&'static str, fn(&str) -> bool);

const SIGNS: &[Sign] = &[
    ("class/dmi/id/board_asset_tag", |v| v.starts_with("i-")),
    ("devices/virtual/dmi/id/board_asset_tag", |v| v.starts_with("i-")),
    ("class/dmi/id/sys_vendor", |v| v == "Amazon EC2"),
    ("devices/virtual/dmi/id/sys_vendor", |v| v == "Amazon EC2"),
    ("hypervisor/uuid", |v| v.to_ascii_lowercase().starts_with("ec2")),
    ("class/dmi/id/bios_version", |v| v.to_ascii_lowercase().contains("amazon")),
    ("devices/virtual/dmi/id/bios_version", |v| v.to_ascii_lowercase().contains("amazon")),
];

/// The first sign of EC2 found under `sysfs_root`, as `path = "value"`.
/// Unreadable or missing files are no sign (this machine has no DMI at all).
pub fn ec2_evidence(sysfs_root: &Path) -> Option<String> {
    SIGNS.iter().find_map(|(rel, test)| {
        let p = sysfs_root.join(rel);
        let v = fs::read_to_string(&p).ok()?;
        let v = v.trim();
        test(v).then(|| format!("{} = {v:?}", p.display()))
    })
}

/// Resolves `mode` to a provider. Only `auto` looks at the files.
pub fn select(mode: Mode, sysfs_root: &Path) -> Selection {
    match mode {
        Mode::Ec2 => Selection { kind: ProviderKind::Ec2, why: "mode = \"ec2\" in config".into() },
        Mode::Onprem => Selection { kind: ProviderKind::OnPrem, why: "mode = \"onprem\" in config".into() },
        Mode::Auto => match ec2_evidence(sysfs_root) {
            Some(e) => Selection { kind: ProviderKind::Ec2, why: format!("auto: on EC2 ({e})") },
            None => Selection { kind: ProviderKind::OnPrem, why: format!("auto: no EC2 sign in the DMI or hypervisor files under {}", sysfs_root.display()) },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::tests::tempdir;

    fn tree(files: &[(&str, &str)]) -> std::path::PathBuf {
        let root = tempdir("detect");
        for (rel, content) in files {
            let p = root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        root
    }

    #[test]
    fn auto_detects_from_fake_sysfs_trees() {
        type Case<'a> = (&'a [(&'a str, &'a str)], ProviderKind);
        let cases: &[Case] = &[
            // Nitro
            (&[("class/dmi/id/board_asset_tag", "i-0123456789abcdef0\n"), ("class/dmi/id/sys_vendor", "Amazon EC2\n")], ProviderKind::Ec2),
            (&[("devices/virtual/dmi/id/sys_vendor", "Amazon EC2\n")], ProviderKind::Ec2),
            (&[("devices/virtual/dmi/id/board_asset_tag", "i-0abc\n")], ProviderKind::Ec2),
            // Xen
            (&[("hypervisor/uuid", "ec2e1916-9099-7caf-fd21-012345abcdef\n")], ProviderKind::Ec2),
            (&[("hypervisor/uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF\n")], ProviderKind::Ec2),
            (&[("class/dmi/id/bios_version", "4.11.amazon\n")], ProviderKind::Ec2),
            // Not EC2
            (&[], ProviderKind::OnPrem),
            (&[("class/dmi/id/sys_vendor", "QEMU\n"), ("class/dmi/id/board_asset_tag", "\n")], ProviderKind::OnPrem),
            (&[("class/dmi/id/sys_vendor", "Amazon EC2 compatible\n")], ProviderKind::OnPrem),
            (&[("hypervisor/uuid", "4c4c4544-0042-3510-8051-b7c04f4e3232\n")], ProviderKind::OnPrem),
            (&[("class/dmi/id/board_asset_tag", "PO-1234\n"), ("class/dmi/id/bios_version", "1.2.3\n")], ProviderKind::OnPrem),
        ];
        for (files, want) in cases {
            let root = tree(files);
            let s = select(Mode::Auto, &root);
            assert_eq!(s.kind, *want, "{files:?}: {}", s.why);
            assert!(s.why.starts_with("auto: "));
            if s.kind == ProviderKind::Ec2 {
                assert!(s.why.contains(files[0].0), "{}", s.why);
            }
            fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn explicit_modes_ignore_the_files() {
        let root = tree(&[("class/dmi/id/sys_vendor", "Amazon EC2\n")]);
        assert_eq!(select(Mode::Onprem, &root).kind, ProviderKind::OnPrem);
        assert_eq!(select(Mode::Ec2, Path::new("/nonexistent")).kind, ProviderKind::Ec2);
        fs::remove_dir_all(root).unwrap();
    }

    /// The build machines have no DMI and no Xen: auto must stay on-prem
    /// there (and not fail on the missing files). Elsewhere there is nothing
    /// to assert.
    #[test]
    fn a_host_without_dmi_is_not_ec2() {
        if Path::new("/sys/class/dmi/id").exists() || Path::new("/sys/hypervisor/uuid").exists() {
            return;
        }
        let s = select(Mode::Auto, Path::new("/sys"));
        assert_eq!(s.kind, ProviderKind::OnPrem, "{}", s.why);
    }
}
