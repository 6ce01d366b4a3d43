//! The running service: opens the spool, binds the hook socket, and starts
//! the hook server, the grader, the delivery worker and the systemd
//! housekeeping (readiness, watchdog, stopping) under one shutdown token;
//! if one part fails, the others stop too. Also builds the `queue` report
//! of what the spool holds. It never parses arguments nor prints: the CLI
//! does that and calls in here.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::spool::{Spool, State};

/// Which parts of the daemon run in this process.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    /// The network-facing hook server.
    pub hook: bool,
    /// The grader and, beside it, the delivery worker.
    pub grader: bool,
}

/// A token cancelled on the first SIGTERM or SIGINT. Call inside a tokio
/// runtime.
pub fn shutdown_on_signals() -> Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    Ok(token)
}

/// Open the spool named by the config, with the message every command uses.
/// The spool of a staff command that reads it (`queue`, `regrade`,
/// `replay`, `release`): refused when its directory does not exist, rather
/// than made empty, since that means another configuration's spool.
pub fn existing_spool(cfg: &Config) -> Result<Spool> {
    if !cfg.spool.dir.is_dir() {
        anyhow::bail!(
            "no spool at {}: nothing ran with this configuration here. Pass the daemon's \
             configuration with --config FILE (or LABGRADER_CONFIG), e.g. \
             --config /etc/labgrader/labgrader.toml",
            cfg.spool.dir.display()
        );
    }
    open_spool(cfg)
}

pub fn open_spool(cfg: &Config) -> Result<Spool> {
    Spool::open(&cfg.spool.dir)
        .with_context(|| format!("cannot open spool {}", cfg.spool.dir.display()))
}

/// Run the chosen parts until `shutdown` is cancelled or one part fails
/// (which cancels it for the others). Returns the first part's error, in
/// the order hook, grader, delivery.
pub async fn run(cfg: Arc<Config>, parts: Parts, shutdown: CancellationToken) -> Result<()> {
    let spool = Arc::new(open_spool(&cfg)?);
    if parts.grader && cfg.email.url.is_empty() {
        tracing::warn!(
            "email is off: [email] url is empty and this host has no {} (no local MTA); \
             students get no email. Set [email] url = \"smtp://RELAY:25\" (your university's \
             relay) or install a mail server",
            crate::config::SENDMAIL
        );
    }
    let listener = if parts.hook {
        Some(
            tokio::net::TcpListener::bind(cfg.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", cfg.server.listen))?,
        )
    } else {
        None
    };
    // systemd (Type=notify): ready once the spool is open and the socket
    // bound. The grader's own "watching" point is inside grader::run;
    // until it reports readiness itself, READY=1 is sent here.
    crate::notify::ready();
    crate::notify::status(&match &listener {
        Some(l) => format!(
            "listening on {}, spool {}",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            cfg.spool.dir.display()
        ),
        None => format!("spool {}", cfg.spool.dir.display()),
    });
    let watchdog = tokio::spawn(crate::notify::watchdog_task(shutdown.clone()));
    let stopping = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            crate::notify::stopping();
        }
    });
    let hook_task = async {
        match listener {
            Some(listener) => {
                crate::hook::serve(cfg.clone(), spool.clone(), listener, shutdown.clone()).await
            }
            None => Ok(()),
        }
    };
    let grader_task = async {
        if !parts.grader {
            return Ok(());
        }
        crate::grader::run(cfg.clone(), spool.clone(), shutdown.clone()).await
    };
    // The delivery worker runs beside the grader (one worker per spool).
    let deliver_task = async {
        if !parts.grader {
            return Ok(());
        }
        crate::deliver::run(cfg.clone(), spool.clone(), shutdown.clone())
            .await
            .context("delivery worker")
    };
    let (h, g, d) = tokio::join!(
        stop_all_on_error(hook_task, &shutdown),
        stop_all_on_error(grader_task, &shutdown),
        stop_all_on_error(deliver_task, &shutdown),
    );
    shutdown.cancel();
    let _ = stopping.await;
    let _ = watchdog.await;
    h?;
    g?;
    d?;
    Ok(())
}

/// Run one part of the daemon; if it fails, stop the others too.
async fn stop_all_on_error(
    part: impl std::future::Future<Output = Result<()>>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let r = part.await;
    if r.is_err() {
        shutdown.cancel();
    }
    r
}

