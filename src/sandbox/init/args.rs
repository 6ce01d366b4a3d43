//! `lg-init`'s command line and the other pure parts of the helper (the
//! test-paths list, exit statuses, the results frames): no system calls
//! here, so the host crate unit-tests this file as it is (`#[path]`).
//!
//! The command line is a stable interface between labgrader's runners and
//! every `lg-init` they ship: options may be added, never renamed or given
//! another meaning.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};

/// Exit status of `lg-init` when it could not set the job up (nothing of
/// the job ran, or its `test_all` could not be started): a grader fault.
pub const EXIT_SETUP: i32 = 125;
/// The init's watched descriptor (see [`Args::watch`]) reported its
/// reader gone: the runner stopped waiting for this job.
pub const EXIT_ABANDONED: i32 = 123;
/// `run-as-student` could not reach the broker or was misused.
pub const EXIT_CLIENT: i32 = 125;
/// At most this many results files are sent (same as the host's
/// `sandbox::RESULTS_FILES`).
pub const RESULTS_FILES: usize = 16;
/// At most this many results bytes are sent (`sandbox::RESULTS_BYTES`).
pub const RESULTS_BYTES: u64 = 8 << 20;
/// Flag bit of the stream's trailer: a writable mount of the job was full.
pub const FLAG_DISK_FULL: u32 = 1;
/// A writable mount with less free space than this counts as full.
pub const FULL_BELOW: u64 = 64 << 10;

pub const USAGE: &str = "\
usage: lg-init --contract stdout|trusted [options]
  --workspace DIR          the student's workspace (default /workspace)
  --harness DIR            the harness's home under trusted (default /harness)
  --bin-dir DIR            holds run-as-student, first on the harness's PATH
                           (default /.labgrader/bin)
  --test-paths FILE        NUL-separated workspace paths that came from the tests
  --copy-from DIR          copy DIR/workspace (and DIR/tests under trusted) in
                           first, then unmount them
  --student UID:GID        the student identity (default 65534:65534)
  --harness-id UID:GID     the harness identity (default 65533:65533)
  --results-fd N           write the results stream to fd N after test_all ended
  --results-nonce-file F   precede the stream by a line holding F's contents
                           (F is read and unlinked before the job runs)
  --rlimit NAME=SOFT[:HARD]  a limit of every job process (cpu, fsize, data,
                           core, nproc, nofile, as; repeatable)
exit status: test_all's (a signal death as 128+N); 125 when the job could not
be set up (the reason on stderr).";

/// The grading contract (as `labgrader`'s `Contract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    Stdout,
    Trusted,
}

/// A resource limit `lg-init` applies to the job's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// The RLIMIT_* number.
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub contract: Contract,
    pub workspace: PathBuf,
    pub harness: PathBuf,
    pub bin_dir: PathBuf,
    pub test_paths: Option<PathBuf>,
    pub copy_from: Option<PathBuf>,
    pub student: (u32, u32),
    pub harness_id: (u32, u32),
    pub results_fd: Option<i32>,
    pub nonce_file: Option<PathBuf>,
    pub rlimits: Vec<Rlimit>,
    /// The environment lg-init was given (the job's, set by the runner),
    /// which it hands on; never its own process's (see `main::run`).
    pub env: Vec<(OsString, OsString)>,
    /// A pipe's write end whose reader vanishing (`POLLERR`/`POLLHUP`)
    /// ends the job at once: the native runner's report pipe, when the
    /// daemon died or dropped the run. Never from the command line.
    pub watch: Option<i32>,
}

impl Args {
    /// A variable of [`Args::env`].
    pub fn var(&self, name: &str) -> Option<&OsStr> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_os_str())
    }

    /// The system's `PATH` as the job was given it.
    pub fn system_path(&self) -> &OsStr {
        self.var("PATH").unwrap_or(OsStr::new("/usr/bin:/bin"))
    }
}

