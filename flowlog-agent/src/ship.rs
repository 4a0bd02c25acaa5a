//! Destinations. For now: stdout and local files (one record per line).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
    str::FromStr,
};

use anyhow::{Context, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Appends records to a file, one per line.
    File(PathBuf),
}

impl FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" | "-" => Ok(Output::Stdout),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Output::File(PathBuf::from(p))),
                _ => Err(format!("invalid output {s:?}: expected `stdout` or `file:<path>`")),
            },
        }
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Stdout => write!(f, "stdout"),
            Output::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

pub enum Sink {
    Stdout(io::Stdout),
    File { path: PathBuf, file: File },
}

impl Sink {
    pub fn open(o: &Output) -> Result<Sink> {
        Ok(match o {
            Output::Stdout => Sink::Stdout(io::stdout()),
            Output::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening output file {}", path.display()))?;
                Sink::File { path: path.clone(), file }
            }
        })
    }

    /// Writes a batch of newline-terminated records in one go.
    pub fn write_batch(&mut self, lines: &[u8]) -> Result<()> {
        match self {
            Sink::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(lines)?;
                l.flush()?;
            }
            Sink::File { path, file } => {
                file.write_all(lines).with_context(|| format!("writing {}", path.display()))?;
                file.flush()?;
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::Stdout(_) => "stdout".into(),
            Sink::File { path, .. } => format!("file:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_outputs() {
        assert_eq!("stdout".parse::<Output>(), Ok(Output::Stdout));
        assert_eq!("file:/tmp/x.log".parse::<Output>(), Ok(Output::File("/tmp/x.log".into())));
        assert_eq!(
            "s3://bucket".parse::<Output>(),
            Err("invalid output \"s3://bucket\": expected `stdout` or `file:<path>`".to_string())
        );
        assert!("file:".parse::<Output>().is_err());
    }

    #[test]
    fn file_sink_appends_lines() {
        let dir = std::env::temp_dir().join(format!("flowlog-ship-{}", std::process::id()));
        let path = dir.join("sub/out.log");
        let mut s = Sink::open(&Output::File(path.clone())).unwrap();
        s.write_batch(b"a\n").unwrap();
        s.write_batch(b"b\n").unwrap();
        drop(s);
        let mut s = Sink::open(&Output::File(path.clone())).unwrap();
        s.write_batch(b"c\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
