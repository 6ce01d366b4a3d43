//! The ids a native job runs as: a subordinate range (`/etc/subuid`,
//! `/etc/subgid`) mapped onto ids 0..N of the job's user namespace, so the
//! sandbox's root, the harness and the student are host ids that belong to
//! nobody — never the daemon's uid, never one of its groups (issue 14).
//!
//! It owns reading the range files, checking a range against the daemon's
//! own ids, and writing a child's maps: directly when the daemon is root,
//! through the setuid `newuidmap`/`newgidmap` (shadow's uidmap package)
//! when it is not. It never creates a range (`scripts/install --native`
//! does) and never maps anything outside one.
//!
//! Untrusted input: none (the range files are the administrator's); lines
//! that do not parse are skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Ids the sandbox needs: 0 (its root) up to the student's 65534.
pub const NEEDED: u32 = 65536;

/// A subordinate range: host ids `start..start+count` become `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u32,
    pub count: u32,
}

/// The uid and gid ranges of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    pub user: String,
    pub uid: Range,
    pub gid: Range,
}

/// How maps are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// The daemon is root: it writes `/proc/PID/{uid,gid}_map` itself.
    Direct,
    /// Unprivileged: through these setuid helpers.
    Helpers {
        newuidmap: PathBuf,
        newgidmap: PathBuf,
    },
}

/// Find `user`'s (or `uid`'s) first range of at least [`NEEDED`] ids in
/// the text of a subuid/subgid file.
pub fn find_range(text: &str, user: &str, uid: u32) -> Option<Range> {
    text.lines().find_map(|l| {
        let l = l.trim();
        if l.starts_with('#') {
            return None;
        }
        let mut f = l.split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != user && who.parse::<u32>().ok() != Some(uid) {
            return None;
        }
        let (start, count) = (start.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        (count >= NEEDED && start.checked_add(NEEDED).is_some()).then_some(Range {
            start,
            count: NEEDED,
        })
    })
}

fn what_to_do(user: &str) -> String {
    format!(
        "add `{user}:100000:65536` to /etc/subuid and /etc/subgid (a range no other user \
         has), or run scripts/install --native"
    )
}

/// The ranges for `user` (uid `uid`) from `dir/subuid` and `dir/subgid`,
/// refusing a range that holds one of `own` (the daemon's uid, gid and
/// groups: they must never be mapped into a job).
pub fn lookup(dir: &Path, user: &str, uid: u32, own: &[u32]) -> Result<Ranges, String> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let (us, gs) = (read("subuid"), read("subgid"));
    let (Some(u), Some(g)) = (find_range(&us, user, uid), find_range(&gs, user, uid)) else {
        return Err(format!(
            "no subordinate id range of {NEEDED} ids for user `{user}` in {}/subuid and \
             {}/subgid: jobs run as ids from such a range, never as the daemon's: {}",
            dir.display(),
            dir.display(),
            what_to_do(user)
        ));
    };
    for r in [u, g] {
        if let Some(id) = own
            .iter()
            .chain(&[0])
            .find(|id| **id >= r.start && **id - r.start < r.count)
        {
            return Err(format!(
                "the subordinate range {}:{} of `{user}` holds id {id}, root's or the daemon's \
                 own: a job would run as it; {}",
                r.start,
                r.count,
                what_to_do(user)
            ));
        }
    }
    Ok(Ranges {
        user: user.to_string(),
        uid: u,
        gid: g,
    })
}

/// How this process can write maps: directly as root, else the helpers
/// (which must exist, setuid root).
pub fn writer() -> Result<Writer, String> {
    if nix::unistd::geteuid().is_root() {
        return Ok(Writer::Direct);
    }
    let find = |name: &str| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(p).is_ok_and(|m| m.mode() & 0o4000 != 0 && m.uid() == 0)
            })
            .ok_or_else(|| {
                format!(
                    "{name} (setuid root) is not installed: the unprivileged native runner \
                     maps its jobs' ids with it; install the `uidmap` package (apt-get install \
                     uidmap) or run scripts/install --native"
                )
            })
    };
    let helpers = Writer::Helpers {
        newuidmap: find("newuidmap")?,
        newgidmap: find("newgidmap")?,
    };
    let nnp = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("NoNewPrivs:").map(|v| v.trim() == "1"))
        })
        .unwrap_or(false);
    if nnp {
        return Err(
            "this process runs with no_new_privs (systemd's NoNewPrivileges=yes), so the \
             setuid newuidmap/newgidmap cannot map the jobs' ids: install the native drop-in \
             (scripts/install --native; it sets NoNewPrivileges=no) or run the grader as root"
                .into(),
        );
    }
    Ok(helpers)
}

