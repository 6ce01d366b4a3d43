//! The delivery worker: sends what waits in the outbox until shutdown.
//!
//! Owns the run loop (a directory watcher plus a safety-net rescan, at most
//! `deliver.concurrency` records in flight, one commit-status stage of a
//! job at a time so they reach GitLab in order), one attempt of one record
//! (read it, skip it when a receipt or a later status stage exists, hand it
//! to its destination's sender) and what the attempt comes to: a receipt
//! (finish), a later try (backoff from [`crate::retry::backoff`], at most
//! `deliver.max_attempts` within `deliver.retry_for`, a longer
//! `Retry-After` honoured) or `dead/` with the reason (bury). It retries
//! from disk, never from memory: the attempt count and next try live in
//! the record, so a restart resumes where the last process stopped; it
//! keeps only names and due times in memory. It never renders text (the
//! record holds it), never enqueues, and never writes a secret to disk:
//! those are read from the config at send time.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::Attempt;
use super::email::Mailer;
use super::error::DeliverError;
use super::outbox::{
    prune_receipts, read_record, receipt_path, remove_record, sent_dir, superseded_by,
    write_receipt,
};
use super::record::{Destination, Payload, RECORD_SCHEMA, Receipt, Record, parse_file_name};
use super::{callback, email, status};
use crate::config::Config;
use crate::gitlab::GitlabApi;
use crate::httpc::HttpClient;
use crate::spool::{Spool, State};

/// Safety-net rescan of the outbox besides inotify.
const POLL: Duration = Duration::from_secs(2);
/// On shutdown, deliveries in flight get this long before they are dropped
/// (their records are unchanged on disk, so they are tried again later).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the senders share: config, clients, transports.
struct Ctx {
    cfg: Arc<Config>,
    http: HttpClient,
    gitlab: Option<GitlabApi>,
    mailer: Option<Mailer>,
}

/// Deliver from `spool/outbox/` until `shutdown` fires. Resumes whatever a
/// previous process left there.
pub async fn run(
    cfg: Arc<Config>,
    spool: Arc<Spool>,
    shutdown: CancellationToken,
) -> Result<(), DeliverError> {
    let sent = sent_dir(&spool);
    fs::create_dir_all(&sent).map_err(|source| DeliverError::SentDir {
        path: sent.clone(),
        source,
    })?;
    let http = HttpClient::new();
    let ctx = Arc::new(Ctx {
        gitlab: GitlabApi::from_config(&cfg, http.clone()),
        mailer: Mailer::from_config(&cfg)?,
        http,
        cfg: cfg.clone(),
    });
    if !cfg.callback.url.is_empty() && cfg.secrets.callback_secret.is_none() {
        tracing::warn!(
            "callback.url is set but no callback secret (callback.secret_file or \
             LABGRADER_CALLBACK_SECRET): callbacks are sent without a signature"
        );
    }

    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    let _watcher = crate::watch::watch_dir(&spool.dir(State::Outbox), "the outbox", move || {
        let _ = wake_tx.try_send(());
    });

    let mut due: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut tasks: JoinSet<Option<DateTime<Utc>>> = JoinSet::new();
    let limit = cfg.deliver.concurrency.max(1);
    let mut rescan_needed = true;
    let mut last_scan = std::time::Instant::now();
    let mut last_prune: Option<std::time::Instant> = None;
    tracing::info!(outbox = %spool.dir(State::Outbox).display(), concurrency = limit, "delivery worker started");

    loop {
        if last_prune.is_none_or(|t| t.elapsed() >= crate::spool::HOUSEKEEPING_EVERY) {
            last_prune = Some(std::time::Instant::now());
            // Off the delivery loop: a first pass over a large sent/ must
            // not hold deliveries back.
            let (spool, window) = (spool.clone(), cfg.spool.dedup_window.get());
            tokio::task::spawn_blocking(move || match prune_receipts(&spool, window) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    ?window,
                    "pruned delivery receipts past the window"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot prune spool/sent/"),
            });
        }
        if rescan_needed || last_scan.elapsed() >= POLL {
            rescan(&spool, &mut due).await;
            alerts_tick(&cfg, &spool).await;
            rescan_needed = false;
            last_scan = std::time::Instant::now();
        }
        let now = Utc::now();
        let mut running: Vec<String> = in_flight.values().cloned().collect();
        let mut ready: Vec<(DateTime<Utc>, String)> = due
            .iter()
            .filter(|(n, t)| **t <= now && !running.contains(n))
            .map(|(n, t)| (*t, n.clone()))
            .collect();
        ready.sort();
        let mut started = Vec::new();
        for (_, name) in ready {
            if running.len() >= limit {
                break;
            }
            // One commit-status stage of a job at a time, so they reach
            // GitLab in order.
            if stage_running(&name, &running) {
                continue;
            }
            running.push(name.clone());
            started.push(name);
        }
        for name in started {
            let handle = tasks.spawn(attempt_one(ctx.clone(), spool.clone(), name.clone()));
            in_flight.insert(handle.id(), name);
        }

        // Records due now but not started wait for a running one to finish
        // (capacity, or the order of a job's commit statuses); a finished
        // task wakes this loop, so only future due times set the timer.
        let now = Utc::now();
        let wait = due
            .values()
            .filter(|t| **t > now)
            .min()
            .map(|t| (*t - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(POLL)
            .min(POLL);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (id, next) = match joined {
                    Ok((id, next)) => (id, next),
                    Err(e) => {
                        tracing::error!(error = %e, "delivery task failed");
                        // Tried again later from what is on disk; never in a hot loop.
                        (e.id(), Some(Utc::now() + cfg.deliver.backoff_max.get()))
                    }
                };
                if let Some(name) = in_flight.remove(&id) {
                    match next {
                        Some(t) => { due.insert(name, t); }
                        None => { due.remove(&name); }
                    }
                }
            }
            _ = wake_rx.recv() => { rescan_needed = true; }
            _ = tokio::time::sleep(wait) => {}
        }
    }

    tracing::info!(
        in_flight = in_flight.len(),
        "delivery worker stopping; deliveries in flight get {} s",
        SHUTDOWN_GRACE.as_secs()
    );
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// Queue the staff alerts that are due (see [`super::alerts::tick`]).
async fn alerts_tick(cfg: &Arc<Config>, spool: &Arc<Spool>) {
    if !cfg.alerts.enabled() {
        return;
    }
    let (c, s) = (cfg.clone(), spool.clone());
    match tokio::task::spawn_blocking(move || super::alerts::tick(&c, &s, Utc::now())).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot queue staff alerts"),
        Err(e) => tracing::error!(error = %e, "staff alert task failed"),
    }
}

