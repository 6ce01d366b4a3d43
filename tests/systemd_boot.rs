//! The units under a real systemd: a throwaway container (systemd-nspawn,
//! the host's /usr read-only, a copy of its /etc, its own network) boots
//! systemd as PID 1, which starts each shipped unit with its whole sandbox.
//! A unit counts as started only when the daemon sent `READY=1` from inside
//! that sandbox (`Type=notify`), so this proves the hardening lets
//! labgrader run and notify. It also shows what a host without a `docker`
//! group needs: the grader unit cannot start there, the `no-docker.conf`
//! drop-in that scripts/install adds fixes that, and the native-runner
//! drop-in starts too.
//!
//! Needs root and `systemd-nspawn` (Debian's `systemd-container`; systemd
//! need not be PID 1 on the host). As another user it is skipped with a
//! message; without systemd-nspawn it fails. Nothing on the host changes:
//! the container's root is a temp dir.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::files::repo_root;

const CHECK: &str = r#"#!/bin/bash
exec >/lgcheck/out.txt 2>&1
while read -r u wait; do
  echo "=== $u"
  systemctl start "$u"; echo "start rc=$?"
  sleep "$wait"
  echo "after ${wait}s: $(systemctl is-active "$u")"
  systemctl stop "$u"
  echo "stopped: $(systemctl show -p Result --value "$u")"
  journalctl -u "$u" --no-pager -o cat
  echo "--- end $u"
done </lgcheck/units
echo DONE
systemctl poweroff
"#;

const CHECK_UNIT: &str = "[Unit]\nDescription=labgrader unit check\nAfter=basic.target\n\
                          [Service]\nType=oneshot\nExecStart=/lgcheck/check.sh\n";

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("systemd").join(name))
        .unwrap()
        .replace("/usr/local/bin/labgrader", "/lgbin/labgrader")
}

fn dropin(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("systemd").join(name)).unwrap()
}

/// Boot a container in which `units` (name, text, drop-ins) are installed,
/// start each, and return the check's report per unit.
fn boot(units: &[(&str, String, Vec<String>)], docker_group: bool) -> Vec<(String, String)> {
    boot_with(units, docker_group, &[])
}

