//! `dir:<path>[?options]`: the S3 layout in a local directory (the object
//! delivery path of [`super::object`], with files for objects). Files are
//! written to a temporary name and renamed, so a reader never sees half a
//! file; they are `0640` (or `mode=`), whatever the umask.

use std::{fmt, future::Future, path::PathBuf};

use anyhow::{Context, Result};
use tracing::debug;

use super::{
    file::DEFAULT_MODE,
    object::{LayoutOptions, ObjectDest, ObjectStore},
    output::split_query,
    perm,
    prelude::*,
};

pub const REGISTRATION: Registration = Registration { syntax: "`dir:<path>[?options]` (also mode=<octal>)", parse };

fn parse(s: &str) -> Option<Result<Box<dyn OutputSpec>, String>> {
    let (p, q) = split_query(s.strip_prefix("dir:")?);
    if p.is_empty() {
        return None;
    }
    Some(perm::take_mode(s, q).and_then(|(mode, q)| LayoutOptions::parse(s, q.as_deref()).map(|opts| Box::new(DirOutput { path: PathBuf::from(p), opts, mode }) as Box<dyn OutputSpec>)))
}

/// The S3 layout in a local directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirOutput {
    pub path: PathBuf,
    pub opts: LayoutOptions,
    /// `mode=` of the files; `None`: [`DEFAULT_MODE`].
    pub mode: Option<u32>,
}

impl fmt::Display for DirOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dir:{}{}", self.path.display(), query([self.opts.query(), perm::mode_query(self.mode)].concat()))
    }
}

impl OutputSpec for DirOutput {
    fn start<'a>(&'a self, cx: StartContext<'a>) -> StartFut<'a> {
        Box::pin(async move {
            let store = DirStore { root: self.path.clone(), mode: self.mode.unwrap_or(DEFAULT_MODE) };
            store.check(cx.name)?;
            let layout = self.opts.layout("", cx.account_id, cx.region(), cx.flow_log_id);
            anyhow::Ok(Box::new(ObjectDest { name: cx.name.to_string(), store, layout, opts: cx.objects.clone(), retry: cx.retry, stats: cx.stats }) as Box<dyn Destination>)
        })
    }
}

/// A directory as an object store.
pub struct DirStore {
    pub root: PathBuf,
    /// Of every file written.
    pub mode: u32,
}

impl DirStore {
    /// Startup check: the directory exists (created if missing) and is writable.
    pub fn check(&self, name: &str) -> Result<()> {
        std::fs::create_dir_all(&self.root).with_context(|| format!("{}: cannot create {}", name, self.root.display()))?;
        let probe = self.root.join(".flowlog-probe");
        std::fs::write(&probe, b"").with_context(|| format!("{}: {} is not writable", name, self.root.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(())
    }

    fn write(&self, key: &str, body: &[u8]) -> Result<(), Failure> {
        let path = self.root.join(key);
        let dir = path.parent().expect("keys have folders");
        let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
        std::fs::create_dir_all(dir)
            .and_then(|_| perm::write_new(&tmp, body, self.mode))
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Failure::Other(format!("writing {}: {e}", path.display())))
    }
}

impl ObjectStore for DirStore {
    const CALL: &'static str = "write";
    fn put(&self, key: &str, body: &[u8]) -> impl Future<Output = Result<(), Failure>> + Send {
        std::future::ready(self.write(key, body))
    }
    fn delivered(&self, dest: &str, objects: usize, records: usize) {
        debug!(destination = %dest, files = objects, records, "written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::Output;

    /// Files 0640 by default, `mode=` otherwise, whatever the umask.
    #[test]
    fn file_modes_and_option() {
        let root = std::env::temp_dir().join(format!("flowlog-dir-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (url, key, want) in [("", "a/b/x.log.gz", 0o640), ("?per-hour&mode=0600", "a/y.log.gz", 0o600)] {
            let o: Output = format!("dir:{}{url}", root.display()).parse().unwrap();
            assert_eq!(o.to_string(), format!("dir:{}{url}", root.display()));
            let d = o.spec::<DirOutput>().unwrap();
            let store = DirStore { root: d.path.clone(), mode: d.mode.unwrap_or(DEFAULT_MODE) };
            store.write(key, b"body").unwrap();
            assert_eq!(perm::mode_of(&root.join(key)).unwrap(), want, "{url}");
            assert_eq!(std::fs::read(root.join(key)).unwrap(), b"body");
        }
        let e = "dir:/x?mode=0800".parse::<Output>().unwrap_err();
        assert!(e.starts_with("invalid output \"dir:/x?mode=0800\": mode=\"0800\" is not a file mode"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
