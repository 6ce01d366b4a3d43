//! `scripts/install` and `scripts/uninstall` on this machine, for real:
//! user, directories, modes, owners and files as documented; a second
//! install changes nothing; `--single` and `--native` switch units;
//! uninstall keeps the spool, gradebook and config; `--purge` removes them
//! and undoes only the user changes install made.
//!
//! It needs root and writes the real system paths (/usr/local/bin,
//! /etc/labgrader, /var/lib/labgrader, /etc/systemd/system): as another
//! user it is skipped with a message. Runs of it (also from other
//! checkouts) are serialized by a lock file, and it refuses to touch a
//! labgrader installation it did not make itself.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::files::repo_root;

use sha2::{Digest, Sha256};

const BIN: &str = "/usr/local/bin/labgrader";
const ETC: &str = "/etc/labgrader";
/// The secrets under `/etc/labgrader/credentials/`, the [`GENERATED`]
/// ones first.
const CREDENTIALS: [&str; 7] = [
    "webhook-token",
    "web-secret",
    "web-staff-token",
    "gitlab-token",
    "callback-secret",
    "smtp-password",
    "slurm-token",
];
/// How many of [`CREDENTIALS`] install generates (random hex).
const GENERATED: usize = 3;
const STATE: &str = "/var/lib/labgrader";
const UNITDIR: &str = "/etc/systemd/system";
const DOC: &str = "/usr/local/share/doc/labgrader";
const UNITS: &[&str] = &[
    "labgrader-hook.service",
    "labgrader-grader.service",
    "labgrader.service",
];
const LOCK: &str = "/tmp/labgrader-install-test.lock";
/// Present while this test owns the installation (left behind by a crash).
const MARKER: &str = "/var/tmp/labgrader-install-test.owner";

fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new(repo_root().join("scripts").join(name))
        .args(args)
        .env("LABGRADER_BINARY", env!("CARGO_BIN_EXE_labgrader"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed:\n{text}"
    );
    text
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .unwrap()
        .status
        .success()
}

