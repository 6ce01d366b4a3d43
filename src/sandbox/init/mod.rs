//! The host side of `lg-init`, the helper every sandboxing runner starts
//! inside the sandbox as its first process (source: `main.rs` beside this
//! file; built by `build.rs` as a static executable). This module embeds
//! the binary and installs it where a runner can mount or copy it, and
//! lends the native runner the init's code to call in its sandbox's init
//! ([`run_here`]): the same code, without an `execve` per run.
//!
//! The helper's command line (`--contract stdout|trusted`, `--workspace`,
//! `--harness`, `--bin-dir`, `--test-paths`, `--copy-from`, `--student`,
//! `--harness-id`, `--results-fd`, `--results-nonce-file`, `--rlimit`) is a
//! stable interface: see [`USAGE`]. Exit status 125 ([`EXIT_SETUP`]) means
//! the job could not be set up (the reason is on its stderr), a grader
//! fault; otherwise it is `test_all`'s (a signal death as 128+N). The
//! results stream it writes is parsed by [`crate::sandbox::results_stream`].

// lg-init's own code, compiled here too: the native runner calls its init
// in its sandbox's init instead of an exec (`run_here`), and its unit tests
// run here.
#[path = "main.rs"]
#[allow(dead_code)]
mod helper;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use helper::args::{EXIT_SETUP, USAGE};

/// lg-init's init, called in this process instead of an `execve` of
/// [`BINARY`]: `argv` after argv[0], the job's environment, the descriptor
/// whose reader vanishing ends the job at once; the exit status back. Only
/// for a process made for this purpose (the native runner's sandbox init,
/// pid 1 of the job's namespaces): the init takes over the process's
/// descriptors, signals and children exactly as the executable would, and
/// the caller must end the process with `_exit`.
pub(crate) fn run_here(
    argv: Vec<std::ffi::OsString>,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    watch: Option<i32>,
) -> i32 {
    helper::run(argv, env, watch)
}

/// The static `lg-init` executable.
pub static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lg-init"));

/// Where a sandbox holds the helper, and `run-as-student` (the same
/// binary: it dispatches on `argv[0]`).
pub const SANDBOX_PATH: &str = "/.labgrader/lg-init";
pub const SANDBOX_BIN_DIR: &str = "/.labgrader/bin";

/// `lg-init`'s command line as a runner starts it: the one place the host
/// spells the helper's options (the helper parses them in `args.rs`).
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub contract: crate::config::Contract,
    /// The staged job files to copy in first (native), if any.
    pub copy_from: Option<&'a str>,
    pub test_paths: &'a str,
    /// `uid:gid` of the student and of the harness.
    pub student: (u32, u32),
    pub harness: (u32, u32),
    /// `(name, soft, hard)` of each limit lg-init sets on job processes.
    pub rlimits: Vec<(&'static str, u64, u64)>,
    pub results_fd: i32,
    /// The root-only file holding the nonce that precedes the results
    /// stream (docker, where the stream shares stderr).
    pub nonce_file: Option<&'a str>,
}

impl Invocation<'_> {
    /// The argument vector, [`SANDBOX_PATH`] first.
    pub fn argv(&self) -> Vec<String> {
        let mut a = vec![SANDBOX_PATH.to_string()];
        let mut opt = |k: &str, v: String| {
            a.push(k.to_string());
            a.push(v);
        };
        opt("--contract", self.contract.to_string());
        if let Some(d) = self.copy_from {
            opt("--copy-from", d.to_string());
        }
        opt("--test-paths", self.test_paths.to_string());
        opt(
            "--student",
            format!("{}:{}", self.student.0, self.student.1),
        );
        opt(
            "--harness-id",
            format!("{}:{}", self.harness.0, self.harness.1),
        );
        for &(name, soft, hard) in &self.rlimits {
            let v = if soft == hard {
                format!("{name}={soft}")
            } else {
                format!("{name}={soft}:{hard}")
            };
            opt("--rlimit", v);
        }
        opt("--results-fd", self.results_fd.to_string());
        if let Some(f) = self.nonce_file {
            opt("--results-nonce-file", f.to_string());
        }
        a
    }
}

/// The contents of the file `lg-init --test-paths` reads: the workspace
/// entries that came from the tests, relative, each followed by a NUL
/// (parsed by `args::parse_test_paths`).
pub fn test_paths_file(paths: &[PathBuf]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(p.as_os_str().as_bytes());
        out.push(0);
    }
    out
}

/// Write [`BINARY`] into `dir` (created 0755 if missing) as
/// `lg-init-<hash>`, 0755, once: an existing file of the same name is
/// already this binary. Returns its path.
pub fn install(dir: &Path) -> io::Result<PathBuf> {
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(BINARY)[..8]);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("lg-init-{hash}"));
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == BINARY.len() as u64)
    {
        return Ok(path);
    }
    let tmp = dir.join(format!(".lg-init-{hash}.{}", std::process::id()));
    std::fs::write(&tmp, BINARY)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn limits_match_the_hosts() {
        assert_eq!(helper::args::RESULTS_FILES, crate::sandbox::RESULTS_FILES);
        assert_eq!(helper::args::RESULTS_BYTES, crate::sandbox::RESULTS_BYTES);
        assert_eq!(
            helper::args::TOO_LARGE_SUFFIX,
            crate::results::TOO_LARGE_SUFFIX
        );
        assert_eq!(
            helper::args::FLAG_DISK_FULL,
            crate::sandbox::results_stream::FLAG_DISK_FULL
        );
    }

    #[test]
    fn frames_are_what_the_host_parses() {
        let mut s = Vec::new();
        helper::args::frame_file(&mut s, b"results.json", b"{}");
        helper::args::frame_end(&mut s, helper::args::FLAG_DISK_FULL);
        let r = crate::sandbox::results_stream::parse(&s).unwrap();
        assert_eq!(r.files, vec![("results.json".to_string(), b"{}".to_vec())]);
        assert!(r.disk_full());
    }

    #[test]
    fn the_test_paths_file_is_what_lg_init_parses() {
        let paths = [PathBuf::from("test_all"), PathBuf::from("data/x")];
        let parsed = helper::args::parse_test_paths(&test_paths_file(&paths)).unwrap();
        let want = ["test_all", "data", "data/x"].map(PathBuf::from);
        assert_eq!(parsed, want.into_iter().collect());
    }

    /// Does a 64-bit ELF file name a program interpreter (PT_INTERP)?
    fn has_interpreter(elf: &[u8]) -> bool {
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
        let (size, num) = (u16_at(0x36), u16_at(0x38));
        (0..num).any(|i| {
            let o = phoff + i * size;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
        })
    }

    #[test]
    fn binary_is_static_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let p = install(dir.path()).unwrap();
        assert_eq!(install(dir.path()).unwrap(), p);
        // ELF, and no interpreter: it runs in any image.
        assert_eq!(&BINARY[..4], b"\x7fELF");
        assert!(
            !has_interpreter(BINARY),
            "lg-init must be linked statically"
        );
        let out = Command::new(&p).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(EXIT_SETUP));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--contract"));
        let out = Command::new(&p)
            .arg("--contract")
            .arg("x")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("stdout or trusted"));
    }

    #[test]
    fn run_as_student_outside_a_sandbox_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = install(dir.path()).unwrap();
        let link = dir.path().join("run-as-student");
        std::fs::hard_link(&p, &link).unwrap();
        let out = Command::new(&link)
            .arg("true")
            .env("LABGRADER_BROKER", dir.path().join("nope"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot reach the broker"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
