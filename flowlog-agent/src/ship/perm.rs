//! File modes of what the agent writes locally (spool, `file:` outputs):
//! flow records say who talks to whom, so no file is readable by every
//! local account. A file or directory the agent creates gets exactly the
//! mode asked for, whatever the umask; one that exists already is only
//! ever tightened to it (bits the mode lacks are cleared, none added).

use std::{
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// A mode change made to an existing file: `(before, after)`.
pub type Tightened = Option<(u32, u32)>;

/// `mode` with the permission bits `mask` lacks cleared.
fn masked(mode: u32, mask: u32) -> u32 {
    mode & (mask | !0o777)
}

/// The change that clears the permission bits `mask` lacks from mode `m`,
/// made by `set`.
fn tighten_mode(m: u32, mask: u32, set: impl FnOnce(Permissions) -> io::Result<()>) -> io::Result<Tightened> {
    let m = m & 0o7777;
    let n = masked(m, mask);
    if n == m {
        return Ok(None);
    }
    set(Permissions::from_mode(n))?;
    Ok(Some((m, n)))
}

/// Clears the permission bits of `path` that `mask` lacks.
pub fn tighten(path: &Path, mask: u32) -> io::Result<Tightened> {
    tighten_mode(fs::symlink_metadata(path)?.permissions().mode(), mask, |p| fs::set_permissions(path, p))
}

/// [`tighten`] on an open file (`fchmod`).
fn tighten_file(f: &File, mask: u32) -> io::Result<Tightened> {
    tighten_mode(f.metadata()?.permissions().mode(), mask, |p| f.set_permissions(p))
}

/// Creates directory `dir` with exactly `mode` (its missing parents get the
/// usual 0777 less the umask), or tightens an existing one to `mode`.
pub fn create_dir(dir: &Path, mode: u32) -> io::Result<Tightened> {
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(p)?;
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => fs::set_permissions(dir, Permissions::from_mode(mode)).map(|_| None),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => tighten(dir, mode),
        Err(e) => Err(e),
    }
}

/// Opens `path` for appending: created with exactly `mode` if missing, an
/// existing file tightened to `mode`.
pub fn open_append(path: &Path, mode: u32) -> io::Result<(File, Tightened)> {
    match OpenOptions::new().append(true).create_new(true).mode(mode).open(path) {
        Ok(f) => {
            f.set_permissions(Permissions::from_mode(mode))?;
            Ok((f, None))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let f = OpenOptions::new().append(true).open(path)?;
            let t = tighten_file(&f, mode)?;
            Ok((f, t))
        }
        Err(e) => Err(e),
    }
}

/// Writes a new file (truncating one left over) with exactly `mode`.
pub fn write_new(path: &Path, body: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    f.set_permissions(Permissions::from_mode(mode))?;
    f.write_all(body)
}

/// Takes `mode=<octal>` (at most 0777) out of the query `q` of output `s`
/// (local file outputs); returns it and the rest of the query.
pub fn take_mode(s: &str, q: Option<&str>) -> Result<(Option<u32>, Option<String>), String> {
    let mut mode = None;
    let mut rest = Vec::new();
    for kv in q.unwrap_or("").split('&').filter(|x| !x.is_empty()) {
        match kv.split_once('=') {
            Some(("mode", v)) => {
                let m = u32::from_str_radix(v, 8).ok().filter(|m| *m <= 0o777 && v.bytes().all(|b| b.is_ascii_digit()));
                mode = Some(m.ok_or_else(|| format!("invalid output {s:?}: mode={v:?} is not a file mode such as 0640 (octal, at most 0777)"))?);
            }
            _ => rest.push(kv),
        }
    }
    Ok((mode, if rest.is_empty() { None } else { Some(rest.join("&")) }))
}

/// `mode=0NNN` of a mode given, for the canonical URL.
pub fn mode_query(mode: Option<u32>) -> Vec<String> {
    mode.iter().map(|m| format!("mode={m:04o}")).collect()
}

/// The mode of `path`'s permission bits (for logs and tests).
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tightens_never_loosens() {
        assert_eq!(masked(0o755, 0o700), 0o700);
        assert_eq!(masked(0o644, 0o600), 0o600);
        assert_eq!(masked(0o600, 0o640), 0o600);
        assert_eq!(masked(0o400, 0o600), 0o400);
        // Set-id and sticky bits are not permission bits: kept.
        assert_eq!(masked(0o2775, 0o700), 0o2700);
    }

    /// The umask neither widens nor narrows a mode asked for. (Changing
    /// the umask affects files other tests create meanwhile: only modes,
    /// which every mode this module sets ignores.)
    #[test]
    fn umask_does_not_change_created_modes() {
        let d = std::env::temp_dir().join(format!("flowlog-perm-umask-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        for (umask, tag) in [(0o077, "tight"), (0o000, "open")] {
            // SAFETY: umask only sets the process's file mode mask.
            let old = unsafe { libc::umask(umask) };
            let (dir, file, new) = (d.join(format!("{tag}-dir")), d.join(format!("{tag}-file")), d.join(format!("{tag}-new")));
            let r = (create_dir(&dir, 0o750), open_append(&file, 0o640).map(|_| ()), write_new(&new, b"x", 0o600));
            unsafe { libc::umask(old) };
            r.0.unwrap();
            r.1.unwrap();
            r.2.unwrap();
            assert_eq!((mode_of(&dir).unwrap(), mode_of(&file).unwrap(), mode_of(&new).unwrap()), (0o750, 0o640, 0o600), "umask {umask:03o}");
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn created_exact_existing_tightened() {
        let d = std::env::temp_dir().join(format!("flowlog-perm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let sub = d.join("a/b");
        assert_eq!(create_dir(&sub, 0o700).unwrap(), None);
        assert_eq!(mode_of(&sub).unwrap(), 0o700);
        fs::set_permissions(&sub, Permissions::from_mode(0o755)).unwrap();
        assert_eq!(create_dir(&sub, 0o700).unwrap(), Some((0o755, 0o700)));
        assert_eq!(mode_of(&sub).unwrap(), 0o700);
        let f = sub.join("f");
        let (_, t) = open_append(&f, 0o640).unwrap();
        assert_eq!((t, mode_of(&f).unwrap()), (None, 0o640));
        fs::set_permissions(&f, Permissions::from_mode(0o666)).unwrap();
        let (_, t) = open_append(&f, 0o640).unwrap();
        assert_eq!((t, mode_of(&f).unwrap()), (Some((0o666, 0o640)), 0o640));
        fs::set_permissions(&f, Permissions::from_mode(0o600)).unwrap();
        let (_, t) = open_append(&f, 0o644).unwrap();
        assert_eq!((t, mode_of(&f).unwrap()), (None, 0o600));
        // A file in the way of a directory is an error, not tightened.
        assert_eq!(create_dir(&f, 0o700).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        fs::remove_dir_all(&d).unwrap();
    }
}