/// True when `name` is a staged delivery (commit status, callback) and
/// another of the same job and stages is among `running`: a job's stages
/// go out one at a time, in order.
fn stage_running(name: &str, running: &[String]) -> bool {
    let Some((job, d)) = parse_file_name(name) else {
        return false;
    };
    let Some((stages, _)) = d.stage() else {
        return false;
    };
    running.iter().any(|other| {
        parse_file_name(other)
            .is_some_and(|(j, od)| j == job && od.stage().is_some_and(|(s, _)| s == stages))
    })
}

/// Bring the in-memory index (name → next try) in line with the outbox:
/// learn new records (reading only those), forget vanished ones. The disk
/// work runs on the blocking pool.
async fn rescan(spool: &Arc<Spool>, due: &mut HashMap<String, DateTime<Utc>>) {
    let known: HashSet<String> = due.keys().cloned().collect();
    let s = spool.clone();
    let scanned = tokio::task::spawn_blocking(move || scan(&s, &known)).await;
    let Ok(Some((present, new))) = scanned else {
        return;
    };
    due.retain(|n, _| present.contains(n));
    due.extend(new);
}

/// Names now in the outbox, and the next try of those not in `known`.
type Scan = (HashSet<String>, Vec<(String, DateTime<Utc>)>);

fn scan(spool: &Spool, known: &HashSet<String>) -> Option<Scan> {
    let names = match spool.list(State::Outbox) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the outbox");
            return None;
        }
    };
    let mut new = Vec::new();
    for name in &names {
        if known.contains(name) {
            continue;
        }
        match read_record(spool, name) {
            Ok(Some(rec)) => new.push((name.clone(), rec.next_try_at)),
            Ok(None) => {}
            Err(e) => tracing::error!(name, error = %e, "cannot read outbox record"),
        }
    }
    Some((names.into_iter().collect(), new))
}

/// What [`prepare`] found.
enum Prepared {
    /// Nothing to send now; next due time (or `None`: left the outbox).
    Done(Option<DateTime<Utc>>),
    /// Due: send it.
    Ready(Box<Record>),
}

