//! Durable delivery of results: the outbox and its worker.
//!
//! Owns `spool/outbox/` (one JSON record per job and destination, written
//! with the spool protocol), `spool/dead/` (records given up on, with the
//! reason) and `spool/sent/` (small receipts of what was delivered, so that
//! enqueuing the same delivery again is a no-op). The worker retries from
//! disk, never from memory: the attempt count and next try live in the
//! record, so a restart resumes where the last process stopped. It keeps
//! only names and due times in memory, and tries at most
//! `deliver.concurrency` records at once.
//!
//! It never grades, never touches `incoming/`, `active/` or `done/`, and
//! never writes a secret (callback secret, SMTP password, GitLab token) to
//! disk: those are read from the config at send time. Records are read back
//! from disk and are treated as untrusted: one that does not parse goes to
//! `corrupt/`.

pub mod callback;
pub mod email;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::Event;
use crate::gitlab::GitlabApi;
use crate::httpc::HttpClient;
use crate::result::JobResult;
use crate::spool::{Spool, SpoolError, State, fsync_dir};

/// Schema of outbox records and receipts.
pub const RECORD_SCHEMA: u32 = 1;
/// Directory (under the spool root) holding delivery receipts.
pub const SENT_DIR: &str = "sent";
/// Safety-net rescan of the outbox besides inotify.
const POLL: Duration = Duration::from_secs(2);
/// On shutdown, deliveries in flight get this long before they are dropped
/// (their records are unchanged on disk, so they are tried again later).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot create the receipts directory {path}: {source}")]
    SentDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Email(#[from] email::EmailError),
}

/// Where a delivery goes. The commit status has one destination per stage
/// so a late `pending` can never overwrite a `success` (see [`Destination::stage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Destination {
    Callback,
    Email,
    StatusPending,
    StatusRunning,
    Status,
}

impl Destination {
    pub const ALL: [Destination; 5] = [
        Destination::Callback,
        Destination::Email,
        Destination::StatusPending,
        Destination::StatusRunning,
        Destination::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Callback => "callback",
            Destination::Email => "email",
            Destination::StatusPending => "status-pending",
            Destination::StatusRunning => "status-running",
            Destination::Status => "status",
        }
    }

    pub fn parse(s: &str) -> Option<Destination> {
        Destination::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Order of commit-status stages; `None` for other destinations.
    fn stage(self) -> Option<u8> {
        match self {
            Destination::StatusPending => Some(0),
            Destination::StatusRunning => Some(1),
            Destination::Status => Some(2),
            _ => None,
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// GitLab's commit status states that labgrader posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Running,
    Success,
    Failed,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Running => "running",
            CommitState::Success => "success",
            CommitState::Failed => "failed",
        }
    }
}

/// What is sent, per destination. Computed once at enqueue time so every
/// attempt sends the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    Callback(callback::CallbackPayload),
    Email(email::EmailPayload),
    Status(status::StatusPayload),
}

/// One outbox record: `spool/outbox/<job>.<destination>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    /// `<job_id>:<destination>`, sent to the receiver as `Idempotency-Key`.
    pub key: String,
    pub job_id: String,
    pub destination: Destination,
    pub project: String,
    pub sha: String,
    pub created_at: DateTime<Utc>,
    /// When the first attempt was made; `retry_for` counts from here.
    pub first_try_at: Option<DateTime<Utc>>,
    pub last_try_at: Option<DateTime<Utc>>,
    pub next_try_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Set when the record is moved to `dead/`.
    #[serde(default)]
    pub dead_reason: Option<String>,
    #[serde(default)]
    pub dead_at: Option<DateTime<Utc>>,
    pub payload: Payload,
}

