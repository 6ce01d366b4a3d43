//! A Docker engine restarted under a running job, without touching the
//! shared engine: the test starts its own private `dockerd` (own socket,
//! data and exec roots; no bridge, no iptables), loads the busybox test
//! image into it, runs the grader against it, and restarts it while a job's
//! container runs. The job must be retried as soon as the engine answers
//! again (its infra backoff is 10 minutes, so only the probe can release
//! it), graded once, and leave no container behind. Needs root and the
//! busybox image on the shared engine; FAILS without them unless
//! `LABGRADER_SKIP_DOCKER=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::services::{BUSYBOX_IMAGE, docker_skipped};
use common::wait::wait_blocking;
use common::world::Fixture;

const WAIT: Duration = Duration::from_secs(150);

/// A private dockerd under `root` (our child while it runs).
struct Engine {
    root: PathBuf,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl Engine {
    fn sock(&self) -> PathBuf {
        self.root.join("d.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.sock().display())
    }

    fn start(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("dockerd.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .args(["--host", &self.host()])
            .arg("--data-root")
            .arg(self.root.join("data"))
            .arg("--exec-root")
            .arg(self.root.join("exec"))
            .arg("--pidfile")
            .arg(self.root.join("d.pid"))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        *self.child.lock().unwrap() = Some(child);
        wait_blocking("the private engine answers", WAIT, || {
            self.docker(&["version"]).0
        });
    }

    fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_blocking("the private engine stops", WAIT, || {
            child.try_wait().unwrap().is_some()
        });
    }

    fn docker(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("docker")
            .args(["-H", &self.host()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    fn containers_of(&self, job: &str) -> Vec<String> {
        let filter = format!("label=labgrader.job={job}");
        let (_, out) = self.docker(&["ps", "-aq", "--filter", &filter]);
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn load_image(engine: &Engine, dir: &Path) {
    let tar = dir.join("image.tar");
    let ok = Command::new("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .arg(BUSYBOX_IMAGE)
        .status()
        .unwrap();
    assert!(ok.success(), "docker save {BUSYBOX_IMAGE}");
    let (ok, _) = engine.docker(&["load", "-q", "-i", &tar.display().to_string()]);
    assert!(ok, "docker load into the private engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restart_under_a_job_retries_it_when_the_engine_answers_and_leaves_nothing() {
    if docker_skipped() {
        return;
    }
    let f = Fixture::new();
    // Short: a unix socket path has a length limit.
    let root = tempfile::Builder::new()
        .prefix("lge")
        .tempdir_in("/tmp")
        .unwrap();
    let engine = Engine {
        root: root.path().to_path_buf(),
        child: Default::default(),
    };
    engine.start();
    load_image(&engine, f.tmp.path());

    f.tests_repo(
        "lab1",
        "#!/bin/sh\nsleep 4\nprintf '<summary>\\ngrade_total = 7\\n</summary>\\n'\n",
    );
    let p = "course/s01/lab1";
    let sha = f.push(p, |_| {});
    let cfg = f.config(&format!(
        "runner = \"docker\"\ninfra_backoff = \"10m\"\ntimeout = \"60s\"\n\
         [docker]\nhost = \"{}\"\nimage = \"{BUSYBOX_IMAGE}\"\n",
        engine.host()
    ));
    let d = f.start(cfg);
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    wait_blocking("the job's container runs", WAIT, || {
        let filter = format!("label=labgrader.job={}", ev.job_id);
        let (_, out) = engine.docker(&["ps", "-q", "--filter", &filter]);
        !out.is_empty()
    });
    // The restart, while test_all sleeps.
    engine.stop();
    engine.start();

    let r = f.wait_done(&ev.job_id, WAIT).await;
    d.stop().await;
    assert_eq!(r.status, labgrader::result::Status::Graded, "{r:?}");
    assert_eq!(r.grade_total, Some(7.0));
    assert_eq!(
        r.extra.get("infra_attempts"),
        Some(&serde_json::json!(1)),
        "{r:?}"
    );
    assert!(
        engine.containers_of(&ev.job_id).is_empty(),
        "no container left behind: {:?}",
        engine.containers_of(&ev.job_id)
    );
}