/// Try one record once and record the outcome on disk. Returns when it is
/// next due, or `None` when it left the outbox (delivered, dead, gone).
/// Disk work runs on the blocking pool; only the send is async.
async fn attempt_one(ctx: Arc<Ctx>, spool: Arc<Spool>, name: String) -> Option<DateTime<Utc>> {
    let retry_soon = Utc::now() + ctx.cfg.deliver.backoff_min.get();
    let (s, n) = (spool.clone(), name.clone());
    let prepared = tokio::task::spawn_blocking(move || prepare(&s, &n))
        .await
        .unwrap_or(Prepared::Done(Some(retry_soon)));
    let mut rec = match prepared {
        Prepared::Done(next) => return next,
        Prepared::Ready(r) => *r,
    };
    let now = Utc::now();
    rec.first_try_at.get_or_insert(now);
    rec.last_try_at = Some(now);
    rec.attempts += 1;
    let started = std::time::Instant::now();
    let outcome = match &rec.payload {
        Payload::Callback(p) => callback::send(&ctx.cfg, &ctx.http, &rec, p).await,
        Payload::Email(p) => {
            // The sender notes who has their copy, so a retry skips them.
            let mut p = p.clone();
            let outcome = email::send(
                &ctx.cfg,
                ctx.mailer.as_ref(),
                ctx.gitlab.as_ref(),
                &rec,
                &mut p,
            )
            .await;
            rec.payload = Payload::Email(p);
            outcome
        }
        Payload::Status(p) => status::send(ctx.gitlab.as_ref(), p).await,
    };
    crate::metrics::observe(
        "labgrader_delivery_attempt_seconds",
        "Time taken by one delivery attempt.",
        &[("destination", rec.destination.as_str())],
        started.elapsed(),
    );
    let cfg = ctx.cfg.clone();
    tokio::task::spawn_blocking(move || record_outcome(&cfg, &spool, &name, rec, outcome))
        .await
        .unwrap_or(Some(retry_soon))
}

/// Read the record and decide whether it is to be sent now.
fn prepare(spool: &Spool, name: &str) -> Prepared {
    let rec = match read_record(spool, name) {
        Ok(Some(r)) => r,
        Ok(None) => return Prepared::Done(None),
        Err(e) => {
            tracing::error!(name, error = %e, "cannot read outbox record");
            return Prepared::Done(Some(Utc::now() + Duration::from_secs(1)));
        }
    };
    // A power loss that kept both names across the rename into sent/, or
    // a spool from before receipts were renamed records.
    if receipt_path(spool, name).exists() {
        remove_record(spool, name);
        return Prepared::Done(None);
    }
    if let Some(later) = superseded_by(spool, &rec) {
        let detail = format!("superseded by {later} before it was sent");
        tracing::info!(job_id = %rec.job_id, destination = %rec.destination, "{detail}");
        // Never sent, so no fsync of its receipt: should a crash lose it
        // with the record's removal, the record is found superseded again.
        return Prepared::Done(finish_delivered(spool, &rec, detail, false));
    }
    if rec.next_try_at > Utc::now() {
        return Prepared::Done(Some(rec.next_try_at));
    }
    Prepared::Ready(Box::new(rec))
}

/// Write down what one attempt came to; retries are scheduled from now
/// (after the send), `retry_for` from the first try.
fn record_outcome(
    cfg: &Config,
    spool: &Spool,
    name: &str,
    mut rec: Record,
    outcome: Attempt,
) -> Option<DateTime<Utc>> {
    let now = Utc::now();
    match outcome {
        Attempt::Delivered { detail } => {
            tracing::info!(job_id = %rec.job_id, project = %rec.project, sha = %rec.sha,
                destination = %rec.destination, attempts = rec.attempts, %detail, "delivered");
            count("delivered", rec.destination);
            finish_delivered(spool, &rec, detail, true)
        }
        Attempt::Fatal { error } => {
            rec.last_error = Some(error.clone());
            bury(cfg, spool, rec, error);
            None
        }
        Attempt::Retry { error, retry_after } => {
            let d = &cfg.deliver;
            // A receiver's `Retry-After` is honoured when it asks for longer.
            let delay = crate::retry::backoff(
                rec.attempts,
                d.backoff_min.get(),
                d.backoff_max.get(),
                rand::random::<f64>(),
            )
            .max(retry_after.unwrap_or_default());
            let first = rec.first_try_at.unwrap_or(now);
            rec.last_error = Some(error.clone());
            let deadline = first + d.retry_for.get();
            if rec.attempts >= d.max_attempts {
                let reason = format!(
                    "gave up after {} attempts (deliver.max_attempts); last error: {error}",
                    rec.attempts
                );
                bury(cfg, spool, rec, reason);
                return None;
            }
            if now >= deadline {
                let reason = format!(
                    "gave up after retrying for {} (deliver.retry_for), {} attempts; last error: {error}",
                    crate::config::Seconds(d.retry_for.get()),
                    rec.attempts
                );
                bury(cfg, spool, rec, reason);
                return None;
            }
            // A last attempt when retry_for runs out, even if the backoff
            // (or a long Retry-After) would wait past it.
            let next = (now + delay).min(deadline);
            tracing::warn!(job_id = %rec.job_id, project = %rec.project, sha = %rec.sha,
                destination = %rec.destination, attempts = rec.attempts, %error,
                retry_in_ms = (next - now).num_milliseconds(), "delivery failed; will retry");
            count("retried", rec.destination);
            rec.next_try_at = next;
            match spool.replace(State::Outbox, name, &rec.to_bytes()) {
                Ok(_) => Some(next),
                Err(e) => {
                    tracing::error!(name, error = %e, "cannot record the failed attempt");
                    Some(next)
                }
            }
        }
    }
}