impl Record {
    pub fn new(
        job_id: &str,
        destination: Destination,
        project: &str,
        sha: &str,
        payload: Payload,
    ) -> Record {
        let now = Utc::now();
        Record {
            schema: RECORD_SCHEMA,
            key: idempotency_key(job_id, destination),
            job_id: job_id.to_string(),
            destination,
            project: project.to_string(),
            sha: sha.to_string(),
            created_at: now,
            first_try_at: None,
            last_try_at: None,
            next_try_at: now,
            attempts: 0,
            last_error: None,
            dead_reason: None,
            dead_at: None,
            payload,
        }
    }

    pub fn file_name(&self) -> String {
        record_file_name(&self.job_id, self.destination)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("record serializes");
        v.push(b'\n');
        v
    }

    pub fn from_bytes(b: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(b)
    }
}

/// A delivered record's receipt: `spool/sent/<job>.<destination>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub schema: u32,
    pub key: String,
    pub delivered_at: DateTime<Utc>,
    pub attempts: u32,
    /// What the receiver answered (e.g. `HTTP 200`), or why it was skipped.
    pub detail: String,
}

pub fn idempotency_key(job_id: &str, d: Destination) -> String {
    format!("{job_id}:{}", d.as_str())
}

pub fn record_file_name(job_id: &str, d: Destination) -> String {
    format!("{job_id}.{}.json", d.as_str())
}

/// `(job_id, destination)` of an outbox file name.
pub fn parse_file_name(name: &str) -> Option<(&str, Destination)> {
    let stem = name.strip_suffix(".json")?;
    let (job, dest) = stem.rsplit_once('.')?;
    Some((job, Destination::parse(dest)?))
}

/// The outcome of one attempt, decided by the destination's sender.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The receiver has it. `detail` is kept in the receipt.
    Delivered { detail: String },
    /// Worth trying again (network, 408, 429, 5xx, SMTP 4xx).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Will never succeed as it stands: dead at once.
    Fatal { error: String },
}

impl Attempt {
    pub fn retry(error: impl Into<String>) -> Attempt {
        Attempt::Retry {
            error: error.into(),
            retry_after: None,
        }
    }
    pub fn fatal(error: impl Into<String>) -> Attempt {
        Attempt::Fatal {
            error: error.into(),
        }
    }
}

/// How HTTP receivers' answers are read (callback and GitLab): 2xx done;
/// 408, 429, 5xx retry (with `Retry-After`); anything else is final.
pub fn classify_http(resp: &crate::httpc::Response, what: &str) -> Attempt {
    let status = resp.status;
    if status.is_success() {
        return Attempt::Delivered {
            detail: format!("HTTP {}", status.as_u16()),
        };
    }
    let error = format!("{what} answered {status}: {}", resp.body_snippet());
    if status.is_server_error()
        || status == hyper::StatusCode::TOO_MANY_REQUESTS
        || status == hyper::StatusCode::REQUEST_TIMEOUT
    {
        let retry_after = resp
            .headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        return Attempt::Retry { error, retry_after };
    }
    Attempt::Fatal { error }
}

/// `Retry-After`: delay in seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((when - now).to_std().unwrap_or(Duration::ZERO))
}

/// Whether a result delivery of `job_id` was queued: waiting in the
/// outbox, sent, or dead. The grader asks this after a crash, instead of
/// reading the outbox's directories itself.
pub fn has_result_delivery(spool: &Spool, job_id: &str) -> bool {
    [
        Destination::Callback,
        Destination::Email,
        Destination::Status,
    ]
    .into_iter()
    .map(|d| record_file_name(job_id, d))
    .any(|name| {
        spool.path(State::Outbox, &name).exists()
            || spool.path(State::Dead, &name).exists()
            || sent_dir(spool).join(&name).exists()
    })
}

fn sent_dir(spool: &Spool) -> PathBuf {
    spool.root().join(SENT_DIR)
}

fn receipt_path(spool: &Spool, name: &str) -> PathBuf {
    sent_dir(spool).join(name)
}

