//! Crash safety of intake, with the real binary: `labgrader hook` killed
//! with SIGKILL while many concurrent deliveries are in flight. After a
//! restart every delivery answered 202 has exactly one complete event file
//! in incoming/, tmp/ leftovers of the dead process are swept, and
//! re-sending every delivery (answered or not) yields one job per push.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::host::free_port;
use common::{daemon::*, gitlab::*, world::*};
use hyper::Method;
use labgrader::event::Event;
use labgrader::httpc::HttpClient;

const CLIENTS: usize = 64;

fn spawn_hook(world: &World, config: &std::path::Path, log: &str) -> Child {
    binary("hook", config, &world.dir.path().join(log))
        .env("LABGRADER_WEBHOOK_TOKEN", TOKEN)
        .spawn()
        .expect("labgrader binary runs")
}

fn delivery(n: u32) -> (Vec<(String, String)>, Vec<u8>) {
    (
        push_headers("Push Hook", &format!("crash-{n}")),
        push_body(
            "alice/lab1",
            &format!("refs/heads/b{n}"),
            &sha(0),
            &sha(n + 1),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_accepted_event() {
    let world = World::new();
    world.bare_repo("root/lab1-test");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = world.dir.path().join("labgrader.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[spool]\ndir = \"{}\"\n[gitlab]\nclone_url = \"file://{}/{{path}}.git\"\n",
            world.spool_dir().display(),
            world.repos().display()
        ),
    )
    .unwrap();
    let http = HttpClient::new();
    let mut child = spawn_hook(&world, &config, "hook1.log");
    let log = world.dir.path().join("hook1.log");
    wait_healthy(&base, &mut child, Duration::from_secs(20), &log).await;

    // Load: CLIENTS tasks, each sending distinct pushes until the server dies.
    let accepted: Arc<Mutex<BTreeMap<u32, String>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, accepted, next) = (
            http.clone(),
            format!("{base}/hooks/gitlab"),
            accepted.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (h, b) = delivery(n);
                let h: Vec<(&str, &str)> =
                    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                match http
                    .request(Method::POST, &url, &h, Some(b), Duration::from_secs(10))
                    .await
                {
                    Ok(r) if r.status == 202 => {
                        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                        accepted
                            .lock()
                            .unwrap()
                            .insert(n, v["job_id"].as_str().unwrap().to_string());
                    }
                    Ok(r) => panic!(
                        "unexpected answer {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    // Kill once the load is well under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead_pid = child.id();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let sent = next.load(std::sync::atomic::Ordering::SeqCst);
    assert!(accepted.len() >= 300, "load too small: {}", accepted.len());
    eprintln!(
        "{} of {sent} deliveries answered 202 before SIGKILL",
        accepted.len()
    );
    // What a writer killed mid-write leaves; plant one for sure.
    let tmp = world.spool_dir().join("tmp");
    std::fs::write(
        tmp.join(format!(
            "X.json.{dead_pid}.{}",
            labgrader::spool::new_job_id()
        )),
        b"{\"half",
    )
    .unwrap();

    // Connections pooled to the dead process are useless; start afresh.
    let http = HttpClient::new();
    let mut child = spawn_hook(&world, &config, "hook2.log");
    let log = world.dir.path().join("hook2.log");
    wait_healthy(&base, &mut child, Duration::from_secs(20), &log).await;
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "tmp/ swept at start"
    );

    // Every event file is complete JSON; at most one per delivery.
    let incoming = world.spool_dir().join("incoming");
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in std::fs::read_dir(&incoming).unwrap() {
        let p = e.unwrap().path();
        let ev = Event::from_bytes(&std::fs::read(&p).unwrap())
            .unwrap_or_else(|e| panic!("{} is truncated or corrupt: {e}", p.display()));
        assert_eq!(p.file_name().unwrap().to_str().unwrap(), ev.file_name());
        by_key
            .entry(ev.delivery_key.clone().unwrap())
            .or_default()
            .push(ev.job_id);
    }
    for (n, job) in &accepted {
        let key = format!("crash-{n}");
        assert_eq!(
            by_key.get(&key),
            Some(&vec![job.clone()]),
            "delivery {key} was answered 202 with {job}: exactly that event file must exist"
        );
    }
    assert!(by_key.values().all(|v| v.len() == 1));

    // Staff re-send everything: answered ones dedupe to their job, the
    // rest are stored now; one event per push in the end.
    let mut jobs = BTreeSet::new();
    for n in 0..sent {
        let (h, b) = delivery(n);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = http
            .request(
                Method::POST,
                &format!("{base}/hooks/gitlab"),
                &h,
                Some(b),
                // A hang guard only: this VM's disk can stall for seconds.
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|e| panic!("re-send of delivery {n}: {e}"));
        assert_eq!(r.status, 202);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let job = v["job_id"].as_str().unwrap().to_string();
        if let Some(old) = accepted.get(&n) {
            assert_eq!(&job, old, "re-send of an accepted delivery is the same job");
        }
        jobs.insert(job);
    }
    assert_eq!(jobs.len(), sent as usize);
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), sent as usize);
    child.kill().unwrap();
    child.wait().unwrap();
}
