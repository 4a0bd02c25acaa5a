//! `file:<path>`: appends records to a file, one per line, written
//! directly (no spool).

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::Write,
    path::PathBuf,
};

use anyhow::{Context, Result};

use super::output::{OutputSpec, Registration, Sink};

pub const REGISTRATION: Registration = Registration { syntax: "`file:<path>`", parse };

fn parse(s: &str) -> Option<Result<Box<dyn OutputSpec>, String>> {
    let p = s.strip_prefix("file:").filter(|p| !p.is_empty())?;
    Some(Ok(Box::new(FileOutput { path: PathBuf::from(p) })))
}

/// Appends records to a file, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOutput {
    pub path: PathBuf,
}

impl fmt::Display for FileOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file:{}", self.path.display())
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
        let file = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening output file {}", path.display()))?;
        Ok(Box::new(FileSink { path: path.clone(), file }))
    }
}

struct FileSink {
    path: PathBuf,
    file: File,
}

impl Sink for FileSink {
    fn write_batch(&mut self, lines: &[u8]) -> Result<()> {
        self.file.write_all(lines).with_context(|| format!("writing {}", self.path.display()))?;
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
        let o = FileOutput { path: path.clone() };
        let mut s = o.open().unwrap();
        s.write_batch(b"a\n").unwrap();
        s.write_batch(b"b\n").unwrap();
        drop(s);
        let mut s = o.open().unwrap();
        s.write_batch(b"c\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
