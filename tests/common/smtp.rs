//! A real SMTP server for the delivery tests: aiosmtpd running
//! `smtp_sink.py` beside this file (Debian's python3-aiosmtpd;
//! `scripts/setup/smtp.sh` installs it), and the messages it wrote. It
//! only receives; it never relays mail anywhere.

use std::path::{Path, PathBuf};

use super::services::python;
use super::wait::DEADLINE;

/// A real SMTP server: aiosmtpd running `tests/common/smtp_sink.py`.
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    child: tokio::process::Child,
}

impl SmtpSink {
    /// Start on `port`, writing messages into `dir`; `auth` = `user:password`.
    pub async fn start(port: u16, dir: &Path, auth: Option<&str>) -> SmtpSink {
        use tokio::io::AsyncBufReadExt;
        std::fs::create_dir_all(dir).unwrap();
        let python = python();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/smtp_sink.py");
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(&script).arg(port.to_string()).arg(dir);
        if let Some(a) = auth {
            cmd.arg(a);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {python} {}: {e}; scripts/setup/smtp.sh installs python3-aiosmtpd",
                    script.display()
                )
            });
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("aiosmtpd did not start in time")
            .unwrap();
        assert_eq!(
            line.as_deref(),
            Some("ready"),
            "aiosmtpd failed to start (is python3-aiosmtpd installed? run scripts/setup/smtp.sh)"
        );
        SmtpSink {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    /// Parsed messages received so far, in order.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        messages_in(&self.dir)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Parsed messages (`.json`) received in `dir`, in order.
pub fn messages_in(dir: &Path) -> Vec<serde_json::Value> {
    files_in(dir, "json")
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// Raw bytes of every `.eml` received in `dir`.
pub fn raw_messages_in(dir: &Path) -> Vec<Vec<u8>> {
    files_in(dir, "eml")
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// The files of `dir` ending in `.ext`, sorted (the sink numbers them).
fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == ext));
    names.sort();
    names
}