fn ids(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not UID:GID"))?;
    let n = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{s:?} is not UID:GID"))
    };
    let (u, g) = (n(u)?, n(g)?);
    if u == 0 || g == 0 {
        return Err(format!("{s:?}: a job identity must not be root"));
    }
    Ok((u, g))
}

fn rlimit(s: &str) -> Result<Rlimit, String> {
    let (name, vals) = s
        .split_once('=')
        .ok_or_else(|| format!("--rlimit {s:?} is not NAME=SOFT[:HARD]"))?;
    let resource = match name {
        "cpu" => 0,
        "fsize" => 1,
        "data" => 2,
        "core" => 4,
        "nproc" => 6,
        "nofile" => 7,
        "as" => 9,
        _ => return Err(format!("--rlimit: unknown limit {name:?}")),
    };
    let num = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("--rlimit {s:?}: {v:?} is not a number"))
    };
    let (soft, hard) = match vals.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(vals)?, num(vals)?),
    };
    if soft > hard {
        return Err(format!("--rlimit {s:?}: soft limit above hard"));
    }
    Ok(Rlimit {
        resource,
        soft,
        hard,
    })
}

/// Parse the arguments after argv[0].
pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Args, String> {
    let mut a = Args {
        contract: Contract::Stdout,
        workspace: "/workspace".into(),
        harness: "/harness".into(),
        bin_dir: "/.labgrader/bin".into(),
        test_paths: None,
        copy_from: None,
        student: (65534, 65534),
        harness_id: (65533, 65533),
        results_fd: None,
        nonce_file: None,
        rlimits: Vec::new(),
        env: Vec::new(),
        watch: None,
    };
    let mut contract = None;
    let mut it = argv.into_iter();
    while let Some(opt) = it.next() {
        let (opt, inline) = match opt.split_once('=') {
            Some((o, v)) if o.starts_with("--") => (o.to_string(), Some(v.to_string())),
            _ => (opt, None),
        };
        if opt == "--help" {
            return Err(USAGE.into());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{opt} needs a value"))
        };
        let abs = |v: String| {
            if Path::new(&v).is_absolute() {
                Ok(PathBuf::from(v))
            } else {
                Err(format!("{opt} {v:?}: an absolute path is needed"))
            }
        };
        match opt.as_str() {
            "--contract" => {
                contract = Some(match value()?.as_str() {
                    "stdout" => Contract::Stdout,
                    "trusted" => Contract::Trusted,
                    v => return Err(format!("--contract {v:?}: stdout or trusted")),
                })
            }
            "--workspace" => a.workspace = abs(value()?)?,
            "--harness" => a.harness = abs(value()?)?,
            "--bin-dir" => a.bin_dir = abs(value()?)?,
            "--test-paths" => a.test_paths = Some(abs(value()?)?),
            "--copy-from" => a.copy_from = Some(abs(value()?)?),
            "--student" => a.student = ids(&value()?)?,
            "--harness-id" => a.harness_id = ids(&value()?)?,
            "--results-fd" => {
                let v = value()?;
                let fd = v
                    .parse::<i32>()
                    .ok()
                    .filter(|fd| *fd > 2)
                    .ok_or_else(|| format!("--results-fd {v:?}: a descriptor above 2"))?;
                a.results_fd = Some(fd);
            }
            "--results-nonce-file" => a.nonce_file = Some(abs(value()?)?),
            "--rlimit" => a.rlimits.push(rlimit(&value()?)?),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    a.contract = contract.ok_or_else(|| format!("--contract is required\n{USAGE}"))?;
    if a.student == a.harness_id {
        return Err("--student and --harness-id must differ".into());
    }
    if a.contract == Contract::Trusted && a.harness.starts_with(&a.workspace) {
        return Err("--harness must not be inside --workspace".into());
    }
    Ok(a)
}

/// The test-paths file: NUL-separated relative paths (empty entries
/// ignored), each with the directories above it. Refuses anything
/// absolute or with `..`: the list comes from the runner, and a bad one is
/// a grader bug, not something to guess at.
pub fn parse_test_paths(bytes: &[u8]) -> Result<BTreeSet<PathBuf>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeSet::new();
    for raw in bytes.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let p = Path::new(std::ffi::OsStr::from_bytes(raw));
        let mut clean = PathBuf::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => clean.push(n),
                Component::CurDir => {}
                _ => {
                    return Err(format!(
                        "test path {:?} is not a plain relative path",
                        p.display()
                    ));
                }
            }
        }
        // Every directory above a test file is the harness's too: a
        // student-owned parent would let the student unlink or rename the
        // file it holds (only a sticky, foreign directory forbids that).
        let mut up = clean.as_path();
        while !up.as_os_str().is_empty() {
            out.insert(up.to_path_buf());
            up = up.parent().unwrap_or(Path::new(""));
        }
    }
    Ok(out)
}