fn count(outcome: &str, d: Destination) {
    crate::metrics::inc(
        "labgrader_deliveries_total",
        "Delivery attempts by destination and outcome (delivered, retried, dead).",
        &[("destination", d.as_str()), ("outcome", outcome)],
    );
}

/// Turn the record into its receipt (one rename, see [`write_receipt`]).
/// Should that fail, the record is removed all the same: it was sent.
fn finish_delivered(
    spool: &Spool,
    rec: &Record,
    detail: String,
    durable: bool,
) -> Option<DateTime<Utc>> {
    let receipt = Receipt {
        schema: RECORD_SCHEMA,
        key: rec.key.clone(),
        delivered_at: Utc::now(),
        attempts: rec.attempts,
        detail,
    };
    let name = rec.file_name();
    if let Err(e) = write_receipt(spool, &name, &receipt, durable) {
        tracing::error!(name, error = %e, "cannot write delivery receipt");
        remove_record(spool, &name);
    }
    None
}

/// Move a record to `dead/` with its reason, and alert staff (unless it
/// was an alert itself).
fn bury(cfg: &Config, spool: &Spool, mut rec: Record, reason: String) {
    if !rec.destination.is_alert() {
        crate::alert::raise(
            &cfg.alerts,
            spool.root(),
            crate::alert::Alert::new(
                crate::alert::AlertKind::DeliveryDead,
                Some(&rec.job_id),
                Some(&rec.project),
                format!("{}: {reason}", rec.destination),
            ),
        );
    }
    tracing::error!(job_id = %rec.job_id, project = %rec.project, sha = %rec.sha,
        destination = %rec.destination, attempts = rec.attempts, %reason, "delivery given up");
    count("dead", rec.destination);
    rec.dead_reason = Some(reason);
    rec.dead_at = Some(Utc::now());
    let name = rec.file_name();
    let moved = spool
        .replace(State::Outbox, &name, &rec.to_bytes())
        .and_then(|_| spool.transition(&name, State::Outbox, State::Dead));
    if let Err(e) = moved {
        tracing::error!(name, error = %e, "cannot move record to dead/");
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::record_file_name;
    use super::*;

    #[test]
    fn bad_deliver_settings_name_their_key() {
        for (toml, key) in [
            ("[deliver]\nconcurrency = 0\n", "deliver.concurrency"),
            ("[deliver]\nbackoff_min = \"0s\"\n", "deliver.backoff_min"),
            (
                "[deliver]\nbackoff_min = \"1h\"\nbackoff_max = \"1m\"\n",
                "deliver.backoff_min",
            ),
            ("[email]\nurl = \"imap://x\"\n", "email.url"),
        ] {
            let e = Config::from_toml(toml, None).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn one_status_stage_of_a_job_at_a_time() {
        let running = vec![record_file_name("J", Destination::StatusPending)];
        let running_stage = record_file_name("J", Destination::StatusRunning);
        assert!(stage_running(&running_stage, &running));
        assert!(!stage_running(
            &record_file_name("J", Destination::Email),
            &running
        ));
        assert!(!stage_running(
            &record_file_name("K", Destination::Status),
            &running
        ));
    }
}