/// One waiting or running job as `labgrader queue` shows it.
#[derive(Debug, Serialize)]
pub struct JobLine {
    pub job_id: String,
    pub project: String,
    pub sha: String,
    /// Infrastructure attempts so far, of `[grader] infra_retries` + 1.
    pub attempt: u32,
    pub attempts_max: u32,
    /// When it may run again (after a grader fault); `None` = now.
    pub next_try: Option<chrono::DateTime<chrono::Utc>>,
    /// The grader's last error on it (staff only).
    pub last_error: Option<String>,
    /// Daemon crashes while it ran.
    pub crashes: u32,
    /// A held job: the test repository it waits for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<String>,
    /// A held job: when it fails if that repository has not appeared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Where it stands in Slurm (slurm runner), from `[slurm] shared_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm: Option<String>,
}

impl JobLine {
    fn read(spool: &Spool, state: State, name: &str, cfg: &Config) -> JobLine {
        let ev = spool
            .read(state, name)
            .ok()
            .and_then(|b| crate::event::Event::from_bytes(&b).ok());
        JobLine {
            job_id: crate::event::job_id_of(name).to_string(),
            project: ev
                .as_ref()
                .map(|e| e.project.path.clone())
                .unwrap_or_default(),
            sha: ev.as_ref().map(|e| e.commit.clone()).unwrap_or_default(),
            attempt: ev.as_ref().map_or(0, |e| e.infra_attempts) + 1,
            attempts_max: cfg.grader.infra_retries + 1,
            next_try: ev.as_ref().and_then(|e| e.not_before),
            last_error: ev.as_ref().and_then(|e| e.last_error.clone()),
            crashes: ev.as_ref().map_or(0, |e| e.crashes),
            waits_for: ev
                .as_ref()
                .filter(|_| state == State::Held)
                .map(|e| cfg.gitlab.tests_path_for(&e.project.name)),
            held_until: ev.as_ref().filter(|_| state == State::Held).map(|e| {
                e.received_at
                    + chrono::Duration::from_std(cfg.spool.hold_for.get()).unwrap_or_default()
            }),
            slurm: crate::sandbox::slurm::tickets::describe(
                &cfg.slurm.shared_dir,
                crate::event::job_id_of(name),
            ),
        }
    }
}

/// What `labgrader queue` shows (its `--json` shape).
#[derive(Debug, Serialize)]
pub struct QueueReport {
    pub spool: PathBuf,
    pub counts: Vec<(State, usize)>,
    /// Waiting jobs (`incoming/`), oldest first, at most [`Self::JOB_LIMIT`].
    pub waiting: Vec<JobLine>,
    /// Running jobs (`active/`).
    pub active: Vec<JobLine>,
    /// Pushes held until their test repository exists (`held/`), oldest first.
    pub held: Vec<JobLine>,
    /// Oldest deliveries waiting in outbox/ and given up in dead/ (with reasons).
    pub deliveries_waiting: Vec<crate::deliver::DeliveryLine>,
    pub deliveries_dead: Vec<crate::deliver::DeliveryLine>,
    /// Staff alerts written but not yet sent (`[alerts]`, batched).
    pub alerts_waiting: usize,
    /// Regrade batches still running or finished within a day.
    pub regrades: Vec<crate::grader::batch::Progress>,
}

impl QueueReport {
    /// At most this many deliveries are listed per state.
    pub const DELIVERY_LIMIT: usize = 50;
    /// At most this many waiting jobs are listed.
    pub const JOB_LIMIT: usize = 200;

    /// Read the spool: counts per state, waiting and active jobs, oldest
    /// waiting and dead deliveries.
    pub fn build(cfg: &Config) -> Result<QueueReport> {
        let spool = existing_spool(cfg)?;
        let (deliveries_waiting, deliveries_dead) =
            crate::deliver::report(&spool, Self::DELIVERY_LIMIT)?;
        Ok(QueueReport {
            spool: cfg.spool.dir.clone(),
            counts: State::ALL.iter().map(|s| (*s, spool.count(*s))).collect(),
            waiting: spool
                .list(State::Incoming)?
                .iter()
                .take(Self::JOB_LIMIT)
                .map(|n| JobLine::read(&spool, State::Incoming, n, cfg))
                .collect(),
            active: spool
                .list(State::Active)?
                .iter()
                .map(|n| JobLine::read(&spool, State::Active, n, cfg))
                .collect(),
            held: spool
                .list(State::Held)?
                .iter()
                .take(Self::JOB_LIMIT)
                .map(|n| JobLine::read(&spool, State::Held, n, cfg))
                .collect(),
            deliveries_waiting,
            deliveries_dead,
            alerts_waiting: crate::alert::waiting(spool.root()),
            regrades: crate::grader::batch::report(&spool),
        })
    }
}