/// The exit status that passes a wait status on: the code, or 128+N for a
/// death by signal N (as shells and container engines report it).
pub fn exit_code(wait_status: i32) -> i32 {
    let sig = wait_status & 0x7f;
    if sig == 0 {
        (wait_status >> 8) & 0xff
    } else if sig != 0x7f {
        128 + sig
    } else {
        // Stopped: not an ending; callers only pass endings.
        EXIT_SETUP
    }
}

/// One file of the results stream: `u32 LE name length, name, u64 LE
/// size, bytes`.
pub fn frame_file(out: &mut Vec<u8>, name: &[u8], data: &[u8]) {
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
}

/// The stream's end: `u32 0`, then `u32 LE flags`.
pub fn frame_end(out: &mut Vec<u8>, flags: u32) {
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
}

/// A results file name that may travel: one plain component of UTF-8.
/// Suffix of the results entry that stands for a file too large to send
/// back (`NAME.too-large`, holding its size in decimal).
pub const TOO_LARGE_SUFFIX: &str = ".too-large";

pub fn sendable_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
        && std::str::from_utf8(name).is_ok()
}

/// `run-as-student`'s request: `u32 LE total length`, `u32 LE argc`, then
/// per argument `u32 LE length, bytes`.
pub fn encode_request(argv: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    for a in argv {
        body.extend_from_slice(&(a.len() as u32).to_le_bytes());
        body.extend_from_slice(a);
    }
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Largest request the broker reads.
pub const REQUEST_MAX: usize = 1 << 20;

/// Decode a request body (after its length word).
pub fn decode_request(body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut at = 0usize;
    let word = |at: &mut usize| -> Result<usize, String> {
        let b = body
            .get(*at..*at + 4)
            .ok_or("request ends early")?
            .try_into()
            .map_err(|_| "request ends early")?;
        *at += 4;
        Ok(u32::from_le_bytes(b) as usize)
    };
    let argc = word(&mut at)?;
    if argc == 0 || argc > 65536 {
        return Err(format!("request has {argc} arguments"));
    }
    let mut argv = Vec::with_capacity(argc.min(1024));
    for _ in 0..argc {
        let len = word(&mut at)?;
        let a = body.get(at..at + len).ok_or("request ends early")?;
        if a.contains(&0) {
            return Err("an argument holds a NUL byte".into());
        }
        argv.push(a.to_vec());
        at += len;
    }
    if at != body.len() {
        return Err("request has trailing bytes".into());
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Args, String> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn command_line_parses_with_defaults_and_both_spellings() {
        let a = p(&[
            "--contract",
            "trusted",
            "--results-fd=3",
            "--rlimit",
            "nproc=64",
        ])
        .unwrap();
        assert_eq!(a.contract, Contract::Trusted);
        assert_eq!(a.workspace, PathBuf::from("/workspace"));
        assert_eq!(a.harness, PathBuf::from("/harness"));
        assert_eq!(a.student, (65534, 65534));
        assert_eq!(a.harness_id, (65533, 65533));
        assert_eq!(a.results_fd, Some(3));
        assert_eq!(
            a.rlimits,
            vec![Rlimit {
                resource: 6,
                soft: 64,
                hard: 64
            }]
        );
        let a = p(&[
            "--contract=stdout",
            "--student",
            "1000:1001",
            "--harness-id=2000:2000",
            "--copy-from",
            "/in",
            "--rlimit=fsize=10:20",
        ])
        .unwrap();
        assert_eq!(a.student, (1000, 1001));
        assert_eq!(a.harness_id, (2000, 2000));
        assert_eq!(a.copy_from, Some(PathBuf::from("/in")));
        assert_eq!((a.rlimits[0].soft, a.rlimits[0].hard), (10, 20));
    }

    #[test]
    fn command_line_refuses_what_it_cannot_honour() {
        for (bad, want) in [
            (&["--workspace", "/w"][..], "--contract is required"),
            (&["--contract", "both"][..], "stdout or trusted"),
            (&["--contract", "stdout", "--student", "0:5"][..], "root"),
            (
                &["--contract", "stdout", "--results-fd", "1"][..],
                "above 2",
            ),
            (
                &["--contract", "stdout", "--workspace", "w"][..],
                "absolute",
            ),
            (
                &["--contract", "stdout", "--rlimit", "x=1"][..],
                "unknown limit",
            ),
            (
                &["--contract", "stdout", "--rlimit", "nofile=9:1"][..],
                "soft",
            ),
            (
                &["--contract", "stdout", "--frobnicate"][..],
                "unknown option",
            ),
            (&["--contract", "stdout", "--student"][..], "needs a value"),
            (
                &[
                    "--contract",
                    "stdout",
                    "--student",
                    "7:7",
                    "--harness-id",
                    "7:7",
                ][..],
                "differ",
            ),
            (
                &["--contract", "trusted", "--harness", "/workspace/h"][..],
                "inside",
            ),
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn test_paths_bring_their_directories() {
        let s = parse_test_paths(b"lib/deep/helper.py\0").unwrap();
        let want: BTreeSet<PathBuf> = ["lib", "lib/deep", "lib/deep/helper.py"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(s, want);
    }

    #[test]
    fn test_paths_are_plain_relative_paths() {
        let s = parse_test_paths(b"test_all\0data/\0./data/expected.txt\0\0").unwrap();
        let want: BTreeSet<PathBuf> = ["test_all", "data", "data/expected.txt"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(s, want);
        assert!(parse_test_paths(b"../etc/passwd").is_err());
        assert!(parse_test_paths(b"a/../../b").is_err());
        assert!(parse_test_paths(b"/etc/passwd").is_err());
    }

    #[test]
    fn exit_codes_pass_statuses_on() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(9), 137);
        assert_eq!(exit_code(9 | 0x80), 137); // core dumped
        assert_eq!(exit_code(15), 143);
    }

    #[test]
    fn requests_round_trip_and_hostile_ones_are_refused() {
        let argv = vec![b"sh".to_vec(), b"-c".to_vec(), b"echo hi".to_vec()];
        let r = encode_request(&argv);
        let len = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
        assert_eq!(len, r.len() - 4);
        assert_eq!(decode_request(&r[4..]).unwrap(), argv);
        assert!(decode_request(&[0, 0, 0, 0]).is_err());
        assert!(decode_request(&[1, 0, 0, 0, 9, 0, 0, 0, b'a']).is_err());
        assert!(decode_request(&[1, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
        assert!(decode_request(&[1, 0, 0, 0, 1, 0, 0, 0, b'a', b'b']).is_err());
    }

    #[test]
    fn names_that_may_travel() {
        assert!(sendable_name(b"results.json"));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", b"\xff"] {
            assert!(!sendable_name(bad), "{bad:?}");
        }
    }
}
