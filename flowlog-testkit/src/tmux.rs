//! A terminal program run in tmux, for the tests of terminal views
//! (`flowlog-agent top`): a detached session of a given size on a tmux
//! server of its own, keys sent with `send-keys`, the screen read with
//! `capture-pane -p`. The server is killed on drop.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::netns::next_id;

pub struct Tmux {
    /// The `-L` socket name: one tmux server per session.
    server: String,
}

impl Tmux {
    /// `cmd` (a shell command line) in a `width` × `height` terminal.
    pub fn start(cmd: &str, width: u16, height: u16) -> Tmux {
        let t = Tmux { server: format!("flowlog-test-{}-{}", std::process::id(), next_id()) };
        let (w, h) = (width.to_string(), height.to_string());
        t.run(&["new-session", "-d", "-s", "t", "-x", &w, "-y", &h, cmd]).unwrap_or_else(|e| panic!("tmux: {e}"));
        t
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out =
            Command::new("tmux").arg("-L").arg(&self.server).args(args).output().map_err(|e| format!("tmux: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `send-keys` (key names as tmux takes them: `q`, `Enter`, `Escape`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        self.run(&args).unwrap_or_else(|e| panic!("send-keys {keys:?}: {e}"));
    }

    /// The screen as text (`capture-pane -p`); empty once the program ended.
    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"]).unwrap_or_default()
    }

    /// Whether the session (the program in it) is still there.
    pub fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "t"]).is_ok()
    }

    /// Waits until `done` holds for the screen and returns it; panics with
    /// the screen after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < until, "{what} not on the screen within {timeout:?}:\n{s}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
