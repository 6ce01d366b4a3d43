//! `labgrader serve` with the default `[email] url` on a host without
//! `/usr/sbin/sendmail`: one line at start says email is off, and a
//! graded job leaves no email record anywhere (no day of retries to a
//! port nobody listens on). On a host with sendmail the default is the
//! sendmail transport, checked here too.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon;
use common::host::free_port;
use common::world::{Fixture, simple_test_all};
use labgrader::spool::State;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_default_email_and_no_sendmail_says_so_once_and_queues_no_email() {
    let has_mta = Path::new(labgrader::config::SENDMAIL).exists();
    let f = Fixture::new();
    f.tests_repo("lab33", &simple_test_all("7"));
    let p = "course/eve/lab33";
    let sha = f.push(p, |w| std::fs::write(w.join("x"), "1").unwrap());
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = f.write_config(&format!("[server]\nlisten = \"{listen}\"\n"));
    let url = labgrader::config::Config::load(Some(&cfg))
        .unwrap()
        .email
        .url;
    assert_eq!(url, if has_mta { "sendmail" } else { "" });
    if has_mta {
        return;
    }
    let ev = f.event(p, &sha);
    f.enqueue(&ev);
    let log = f.tmp.path().join("serve.log");
    let mut serve = daemon::binary("serve", &cfg, &log).spawn().unwrap();
    daemon::wait_healthy(&format!("http://{listen}"), &mut serve, WAIT, &log).await;
    let result = f.wait_done(&ev.job_id, WAIT).await;
    assert_eq!(result.grade_total, Some(7.0));
    tokio::task::spawn_blocking(move || daemon::stop(serve))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("email is off").count(), 1, "{text}");
    let spool = f.spool();
    for state in [State::Outbox, State::Dead] {
        let names = spool.list(state).unwrap();
        assert!(
            names.iter().all(|n| !n.contains("email")),
            "{state:?}: {names:?}"
        );
    }
    let sent = f.spool_dir.join("sent");
    let receipts: Vec<String> = std::fs::read_dir(&sent)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        receipts.iter().all(|n| !n.contains("email")),
        "{receipts:?}"
    );
}