fn id_of(kind: &str, name: &str) -> u32 {
    let out = Command::new("getent").args([kind, name]).output().unwrap();
    assert!(out.status.success(), "no {kind} {name}");
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn groups_of(user: &str) -> Vec<String> {
    let out = Command::new("id").args(["-nG", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[track_caller]
fn assert_node(path: &str, mode: u32, uid: u32, gid: u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(
        m.permissions().mode() & 0o7777,
        mode,
        "{path}: mode {:o}",
        m.mode()
    );
    assert_eq!((m.uid(), m.gid()), (uid, gid), "{path}: owner");
}

/// Everything the installer owns: path -> (mode, uid, gid, mtime, sha256 or
/// link target).
fn listing() -> BTreeMap<PathBuf, String> {
    let mut roots: Vec<PathBuf> = vec![BIN.into(), ETC.into(), STATE.into(), DOC.into()];
    for u in UNITS {
        roots.push(Path::new(UNITDIR).join(u));
        roots.push(Path::new(UNITDIR).join(format!("{u}.d")));
        roots.push(Path::new(UNITDIR).join("multi-user.target.wants").join(u));
    }
    let mut out = BTreeMap::new();
    for root in roots {
        if std::fs::symlink_metadata(&root).is_err() {
            continue;
        }
        for e in walkdir::WalkDir::new(&root).follow_links(false) {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            let content = if m.file_type().is_symlink() {
                std::fs::read_link(e.path()).unwrap().display().to_string()
            } else if m.is_file() {
                hex::encode(Sha256::digest(std::fs::read(e.path()).unwrap()))
            } else {
                "dir".into()
            };
            out.insert(
                e.path().to_path_buf(),
                format!(
                    "{:o} {}:{} mtime={}.{} {content}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.mtime(),
                    m.mtime_nsec()
                ),
            );
        }
    }
    out
}

fn installed_anything() -> Vec<&'static str> {
    let mut found: Vec<&str> = [BIN, ETC, STATE, DOC]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    for u in UNITS {
        if Path::new(UNITDIR).join(u).exists() {
            found.push(u);
        }
    }
    found
}

fn verify_installed(unit: &str) {
    let out = Command::new("systemd-analyze")
        .args(["verify", &format!("{UNITDIR}/{unit}")])
        .output()
        .expect("systemd-analyze (Debian package `systemd`)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify {unit}:\n{text}"
    );
}

fn is_enabled(unit: &str) -> bool {
    Path::new(UNITDIR)
        .join("multi-user.target.wants")
        .join(unit)
        .exists()
}

#[test]
fn install_twice_then_uninstall_keeps_spool_and_purge_removes_all() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("install test skipped: it installs into system paths and needs root");
        return;
    }
    let lock = File::create(LOCK).unwrap();
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    // Refuse to clobber an installation this test did not make.
    let found = installed_anything();
    if !found.is_empty() {
        assert!(
            Path::new(MARKER).exists(),
            "labgrader is already installed on this machine ({found:?}); the install test \
             would replace it. Run scripts/uninstall --purge first."
        );
        script("uninstall", &["--purge"]);
    }
    let user_before = user_exists("labgrader");
    let docker_before = user_before && groups_of("labgrader").iter().any(|g| g == "docker");
    std::fs::write(MARKER, format!("user_existed_before={user_before}\n")).unwrap();

    // --- first install ---
    let out = script("install", &[]);
    assert!(out.contains("check-config"), "{out}");
    assert!(user_exists("labgrader"));
    let uid = id_of("passwd", "labgrader");
    let gid = id_of("group", "labgrader");
    if Command::new("getent")
        .args(["group", "docker"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            groups_of("labgrader").iter().any(|g| g == "docker"),
            "not in docker group"
        );
    }
    assert_node(STATE, 0o750, uid, gid);
    assert_node(ETC, 0o750, 0, gid);
    assert_node(BIN, 0o755, 0, 0);
    assert_node(&format!("{ETC}/labgrader.toml"), 0o640, 0, gid);
    // Secrets: root's alone, loaded by the units with LoadCredential=.
    assert_node(&format!("{ETC}/credentials"), 0o700, 0, 0);
    for name in CREDENTIALS {
        assert_node(&format!("{ETC}/credentials/{name}"), 0o600, 0, 0);
    }
    assert!(!Path::new(&format!("{ETC}/webhook-token")).exists());
    let as_daemon = Command::new("runuser")
        .args(["-u", "labgrader", "--", "cat"])
        .arg(format!("{ETC}/credentials/webhook-token"))
        .output()
        .unwrap();
    assert!(
        !as_daemon.status.success(),
        "the daemon's user (and so a job running as it) must not read the secrets"
    );
    let token = std::fs::read_to_string(format!("{ETC}/credentials/webhook-token")).unwrap();
    for name in &CREDENTIALS[..GENERATED] {
        let token = std::fs::read_to_string(format!("{ETC}/credentials/{name}")).unwrap();
        assert_eq!(token.trim().len(), 64, "{name}: 32 random bytes in hex");
        assert!(token.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    }
    for name in &CREDENTIALS[GENERATED..] {
        assert_eq!(
            std::fs::read(format!("{ETC}/credentials/{name}")).unwrap(),
            b"",
            "{name}"
        );
    }
    let config = std::fs::read_to_string(format!("{ETC}/labgrader.toml")).unwrap();
    assert!(config.contains("dir = \"/var/lib/labgrader\""), "{config}");
    assert_eq!(
        std::fs::read(BIN).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_labgrader")).unwrap()
    );
    for u in UNITS {
        assert_node(&format!("{UNITDIR}/{u}"), 0o644, 0, 0);
        assert_eq!(
            std::fs::read(Path::new(UNITDIR).join(u)).unwrap(),
            std::fs::read(repo_root().join("systemd").join(u)).unwrap()
        );
        verify_installed(u);
    }
    assert!(is_enabled("labgrader-hook.service"));
    assert!(is_enabled("labgrader-grader.service"));
    assert!(!is_enabled("labgrader.service"));
    assert!(Path::new(DOC).join("README.md").is_file());
    assert!(Path::new(DOC).join("docs/first-course.md").is_file());

    // --- second install: nothing changes ---
    let before = listing();
    let out = script("install", &[]);
    let changes: Vec<&str> = out
        .lines()
        .filter(|l| {
            [
                "installed ",
                "created ",
                "enabled ",
                "disabled ",
                "added ",
                "removed ",
            ]
            .iter()
            .any(|w| l.starts_with(&format!("install: {w}")))
        })
        .collect();
    assert!(
        changes.is_empty(),
        "second install changed something:\n{out}"
    );
    let after = listing();
    assert_eq!(before, after, "second install changed the files");

    // An edited config and the secrets survive a reinstall.
    let edited = format!("{config}\n# edited by staff\n");
    std::fs::write(format!("{ETC}/labgrader.toml"), &edited).unwrap();
    script("install", &[]);
    assert_eq!(
        std::fs::read_to_string(format!("{ETC}/labgrader.toml")).unwrap(),
        edited
    );
    assert_eq!(
        std::fs::read_to_string(format!("{ETC}/credentials/webhook-token")).unwrap(),
        token
    );

    // An older install's secret (owned by the daemon's user, beside the
    // config) is moved into the credentials, content kept.
    std::fs::rename(
        format!("{ETC}/credentials/webhook-token"),
        format!("{ETC}/webhook-token"),
    )
    .unwrap();
    std::os::unix::fs::chown(format!("{ETC}/webhook-token"), Some(uid), Some(gid)).unwrap();
    let out = script("install", &["--no-start"]);
    assert!(out.contains("moved /etc/labgrader/webhook-token"), "{out}");
    assert!(!Path::new(&format!("{ETC}/webhook-token")).exists());
    assert_node(&format!("{ETC}/credentials/webhook-token"), 0o600, 0, 0);
    assert_eq!(
        std::fs::read_to_string(format!("{ETC}/credentials/webhook-token")).unwrap(),
        token
    );

    // --single switches to the one-process unit; --native adds the drop-in.
    script("install", &["--single", "--native", "--no-start"]);
    assert!(is_enabled("labgrader.service"));
    assert!(!is_enabled("labgrader-hook.service"));
    assert!(!is_enabled("labgrader-grader.service"));
    let dropin = format!("{UNITDIR}/labgrader-grader.service.d/native.conf");
    assert_node(&dropin, 0o644, 0, 0);
    verify_installed("labgrader-grader.service");
    script("install", &[]);
    assert!(is_enabled("labgrader-hook.service") && !is_enabled("labgrader.service"));

    // A job and a gradebook in the spool, as a running grader leaves them.
    std::fs::create_dir_all(format!("{STATE}/incoming")).unwrap();
    std::fs::write(format!("{STATE}/incoming/01JOB.json"), b"{}").unwrap();
    std::fs::write(format!("{STATE}/gradebook.sqlite"), b"grades").unwrap();

    // --- uninstall: service gone, data and config kept ---
    script("uninstall", &[]);
    assert!(!Path::new(BIN).exists());
    assert!(!Path::new(DOC).exists());
    for u in UNITS {
        assert!(!Path::new(UNITDIR).join(u).exists(), "{u} left");
        assert!(
            !Path::new(UNITDIR).join(format!("{u}.d")).exists(),
            "{u}.d left"
        );
        assert!(!is_enabled(u), "{u} still enabled");
    }
    assert_eq!(
        std::fs::read(format!("{STATE}/incoming/01JOB.json")).unwrap(),
        b"{}"
    );
    assert_eq!(
        std::fs::read(format!("{STATE}/gradebook.sqlite")).unwrap(),
        b"grades"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{ETC}/credentials/webhook-token")).unwrap(),
        token
    );
    assert!(user_exists("labgrader"));

    // --- purge: everything gone; a user that was there before stays ---
    script("uninstall", &["--purge"]);
    assert!(!Path::new(STATE).exists());
    assert!(!Path::new(ETC).exists());
    assert_eq!(user_exists("labgrader"), user_before);
    if user_before {
        let docker_now = groups_of("labgrader").iter().any(|g| g == "docker");
        assert_eq!(docker_now, docker_before, "docker membership not restored");
    }
    assert!(installed_anything().is_empty());
    std::fs::remove_file(MARKER).unwrap();
}

#[test]
fn install_rejects_an_unknown_argument() {
    let out = Command::new(repo_root().join("scripts/install"))
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}
