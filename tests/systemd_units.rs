//! The shipped systemd units: `systemd-analyze verify` accepts each of them
//! (and the grader with the native-runner drop-in) without a single
//! warning, they are `Type=notify` with `NotifyAccess=main`, the hook has
//! no capabilities and no Docker access, and `systemd-analyze security`
//! keeps their exposure low. Runs anywhere Debian's `systemd` package is
//! installed; systemd need not be PID 1. The units name the installed
//! binary, /usr/local/bin/labgrader, which verify requires to exist: the
//! tests verify copies that name the binary cargo built instead (the
//! install test verifies the installed units as they are).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::files::repo_root;

const UNITS: &[&str] = &[
    "labgrader-hook.service",
    "labgrader-grader.service",
    "labgrader.service",
];

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("systemd").join(name)).unwrap()
}

/// Copies of the units (plus the grader with the native drop-in appended)
/// in a temp dir, with ExecStart pointing at the binary under test.
fn staged_units() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_labgrader");
    let mut paths = Vec::new();
    for name in UNITS {
        let text = unit_text(name).replace("/usr/local/bin/labgrader", bin);
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        paths.push(p);
    }
    let native =
        std::fs::read_to_string(repo_root().join("systemd/labgrader-grader-native.conf")).unwrap();
    let text = unit_text("labgrader-grader.service").replace("/usr/local/bin/labgrader", bin)
        + "\n"
        + &native;
    let p = dir.path().join("labgrader-grader-native.service");
    std::fs::write(&p, text).unwrap();
    paths.push(p);
    (dir, paths)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .current_dir(unit.parent().unwrap())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}); install Debian's `systemd` package")
        })
}

/// `systemd-analyze verify` output for `unit`; empty means clean.
fn verify(unit: &Path) -> Result<(), String> {
    let out = systemd_analyze(&["verify"], unit);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {:?}\n{text}", unit.display(), out.status))
    }
}

fn exposure(unit: &Path) -> f64 {
    let out = systemd_analyze(&["security", "--offline=true", "--no-pager"], unit);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure figure for {}:\n{text}", unit.display()));
    let after = line.rsplit(": ").next().unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn every_unit_passes_systemd_analyze_verify_without_warnings() {
    let (_dir, units) = staged_units();
    let failures: Vec<String> = units.iter().filter_map(|u| verify(u).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn verify_catches_a_bad_unit() {
    // Guards the check above: an unknown key must not slip through.
    let (dir, _) = staged_units();
    let bad = dir.path().join("bad.service");
    let text = unit_text("labgrader-hook.service")
        .replace("/usr/local/bin/labgrader", env!("CARGO_BIN_EXE_labgrader"))
        .replace("[Service]\n", "[Service]\nNoNewPrivilegez=yes\n");
    std::fs::write(&bad, text).unwrap();
    assert!(verify(&bad).is_err());
}

fn keys(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn value<'a>(kv: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    kv.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn units_are_notify_with_main_pid_only_and_run_as_labgrader() {
    for name in UNITS {
        let kv = keys(&unit_text(name));
        assert_eq!(value(&kv, "Type"), ["notify"], "{name}");
        assert_eq!(value(&kv, "NotifyAccess"), ["main"], "{name}");
        assert_eq!(value(&kv, "User"), ["labgrader"], "{name}");
        assert_eq!(value(&kv, "NoNewPrivileges"), ["yes"], "{name}");
        assert_eq!(value(&kv, "ProtectSystem"), ["strict"], "{name}");
        assert_eq!(
            value(&kv, "ReadWritePaths"),
            ["/var/lib/labgrader"],
            "{name}"
        );
        assert_eq!(value(&kv, "CapabilityBoundingSet"), [""], "{name}");
        assert_eq!(value(&kv, "WatchdogSec").len(), 1, "{name}");
    }
}

#[test]
fn hook_unit_has_no_docker_access_and_the_tightest_filters() {
    let kv = keys(&unit_text("labgrader-hook.service"));
    assert!(value(&kv, "SupplementaryGroups").is_empty());
    assert_eq!(value(&kv, "MemoryDenyWriteExecute"), ["yes"]);
    assert!(value(&kv, "SystemCallFilter").contains(&"@system-service"));
    assert_eq!(value(&kv, "PrivateDevices"), ["yes"]);
    assert!(value(&kv, "ExecStart")[0].ends_with(" hook"));
    let grader = keys(&unit_text("labgrader-grader.service"));
    assert_eq!(value(&grader, "SupplementaryGroups"), ["docker"]);
    assert!(value(&grader, "ExecStart")[0].ends_with(" grader"));
}

#[test]
fn exposure_stays_low() {
    // Hardening regression guard; figures on systemd 252: hook 1.1,
    // grader 1.5, serve 1.5, grader with the native drop-in 5.3 (4.9 before
    // it let the setuid newuidmap/newgidmap work).
    let (_dir, units) = staged_units();
    for u in &units {
        let e = exposure(u);
        let name = u.file_name().unwrap().to_str().unwrap();
        eprintln!("{name}: exposure {e}");
        let max = match name {
            "labgrader-hook.service" => 1.5,
            "labgrader-grader-native.service" => 5.5,
            _ => 2.0,
        };
        assert!(e <= max, "{name}: exposure {e} > {max}");
    }
}

#[test]
fn example_config_loads_and_points_the_spool_where_the_units_write() {
    let text = std::fs::read_to_string(repo_root().join("systemd/labgrader.toml.example")).unwrap();
    // No secret in a file the daemon's user could read: the units hand
    // them over as credentials.
    assert!(!text.contains("_file = \"/"), "{text}");
    let cfg = labgrader::config::Config::from_toml(&text, None).unwrap();
    assert_eq!(cfg.spool.dir, Path::new("/var/lib/labgrader"));
    for name in UNITS {
        let kv = keys(&unit_text(name));
        assert_eq!(
            value(&kv, "ReadWritePaths"),
            [cfg.spool.dir.to_str().unwrap()]
        );
        assert!(value(&kv, "ExecStart")[0].contains("--config /etc/labgrader/labgrader.toml"));
    }
}

#[test]
fn each_unit_loads_exactly_the_secrets_it_needs_from_the_root_only_store() {
    for (name, want) in [
        (
            "labgrader-hook.service",
            &[
                "webhook-token",
                "gitlab-token",
                "web-secret",
                "web-staff-token",
            ][..],
        ),
        (
            "labgrader-grader.service",
            &[
                "gitlab-token",
                "callback-secret",
                "smtp-password",
                "slurm-token",
                "web-secret",
            ][..],
        ),
        (
            "labgrader.service",
            &[
                "webhook-token",
                "gitlab-token",
                "callback-secret",
                "smtp-password",
                "slurm-token",
                "web-secret",
                "web-staff-token",
            ][..],
        ),
    ] {
        let kv = keys(&unit_text(name));
        let loaded: Vec<String> = value(&kv, "LoadCredential")
            .iter()
            .map(|v| {
                let (id, path) = v.split_once(':').unwrap();
                assert_eq!(path, format!("/etc/labgrader/credentials/{id}"), "{name}");
                id.to_string()
            })
            .collect();
        assert_eq!(loaded, want, "{name}");
        assert_eq!(
            value(&kv, "InaccessiblePaths"),
            ["-/etc/labgrader/credentials"],
            "{name}"
        );
    }
}
