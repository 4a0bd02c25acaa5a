//! `stdout` (or `-`): one record per line on standard output, written
//! directly (no spool).

use std::{
    fmt,
    io::{self, Write},
};

use anyhow::Result;

use super::output::{OutputSpec, Registration, Sink};

pub const REGISTRATION: Registration = Registration { syntax: "`stdout`", parse };

fn parse(s: &str) -> Option<Result<Box<dyn OutputSpec>, String>> {
    (s == "stdout" || s == "-").then(|| Ok(Box::new(Stdout) as Box<dyn OutputSpec>))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stdout;

impl fmt::Display for Stdout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stdout")
    }
}

impl OutputSpec for Stdout {
    fn spooled(&self) -> bool {
        false
    }
    fn open(&self) -> Result<Box<dyn Sink>> {
        Ok(Box::new(StdoutSink(io::stdout())))
    }
}

struct StdoutSink(io::Stdout);

impl Sink for StdoutSink {
    fn write_batch(&mut self, parts: &[&[u8]]) -> Result<()> {
        let mut l = self.0.lock();
        for p in parts {
            l.write_all(p)?;
        }
        l.flush()?;
        Ok(())
    }

    fn describe(&self) -> String {
        "stdout".into()
    }
}