/// Remove receipts older than `window` (`[spool] dedup_window`), except
/// while any record of their job is still in the outbox (a later status
/// stage must still see an earlier one was sent, so it never goes
/// backwards) or their job still waits or runs (crash recovery reads the
/// receipts of those). Returns how many.
pub fn prune_receipts(spool: &Spool, window: std::time::Duration) -> std::io::Result<usize> {
    let job_of = |name: &str| name.split('.').next().unwrap_or_default().to_string();
    let queued: std::collections::HashSet<String> = spool
        .list(State::Outbox)
        .map_err(std::io::Error::other)?
        .iter()
        .map(|n| job_of(n))
        .collect();
    crate::spool::prune_older_than(&sent_dir(spool), window, |name| {
        let job = job_of(name);
        queued.contains(&job) || crate::spool::job_waiting_or_running(spool.root(), &job)
    })
}

/// True when `name` is already waiting, delivered or dead.
fn already_known(spool: &Spool, name: &str) -> bool {
    spool.path(State::Outbox, name).exists()
        || spool.path(State::Dead, name).exists()
        || receipt_path(spool, name).exists()
}

/// Write `rec` to the outbox unless it is already there, delivered or dead.
/// Returns whether a new record was written.
pub fn enqueue(spool: &Spool, rec: &Record) -> Result<bool, DeliverError> {
    let name = rec.file_name();
    if already_known(spool, &name) {
        tracing::debug!(job_id = %rec.job_id, destination = %rec.destination, "delivery already queued");
        return Ok(false);
    }
    match spool.publish(State::Outbox, &name, &rec.to_bytes()) {
        Ok(_) => {
            tracing::info!(job_id = %rec.job_id, project = %rec.project, sha = %rec.sha,
                destination = %rec.destination, "delivery queued");
            Ok(true)
        }
        Err(SpoolError::Exists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// True when commit statuses are configured and can be sent.
pub fn commit_status_enabled(cfg: &Config) -> bool {
    cfg.gitlab.commit_status && cfg.secrets.gitlab_token.is_some()
}

/// Queue every configured delivery of a finished job: callback (when
/// `callback.url` is set), email (when `email.url` is set) and the final
/// commit status (when `gitlab.commit_status` and a token are set), each
/// written durably before this returns. Safe to call again for the same
/// job: nothing is queued twice.
///
/// `result.stdout.bytes` (and `stderr.bytes`) must hold the captured
/// output: they are not part of `result.json`.
pub fn enqueue_result(
    cfg: &Config,
    spool: &Spool,
    event: &Event,
    result: &JobResult,
) -> Result<(), DeliverError> {
    let mut records = Vec::new();
    // Hidden summary keys (and their lines in stdout) are for staff only:
    // never emailed; sent to the callback only with include_hidden.
    if !cfg.callback.url.is_empty() {
        let shown = crate::policy::hidden::callback_view(result, cfg.callback.include_hidden, true);
        records.push(callback::record(cfg, event, &shown));
    }
    if !cfg.email.url.is_empty() {
        let shown = crate::policy::hidden::student_view(result);
        records.push(email::record(cfg, event, &shown));
    }
    if commit_status_enabled(cfg) {
        records.push(status::final_record(cfg, event, result));
    }
    for rec in &records {
        enqueue(spool, rec)?;
    }
    Ok(())
}

/// Queue only the email of `result` (e.g. a job refused by course policy,
/// whose `stdout` holds the explanation). A no-op when email is off.
pub fn enqueue_email(
    cfg: &Config,
    spool: &Spool,
    event: &Event,
    result: &JobResult,
) -> Result<(), DeliverError> {
    if cfg.email.url.is_empty() {
        return Ok(());
    }
    let shown = crate::policy::hidden::student_view(result);
    enqueue(spool, &email::record(cfg, event, &shown))?;
    Ok(())
}

/// Queue a `pending` (job accepted) or `running` (job started) commit
/// status. A no-op when commit statuses are off or no GitLab token is set.
/// `success`/`failed` come from [`enqueue_result`]; passed here they are
/// queued as the final status without a grade.
pub fn enqueue_commit_status(
    cfg: &Config,
    spool: &Spool,
    event: &Event,
    state: CommitState,
) -> Result<(), DeliverError> {
    if !commit_status_enabled(cfg) {
        return Ok(());
    }
    enqueue(spool, &status::stage_record(cfg, event, state))?;
    Ok(())
}

/// One line of `labgrader queue` about a delivery.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryLine {
    pub key: String,
    pub attempts: u32,
    pub next_try_at: Option<DateTime<Utc>>,
    /// Last error (waiting) or the reason it was given up (dead).
    pub reason: Option<String>,
}

/// Up to `limit` waiting and dead deliveries (oldest first), for `labgrader queue`.
pub fn report(
    spool: &Spool,
    limit: usize,
) -> Result<(Vec<DeliveryLine>, Vec<DeliveryLine>), DeliverError> {
    let lines = |state: State| -> Result<Vec<DeliveryLine>, DeliverError> {
        let mut out = Vec::new();
        for name in spool.list(state)?.into_iter().take(limit) {
            let line = match spool
                .read(state, &name)
                .ok()
                .and_then(|b| Record::from_bytes(&b).ok())
            {
                Some(r) => DeliveryLine {
                    key: r.key,
                    attempts: r.attempts,
                    next_try_at: (state == State::Outbox).then_some(r.next_try_at),
                    reason: if state == State::Dead {
                        r.dead_reason.or(r.last_error)
                    } else {
                        r.last_error
                    },
                },
                None => DeliveryLine {
                    key: name,
                    attempts: 0,
                    next_try_at: None,
                    reason: Some("unreadable record".into()),
                },
            };
            out.push(line);
        }
        Ok(out)
    };
    Ok((lines(State::Outbox)?, lines(State::Dead)?))
}

/// What the senders share: config, clients, transports.
pub(crate) struct Ctx {
    pub cfg: Arc<Config>,
    pub http: HttpClient,
    pub gitlab: Option<GitlabApi>,
    pub mailer: Option<email::Mailer>,
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
        mailer: email::Mailer::from_config(&cfg)?,
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
            if status_stage_running(&name, &running) {
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

/// True when `name` is a commit-status stage and another stage of the same
/// job is among `running`.
fn status_stage_running(name: &str, running: &[String]) -> bool {
    let Some((job, d)) = parse_file_name(name) else {
        return false;
    };
    d.stage().is_some()
        && running.iter().any(|other| {
            parse_file_name(other).is_some_and(|(j, od)| j == job && od.stage().is_some())
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

/// Read and parse an outbox record; an unparseable one is quarantined
/// (`Ok(None)`), as is one whose name does not match its contents.
fn read_record(spool: &Spool, name: &str) -> Result<Option<Record>, SpoolError> {
    let bytes = match spool.read(State::Outbox, name) {
        Ok(b) => b,
        Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    match Record::from_bytes(&bytes) {
        Ok(rec) if rec.file_name() == name => Ok(Some(rec)),
        Ok(_) | Err(_) => {
            let why = match Record::from_bytes(&bytes) {
                Err(e) => e.to_string(),
                Ok(_) => "file name does not match its job and destination".into(),
            };
            match spool.quarantine(name, State::Outbox) {
                Ok(to) => tracing::error!(name, error = %why, to = %to.display(),
                    "outbox record unreadable; moved to corrupt/"),
                Err(e) => tracing::error!(name, error = %e, "cannot quarantine outbox record"),
            }
            Ok(None)
        }
    }
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
        Payload::Callback(p) => callback::send(&ctx, &rec, p).await,
        Payload::Email(p) => {
            // The sender notes who has their copy, so a retry skips them.
            let mut p = p.clone();
            let outcome = email::send(&ctx, &rec, &mut p).await;
            rec.payload = Payload::Email(p);
            outcome
        }
        Payload::Status(p) => status::send(&ctx, &rec, p).await,
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
    // A crash between writing the receipt and removing the record.
    if receipt_path(spool, name).exists() {
        remove_record(spool, name);
        return Prepared::Done(None);
    }
    if let Some(later) = superseded_by(spool, &rec) {
        let detail = format!("superseded by {later} before it was sent");
        tracing::info!(job_id = %rec.job_id, destination = %rec.destination, "{detail}");
        return Prepared::Done(finish_delivered(spool, &rec, detail));
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
            finish_delivered(spool, &rec, detail)
        }
        Attempt::Fatal { error } => {
            rec.last_error = Some(error.clone());
            bury(spool, rec, error);
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
                bury(spool, rec, reason);
                return None;
            }
            if now >= deadline {
                let reason = format!(
                    "gave up after retrying for {} (deliver.retry_for), {} attempts; last error: {error}",
                    crate::config::Seconds(d.retry_for.get()),
                    rec.attempts
                );
                bury(spool, rec, reason);
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

/// A later commit-status stage of the same job already queued or sent.
fn superseded_by(spool: &Spool, rec: &Record) -> Option<Destination> {
    let stage = rec.destination.stage()?;
    Destination::ALL
        .into_iter()
        .filter(|d| d.stage().is_some_and(|s| s > stage))
        .find(|d| {
            let name = record_file_name(&rec.job_id, *d);
            spool.path(State::Outbox, &name).exists() || receipt_path(spool, &name).exists()
        })
}

/// Write the receipt, then remove the record. A crash in between is
/// noticed by the next attempt (receipt present → record removed, not sent).
fn finish_delivered(spool: &Spool, rec: &Record, detail: String) -> Option<DateTime<Utc>> {
    let receipt = Receipt {
        schema: RECORD_SCHEMA,
        key: rec.key.clone(),
        delivered_at: Utc::now(),
        attempts: rec.attempts,
        detail,
    };
    let name = rec.file_name();
    if let Err(e) = write_receipt(spool, &name, &receipt) {
        tracing::error!(name, error = %e, "cannot write delivery receipt");
    }
    remove_record(spool, &name);
    None
}

fn write_receipt(spool: &Spool, name: &str, receipt: &Receipt) -> io::Result<()> {
    let dir = sent_dir(spool);
    let tmp = spool
        .dir(State::Tmp)
        .join(format!("{name}.receipt.{}", crate::spool::new_job_id()));
    let mut bytes = serde_json::to_vec_pretty(receipt).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let res = (|| {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        fsync_dir(&dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Remove a record whose receipt is written. No directory fsync: should
/// the removal be lost in a crash, the receipt keeps it from being re-sent.
fn remove_record(spool: &Spool, name: &str) {
    let p = spool.path(State::Outbox, name);
    match fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(path = %p.display(), error = %e, "cannot remove delivered record")
        }
    }
}

/// Move a record to `dead/` with its reason.
fn bury(spool: &Spool, mut rec: Record, reason: String) {
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

/// One phrase for a result: the grade, or what went wrong (e.g. "timed
/// out after 120 s"), used in email subjects and commit statuses.
pub fn verdict(result: &JobResult) -> String {
    use crate::result::Status;
    let grade = result.grade_total.map(crate::result::format_grade);
    if result.status == Status::Graded {
        return match grade {
            Some(g) => format!("grade {g}"),
            None => "graded".into(),
        };
    }
    let what = result
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| match result.status {
            Status::Timeout => match &result.limits {
                Some(l) => format!("timed out after {} s", l.timeout.as_secs()),
                None => "timed out".into(),
            },
            Status::MemoryLimit => "stopped at the memory limit".into(),
            Status::WorkspaceLimit => "workspace over its limit".into(),
            Status::DiskLimit => "stopped at the disk quota".into(),
            Status::OutputLimit => "output over its limit; no trustworthy summary".into(),
            Status::NoGrade => "no grade_total in the summary".into(),
            Status::InvalidManifest => "invalid labgrader.json".into(),
            Status::Error => "could not be graded".into(),
            Status::InfraError => "grader error; staff have been told".into(),
            Status::Graded => unreachable!("handled above"),
        });
    match grade {
        Some(g) => format!("{what} (grade {g})"),
        None => what,
    }
}

/// Replace `{name}` placeholders from `vars` in `template`.
pub(crate) fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_past_the_window_go_unless_their_record_or_job_is_live() {
        let t = tempfile::tempdir().unwrap();
        let spool = Spool::open(t.path()).unwrap();
        let sent = sent_dir(&spool);
        fs::create_dir_all(&sent).unwrap();
        let names = [
            "A.email.json",
            "B.status.json",
            "C.callback.json",
            "D.status.json",
        ];
        for n in names {
            fs::write(sent.join(n), b"{}").unwrap();
        }
        for n in &names[..3] {
            crate::spool::backdate(&sent.join(n), 7200);
        }
        // Another record of B's job still waits (a status stage must not
        // overtake the one sent); C's job is running again.
        fs::write(spool.path(State::Outbox, "B.email.json"), b"{}").unwrap();
        fs::write(spool.path(State::Active, "C.json"), b"{}").unwrap();
        assert_eq!(
            prune_receipts(&spool, Duration::from_secs(3600)).unwrap(),
            1
        );
        assert!(!sent.join("A.email.json").exists());
        for n in &names[1..] {
            assert!(sent.join(n).exists(), "{n}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

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

    fn result(
        status: crate::result::Status,
        grade: Option<f64>,
        reason: Option<&str>,
    ) -> JobResult {
        JobResult {
            schema: crate::result::RESULT_SCHEMA,
            job_id: "01J".into(),
            project: "a/b".into(),
            git_ref: "refs/heads/main".into(),
            student_sha: "abc".into(),
            tests_sha: None,
            runner: "none".into(),
            image: None,
            image_id: None,
            limits: Some(crate::result::Limits {
                timeout: Duration::from_secs(90),
                memory: 1 << 20,
                pids: 1,
                output: 1 << 10,
                cpus: 1.0,
                file_size: 1 << 10,
                open_files: 8,
                disk: 1 << 30,
            }),
            received_at: Utc::now(),
            started_at: None,
            ended_at: Utc::now(),
            status,
            reason: reason.map(str::to_string),
            termination: None,
            grade_total: grade,
            summary: Default::default(),
            hidden: Default::default(),
            stdout: Default::default(),
            stderr: Default::default(),
            results: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn verdicts_name_the_grade_or_the_failure() {
        use crate::result::Status;
        assert_eq!(
            verdict(&result(Status::Graded, Some(100.0), None)),
            "grade 100"
        );
        assert_eq!(
            verdict(&result(Status::Timeout, None, None)),
            "timed out after 90 s"
        );
        assert_eq!(
            verdict(&result(
                Status::Timeout,
                Some(40.0),
                Some("timed out after 120 s")
            )),
            "timed out after 120 s (grade 40)"
        );
        assert_eq!(
            verdict(&result(Status::NoGrade, None, None)),
            "no grade_total in the summary"
        );
    }

    #[test]
    fn file_names_round_trip() {
        for d in Destination::ALL {
            let n = record_file_name("01JOB", d);
            assert!(crate::spool::is_valid_name(&n), "{n}");
            assert_eq!(parse_file_name(&n), Some(("01JOB", d)));
        }
        assert_eq!(parse_file_name("01JOB.nope.json"), None);
        assert_eq!(idempotency_key("01JOB", Destination::Email), "01JOB:email");
    }
}
