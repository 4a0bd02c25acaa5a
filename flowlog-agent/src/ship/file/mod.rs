//! `file:<path>[?mode=<octal>]`: appends records to a file, one per line,
//! written directly (no spool). The file is created `0640` (or `mode`),
//! whatever the umask; an existing one is tightened to it, never loosened.

use std::{fmt, fs::File, io::Write, path::PathBuf};

use anyhow::{Context, Result};
use tracing::info;

use super::{
    output::{query, split_query, OutputSpec, Registration, Sink},
    perm,
};

/// The syntax leaves `mode` out: an unknown option's error names it.
pub const REGISTRATION: Registration = Registration { syntax: "`file:<path>[?mode=<octal>]`", parse };

/// The mode of a file (`file:`, and the objects of `dir:`) without `mode=`:
/// the owner and its group read flow records, other local accounts do not.
pub const DEFAULT_MODE: u32 = 0o640;

fn parse(s: &str) -> Option<Result<Box<dyn OutputSpec>, String>> {
    let (p, q) = split_query(s.strip_prefix("file:")?);
    if p.is_empty() {
        return None;
    }
    Some(perm::take_mode(s, q).and_then(|(mode, rest)| match rest {
        Some(kv) => Err(format!("invalid output {s:?}: unknown option {kv:?} (mode=<octal>)")),
        None => Ok(Box::new(FileOutput { path: PathBuf::from(p), mode }) as Box<dyn OutputSpec>),
    }))
}

/// Appends records to a file, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOutput {
    pub path: PathBuf,
    /// `mode=`; `None`: [`DEFAULT_MODE`].
    pub mode: Option<u32>,
}

impl fmt::Display for FileOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file:{}{}", self.path.display(), query(perm::mode_query(self.mode)))
    }
}

impl OutputSpec for FileOutput {
    fn spooled(&self) -> bool {
        false
    }
    fn open(&self) -> Result<Box<dyn Sink>> {
        let path = &self.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mode = self.mode.unwrap_or(DEFAULT_MODE);
        let (file, tightened) = perm::open_append(path, mode).with_context(|| format!("opening output file {}", path.display()))?;
        if let Some((was, now)) = tightened {
            info!(file = %path.display(), "output file mode tightened from {was:04o} to {now:04o}");
        }
        Ok(Box::new(FileSink { path: path.clone(), file }))
    }
}

struct FileSink {
    path: PathBuf,
    file: File,
}

impl Sink for FileSink {
    fn write_batch(&mut self, parts: &[&[u8]]) -> Result<()> {
        for p in parts {
            self.file.write_all(p).with_context(|| format!("writing {}", self.path.display()))?;
        }
        self.file.flush()?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_appends_lines() {
        let dir = std::env::temp_dir().join(format!("flowlog-ship-{}", std::process::id()));
        let path = dir.join("sub/out.log");
        let o = FileOutput { path: path.clone(), mode: None };
        let mut s = o.open().unwrap();
        s.write_batch(&[b"a\n"]).unwrap();
        s.write_batch(&[b"b\n", b"", b"c\n"]).unwrap();
        drop(s);
        let mut s = o.open().unwrap();
        s.write_batch(&[b"d\n"]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\nd\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn chmod(p: &std::path::Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Created 0640 or `mode=`; an existing file tightened, never loosened.
    #[test]
    fn file_modes() {
        let dir = std::env::temp_dir().join(format!("flowlog-ship-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let open = |name: &str, url: &str| {
            let o: super::super::Output = format!("file:{}{url}", dir.join(name).display()).parse().unwrap();
            drop(o.open().unwrap());
            perm::mode_of(&dir.join(name)).unwrap()
        };
        assert_eq!(open("default", ""), 0o640);
        assert_eq!(open("explicit", "?mode=0600"), 0o600);
        assert_eq!(open("wide", "?mode=644"), 0o644);
        // An older version's 0644 file: tightened to 0640.
        chmod(&dir.join("wide"), 0o644);
        assert_eq!(open("wide", ""), 0o640);
        // Tighter than asked: kept.
        assert_eq!(open("explicit", "?mode=0666"), 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mode_option() {
        let o: super::super::Output = "file:/var/log/f.log?mode=600".parse().unwrap();
        assert_eq!(o.spec(), Some(&FileOutput { path: "/var/log/f.log".into(), mode: Some(0o600) }));
        assert_eq!(o.to_string(), "file:/var/log/f.log?mode=0600");
        assert_eq!("file:/f".parse::<super::super::Output>().unwrap().to_string(), "file:/f");
        for (bad, why) in [
            ("file:/f?mode=0999", "mode=\"0999\" is not a file mode"),
            ("file:/f?mode=01777", "mode=\"01777\" is not a file mode"),
            ("file:/f?mode=", "mode=\"\" is not a file mode"),
            ("file:/f?mode=rw", "mode=\"rw\" is not a file mode"),
            ("file:/f?perm=0600", "unknown option \"perm=0600\" (mode=<octal>)"),
        ] {
            let e = bad.parse::<super::super::Output>().unwrap_err();
            assert!(e.starts_with(&format!("invalid output {bad:?}: {why}")), "{e}");
        }
    }
}