/// [`boot`], with extra files (path below the container's root, content).
fn boot_with(
    units: &[(&str, String, Vec<String>)],
    docker_group: bool,
    files: &[(&str, String)],
) -> Vec<(String, String)> {
    let root = tempfile::Builder::new()
        .prefix("labgrader-boot-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let r = root.path();
    for d in [
        "usr/lib", "dev", "proc", "sys", "run", "tmp", "var", "home", "root", "lgcheck",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    // nspawn looks for os-release before it binds /usr over this.
    std::fs::copy("/usr/lib/os-release", r.join("usr/lib/os-release")).unwrap();
    for l in ["bin", "sbin", "lib", "lib64"] {
        let host = Path::new("/").join(l);
        if std::fs::read_link(&host).is_ok() {
            std::os::unix::fs::symlink(format!("usr/{l}"), r.join(l)).unwrap();
        }
    }
    let status = Command::new("cp")
        .args(["-a", "/etc"])
        .arg(r.join("etc"))
        .status()
        .unwrap();
    assert!(status.success(), "cp -a /etc");
    let etc = r.join("etc");
    std::fs::write(
        etc.join("machine-id"),
        format!("{}\n", &hex::encode(rand::random::<[u8; 16]>())),
    )
    .unwrap();

    // The labgrader user and group, the docker group as asked.
    let mut passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
    let mut group = std::fs::read_to_string(etc.join("group")).unwrap();
    group = group
        .lines()
        .filter(|l| !l.starts_with("docker:"))
        .map(|l| format!("{l}\n"))
        .collect();
    if docker_group {
        group.push_str("docker:x:61999:\n");
    }
    let (_uid, gid) = match passwd.lines().find(|l| l.starts_with("labgrader:")) {
        Some(l) => {
            let f: Vec<&str> = l.split(':').collect();
            (f[2].parse::<u32>().unwrap(), f[3].parse::<u32>().unwrap())
        }
        None => {
            passwd.push_str("labgrader:x:61998:61998::/var/lib/labgrader:/usr/sbin/nologin\n");
            (61998, 61998)
        }
    };
    if !group.lines().any(|l| l.starts_with("labgrader:")) {
        group.push_str(&format!("labgrader:x:{gid}:\n"));
    }
    std::fs::write(etc.join("passwd"), passwd).unwrap();
    std::fs::write(etc.join("group"), group).unwrap();

    // Config and secrets as scripts/install lays them out.
    let cfgdir = etc.join("labgrader");
    let _ = std::fs::remove_dir_all(&cfgdir);
    std::fs::create_dir_all(&cfgdir).unwrap();
    // The none runner: the container has neither Docker nor, necessarily,
    // user namespaces, and the grader must stay up to be watched.
    let config = std::fs::read_to_string(repo_root().join("systemd/labgrader.toml.example"))
        .unwrap()
        .replace("runner = \"auto\"", "runner = \"none\"");
    assert!(config.contains("runner = \"none\""));
    std::fs::write(cfgdir.join("labgrader.toml"), config).unwrap();
    // Secrets root's alone; the units load them with LoadCredential=.
    let creds = cfgdir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for (f, text) in [
        ("webhook-token", "boot-test-token\n"),
        ("gitlab-token", ""),
        ("callback-secret", ""),
        ("smtp-password", ""),
        ("slurm-token", ""),
        ("web-secret", ""),
        ("web-staff-token", ""),
    ] {
        std::fs::write(creds.join(f), text).unwrap();
        std::fs::set_permissions(
            creds.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    std::os::unix::fs::chown(&cfgdir, Some(0), Some(gid)).unwrap();
    std::fs::set_permissions(&cfgdir, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();

    for (path, text) in files {
        std::fs::write(r.join(path), text).unwrap();
    }

    // The units under test and the check that starts them.
    let sysdir = etc.join("systemd/system");
    for entry in std::fs::read_dir(&sysdir).unwrap() {
        let e = entry.unwrap();
        if e.file_name().to_string_lossy().starts_with("labgrader") {
            let _ = std::fs::remove_dir_all(e.path());
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut names = String::new();
    for (name, text, dropins) in units {
        std::fs::write(sysdir.join(name), text).unwrap();
        if !dropins.is_empty() {
            let d = sysdir.join(format!("{name}.d"));
            std::fs::create_dir_all(&d).unwrap();
            for (i, t) in dropins.iter().enumerate() {
                std::fs::write(d.join(format!("{i}.conf")), t).unwrap();
            }
        }
        // A unit with a short watchdog is watched long enough to need pings.
        let wait = if dropins.iter().any(|d| d.contains("WatchdogSec=")) {
            6
        } else {
            1
        };
        names.push_str(&format!("{name} {wait}\n"));
    }
    std::fs::write(sysdir.join("lg-check.service"), CHECK_UNIT).unwrap();
    std::fs::write(r.join("lgcheck/units"), names).unwrap();
    std::fs::write(r.join("lgcheck/check.sh"), CHECK).unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(r.join("lgcheck/check.sh"))
        .status()
        .unwrap();

    let machine = format!(
        "lgboot{}",
        std::process::id() as u64 * 10 + docker_group as u64
    );
    let mut child = Command::new("systemd-nspawn")
        .args([
            "-q",
            "--keep-unit",
            "--register=no",
            "--link-journal=no",
            "--private-network",
        ])
        .arg("-D")
        .arg(r)
        .arg("-M")
        .arg(&machine)
        .arg("--bind-ro=/usr")
        .arg(format!(
            "--bind-ro={}:/lgbin/labgrader",
            env!("CARGO_BIN_EXE_labgrader")
        ))
        .args(["--boot", "--", "systemd.wants=lg-check.service"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-nspawn ({e}); install Debian's `systemd-container`")
        });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("the container did not power off within 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = std::fs::read_to_string(r.join("lgcheck/out.txt")).unwrap_or_else(|_| {
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("the check never ran in the container:\n{err}")
    });
    assert!(report.contains("DONE"), "{report}");
    if std::env::var_os("LABGRADER_TEST_VERBOSE").is_some() {
        eprintln!("{report}");
    }
    report
        .split("=== ")
        .skip(1)
        .map(|s| {
            let (name, rest) = s.split_once('\n').unwrap();
            (name.to_string(), rest.to_string())
        })
        .collect()
}

fn may_run() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("boot test skipped: systemd-nspawn needs root");
        return false;
    }
    true
}

#[track_caller]
fn assert_started(report: &[(String, String)], unit: &str) {
    let (_, text) = report
        .iter()
        .find(|(n, _)| n == unit)
        .unwrap_or_else(|| panic!("no report for {unit}"));
    assert!(text.contains("start rc=0"), "{unit} did not start:\n{text}");
    assert!(text.contains("Started "), "{unit}: no READY=1:\n{text}");
    assert!(
        !text.contains("status=2"),
        "{unit}: sandbox setup failed:\n{text}"
    );
}

#[test]
fn units_start_and_notify_under_real_systemd() {
    if !may_run() {
        return;
    }
    let native = {
        let name = "labgrader-grader-native.service";
        (
            name,
            unit_text("labgrader-grader.service"),
            vec![dropin("labgrader-grader-native.conf")],
        )
    };
    let units = vec![
        (
            "labgrader-hook.service",
            unit_text("labgrader-hook.service"),
            vec![],
        ),
        (
            "labgrader-grader.service",
            unit_text("labgrader-grader.service"),
            vec![],
        ),
        ("labgrader.service", unit_text("labgrader.service"), vec![]),
        native,
    ];
    let report = boot(&units, true);
    for (name, _, _) in &units {
        assert_started(&report, name);
    }
    // The webhook token reached the hook through its credential: no
    // "no token" warning, though the daemon's user cannot read the file.
    for unit in ["labgrader-hook.service", "labgrader.service"] {
        let (_, text) = report.iter().find(|(n, _)| n == unit).unwrap();
        assert!(!text.contains("NO WEBHOOK TOKEN"), "{unit}:\n{text}");
    }
}

#[test]
fn without_a_docker_group_the_grader_needs_the_no_docker_dropin() {
    if !may_run() {
        return;
    }
    let units = vec![
        (
            "labgrader-grader.service",
            unit_text("labgrader-grader.service"),
            vec![],
        ),
        (
            "labgrader-grader-nodocker.service",
            unit_text("labgrader-grader.service"),
            vec![dropin("labgrader-no-docker.conf")],
        ),
        (
            "labgrader-grader-native.service",
            unit_text("labgrader-grader.service"),
            vec![
                dropin("labgrader-no-docker.conf"),
                dropin("labgrader-grader-native.conf"),
            ],
        ),
    ];
    let report = boot(&units, false);
    let plain = &report
        .iter()
        .find(|(n, _)| n == "labgrader-grader.service")
        .unwrap()
        .1;
    assert!(
        !plain.contains("start rc=0"),
        "started without its group?\n{plain}"
    );
    assert!(plain.contains("GROUP"), "{plain}");
    assert_started(&report, "labgrader-grader-nodocker.service");
    assert_started(&report, "labgrader-grader-native.service");
}

/// The README's recipe for a port below 1024 works: the hook unit alone
/// cannot bind it; with the documented drop-in it can. (`PrivateUsers=no`
/// is part of the recipe: inside the unit's user namespace the capability
/// does not count for the host's network namespace.)
#[test]
fn hook_binds_a_low_port_only_with_the_documented_dropin() {
    if !may_run() {
        return;
    }
    let config = std::fs::read_to_string(repo_root().join("systemd/labgrader.toml.example"))
        .unwrap()
        .replace("listen = \"127.0.0.1:8088\"", "listen = \"127.0.0.1:443\"");
    assert!(config.contains("127.0.0.1:443"));
    let hook = unit_text("labgrader-hook.service").replace(
        "/etc/labgrader/labgrader.toml",
        "/etc/labgrader/low-port.toml",
    );
    let dropin = "[Service]\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n\
                  CapabilityBoundingSet=CAP_NET_BIND_SERVICE\nPrivateUsers=no\n"
        .to_string();
    let units = vec![
        ("labgrader-hook.service", hook.clone(), vec![]),
        ("labgrader-hook-lowport.service", hook, vec![dropin]),
    ];
    let report = boot_with(&units, true, &[("etc/labgrader/low-port.toml", config)]);
    let plain = &report[0].1;
    assert!(
        !plain.contains("start rc=0"),
        "bound 443 without the capability?\n{plain}"
    );
    assert!(plain.contains("cannot listen on 127.0.0.1:443"), "{plain}");
    assert_started(&report, "labgrader-hook-lowport.service");
}

/// A daemon that stays up under its unit keeps systemd's watchdog fed
/// (`WATCHDOG=1` at half of `WatchdogSec`) and stops cleanly on SIGTERM.
#[test]
fn grader_feeds_the_watchdog_and_stops_cleanly_under_systemd() {
    if !may_run() {
        return;
    }
    let watchdog = "[Service]\nWatchdogSec=2s\n".to_string();
    let units = vec![(
        "labgrader-grader.service",
        unit_text("labgrader-grader.service"),
        vec![watchdog],
    )];
    let report = boot(&units, true);
    assert_started(&report, "labgrader-grader.service");
    let text = &report[0].1;
    assert!(
        text.contains("after 6s: active"),
        "watchdog fired or daemon died:\n{text}"
    );
    assert!(text.contains("stopped: success"), "{text}");
    assert!(!text.contains("Watchdog timeout"), "{text}");
    // The journal gets plain text, not terminal colour codes.
    assert!(text.contains("grader started"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in the journal:\n{text}"
    );
}