/// The contents of a map file for `r`.
pub fn map_line(r: Range) -> String {
    format!("0 {} {}\n", r.start, r.count)
}

/// Write `pid`'s uid and gid maps (it is a fresh child in a new user
/// namespace, waiting for them).
pub fn write_maps(pid: i32, ranges: &Ranges, writer: &Writer) -> Result<(), String> {
    match writer {
        Writer::Direct => {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let w = |f: &str, v: &str| {
                std::fs::write(proc.join(f), v).map_err(|e| format!("write {f}: {e}"))
            };
            // setgroups stays allowed: lg-init clears the job's groups.
            w("gid_map", &map_line(ranges.gid))?;
            w("uid_map", &map_line(ranges.uid))
        }
        Writer::Helpers {
            newuidmap,
            newgidmap,
        } => {
            // Both at once: they touch different files of the child.
            let mut running = Vec::new();
            for (helper, r) in [(newgidmap, ranges.gid), (newuidmap, ranges.uid)] {
                let child = Command::new(helper)
                    .arg(pid.to_string())
                    .args(["0", &r.start.to_string(), &r.count.to_string()])
                    .env_clear()
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("run {}: {e}", helper.display()));
                running.push((helper, r, child));
            }
            // Every started helper is waited for, whatever failed.
            let finished: Vec<_> = running
                .into_iter()
                .map(|(helper, r, child)| {
                    let out = child.and_then(|c| {
                        c.wait_with_output()
                            .map_err(|e| format!("run {}: {e}", helper.display()))
                    });
                    (helper, r, out)
                })
                .collect();
            for (helper, r, out) in finished {
                let out = out?;
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    return Err(format!(
                        "{} {pid} 0 {} {} failed ({}): {}{}",
                        helper.display(),
                        r.start,
                        r.count,
                        out.status,
                        err.trim(),
                        if err.contains("Operation not permitted") || err.is_empty() {
                            " (is the daemon under NoNewPrivileges=yes? the setuid helper \
                             needs it off: see systemd/labgrader-grader-native.conf)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_name_or_uid_and_must_be_large_enough() {
        let t = "# comment\nalice:100000:65536\nlabgrader:165536:1000\n999:300000:65536\n";
        assert_eq!(
            find_range(t, "alice", 1000),
            Some(Range {
                start: 100000,
                count: NEEDED
            })
        );
        // Too small a range for labgrader's name; its uid has a good one.
        assert_eq!(find_range(t, "labgrader", 999).unwrap().start, 300000);
        assert_eq!(find_range(t, "bob", 1001), None);
        assert_eq!(find_range("x:4294967000:65536\n", "x", 1), None);
    }

    #[test]
    fn lookup_refuses_a_missing_range_or_one_holding_the_daemons_ids() {
        let d = tempfile::tempdir().unwrap();
        let e = lookup(d.path(), "labgrader", 999, &[999]).unwrap_err();
        assert!(e.contains("add `labgrader:100000:65536`"), "{e}");
        assert!(e.contains("scripts/install --native"), "{e}");
        std::fs::write(d.path().join("subuid"), "labgrader:100000:65536\n").unwrap();
        std::fs::write(d.path().join("subgid"), "labgrader:100000:65536\n").unwrap();
        let r = lookup(d.path(), "labgrader", 999, &[999, 995]).unwrap();
        assert_eq!(map_line(r.uid), "0 100000 65536\n");
        let e = lookup(d.path(), "labgrader", 999, &[100500]).unwrap_err();
        assert!(e.contains("holds id 100500"), "{e}");
        std::fs::write(d.path().join("subgid"), "labgrader:0:65536\n").unwrap();
        assert!(lookup(d.path(), "labgrader", 999, &[]).is_err());
    }
}
