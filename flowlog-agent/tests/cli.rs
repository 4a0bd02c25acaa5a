//! The command line as operators meet it: `--help` grouped by topic with
//! examples, shell completions run by the real bash, the manual page
//! rendered by the real man, and boolean variables. No root needed.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

const AGENT: &str = env!("CARGO_BIN_EXE_flowlog-agent");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(AGENT);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn help_is_grouped_by_topic_with_examples() {
    let help = stdout(&run(&["--help"], &[]));
    let headings = ["Config:", "Capture:", "Kernel filters:", "Records:", "Outputs:", "AWS:", "Restarts:", "Operations:", "Examples:"];
    let at: Vec<usize> = headings.iter().map(|h| help.lines().position(|l| l == *h).unwrap_or_else(|| panic!("no {h:?} heading:\n{help}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "headings out of order {at:?}:\n{help}");
    // Each flag under its topic.
    let section = |h: &str| {
        let i = headings.iter().position(|x| *x == h).unwrap();
        help.lines().skip(at[i]).take(at[i + 1] - at[i]).collect::<Vec<_>>().join("\n")
    };
    for (h, flags) in [
        ("Capture:", &["--iface", "--exclude-iface", "--ingress-hook", "--max-flows", "--sample-rate"][..]),
        ("Kernel filters:", &["--include-cidr", "--exclude-cidr", "--include-port", "--exclude-port", "--protocol"]),
        ("Outputs:", &["--output", "--spool-dir", "--file-interval"]),
        ("AWS:", &["--region", "--aws-endpoint-url"]),
        ("Restarts:", &["--pin-dir", "--no-pin", "--on-exit"]),
        ("Operations:", &["--metrics-listen", "--ethtool-stats", "--log-json"]),
    ] {
        let s = section(h);
        for f in flags {
            assert!(s.contains(f), "{f} not under {h}:\n{s}");
        }
    }
    // The examples are commands the agent accepts: checked by check-config.
    assert!(help.contains("flowlog-agent -o 's3://my-bucket/flows?format=parquet&hive&per-hour' -o cloudwatch:/flowlog/vpc"), "{help}");
    let o = run(&["check-config", "-o", "s3://my-bucket/flows?format=parquet&hive&per-hour", "-o", "cloudwatch:/flowlog/vpc"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["check-config", "-i", "eth0", "-i", "ens*", "--interval", "10", "--log-format", "${srcaddr} ${dstaddr} ${packets} ${bytes} ${tcp-flags}", "-o", "file:/var/log/flowlog/records.log"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Subcommands are listed.
    for c in ["run", "check-config", "compare", "completions", "man"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(&format!("{c} "))), "subcommand {c} missing:\n{help}");
    }
}

/// Completions in bash itself: the generated function completes flags.
#[test]
fn bash_completion_completes_flags() {
    let script = stdout(&run(&["completions", "bash"], &[]));
    let probe = "\ncomplete -p flowlog-agent >/dev/null || exit 3\n\
        COMP_WORDS=(flowlog-agent --exclude-); COMP_CWORD=1; COMP_LINE='flowlog-agent --exclude-'; COMP_POINT=${#COMP_LINE}\n\
        $(complete -p flowlog-agent | sed -E 's/.*-F ([^ ]+).*/\\1/') flowlog-agent --exclude- flowlog-agent\n\
        printf '%s\\n' \"${COMPREPLY[@]}\"\n";
    let mut bash = Command::new("bash").arg("--norc").arg("-s").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    bash.stdin.take().unwrap().write_all(format!("{script}{probe}").as_bytes()).unwrap();
    let o = bash.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut got: Vec<String> = String::from_utf8(o.stdout).unwrap().lines().map(String::from).collect();
    got.sort();
    assert_eq!(got, ["--exclude-cidr", "--exclude-iface", "--exclude-port"]);
    // The other shells' scripts are produced and name the flags.
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let s = stdout(&run(&["completions", shell], &[]));
        assert!(s.contains("exclude-cidr") && s.contains("log-json"), "{shell}:\n{s}");
    }
    let o = run(&["completions", "tcsh"], &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("tcsh"));
}

/// The manual page, rendered by man(1).
#[test]
fn man_page_renders() {
    let page = stdout(&run(&["man"], &[]));
    assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH flowlog-agent 1"), "{}", &page[..page.len().min(300)]);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("flowlog-agent.1");
    std::fs::write(&file, &page).unwrap();
    let o = Command::new("man").arg("-l").arg(&file).env("LC_ALL", "C").env("MANWIDTH", "120").env("PAGER", "cat").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout).replace('\u{8}', "");
    // Backspace overstrikes (bold) leave doubled letters: compare on a
    // version with them removed, as `col -b` would.
    let plain = strip_overstrike(&String::from_utf8_lossy(&o.stdout));
    for want in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS", "flowlog-agent", "--exclude-cidr", "FLOWLOG_NO_PIN", "Firehose", "Examples:"] {
        assert!(plain.contains(want), "{want:?} not in the rendered page:\n{plain}");
    }
    assert!(!text.is_empty());
    // --dir: one page per command, each rendering, the subcommands the main
    // page refers to among them.
    let pages = dir.join("pages");
    std::fs::create_dir_all(&pages).unwrap();
    stdout(&run(&["man", "--dir", pages.to_str().unwrap()], &[]));
    let mut names: Vec<String> = std::fs::read_dir(&pages).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["flowlog-agent-check-config.1", "flowlog-agent-compare.1", "flowlog-agent-completions.1", "flowlog-agent-man.1", "flowlog-agent-run.1", "flowlog-agent-top.1", "flowlog-agent.1"]);
    for n in &names {
        let sub = n.trim_end_matches(".1").trim_start_matches("flowlog-agent");
        if !sub.is_empty() {
            assert!(plain.contains(&format!("flowlog-agent{sub}(1)")), "the main page does not refer to {n}");
        }
        let o = Command::new("man").arg("-l").arg(pages.join(n)).env("LC_ALL", "C").env("PAGER", "cat").output().unwrap();
        assert!(o.status.success() && o.stdout.len() > 100, "{n}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn strip_overstrike(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

fn effective(env: &[(&str, &str)], args: &[&str]) -> String {
    let mut a = vec!["check-config"];
    a.extend_from_slice(args);
    stdout(&run(&a, env))
}

/// Boolean variables take what operators write: 1/0, true/false, yes/no,
/// on/off; a flag or variable wins over the config file either way.
#[test]
fn boolean_variables() {
    let line = |out: &str, key: &str| out.lines().find(|l| l.starts_with(&format!("{key} "))).map(String::from).unwrap_or_else(|| panic!("no {key}:\n{out}"));
    let base = effective(&[], &[]);
    assert_eq!(line(&base, "log-json"), "log-json = false");
    assert_eq!(line(&base, "pin"), "pin = true");
    for v in ["1", "true", "yes", "on", "YES", "True"] {
        let o = effective(&[("FLOWLOG_LOG_JSON", v), ("FLOWLOG_NO_PIN", v)], &[]);
        assert_eq!((line(&o, "log-json"), line(&o, "pin")), ("log-json = true".into(), "pin = false".into()), "{v}");
    }
    for v in ["0", "false", "no", "off"] {
        let o = effective(&[("FLOWLOG_LOG_JSON", v), ("FLOWLOG_NO_PIN", v)], &[]);
        assert_eq!((line(&o, "log-json"), line(&o, "pin")), ("log-json = false".into(), "pin = true".into()), "{v}");
    }
    // Over the config file, both ways.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "log-json = true\npin = false\n").unwrap();
    let c = cfg.to_str().unwrap();
    let o = effective(&[], &["-c", c]);
    assert_eq!((line(&o, "log-json"), line(&o, "pin")), ("log-json = true".into(), "pin = false".into()));
    let o = effective(&[("FLOWLOG_LOG_JSON", "no"), ("FLOWLOG_NO_PIN", "0")], &["-c", c]);
    assert_eq!((line(&o, "log-json"), line(&o, "pin")), ("log-json = false".into(), "pin = true".into()));
    let o = effective(&[("FLOWLOG_LOG_JSON", "no")], &["-c", c, "--log-json", "--no-pin=false"]);
    assert_eq!((line(&o, "log-json"), line(&o, "pin")), ("log-json = true".into(), "pin = true".into()), "flags win over variables");
    // Anything else is refused, naming the variable's flag.
    let o = run(&["check-config"], &[("FLOWLOG_NO_PIN", "maybe")]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(2) && e.contains("maybe") && e.contains("--no-pin"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
