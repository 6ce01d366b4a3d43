//! The web view's state ([`Web`]) and its read-only access to what the
//! pages show: a small pool of read-only gradebook connections, and the
//! queue as the spool has it (where a job waits, what runs, an estimate of
//! when a waiting job starts). It never writes to the gradebook or moves
//! a spool file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use maud::Markup;

use crate::config::{Config, Secret};
use crate::event::Event;
use crate::gradebook::{self, Gradebook, GradebookError};
use crate::spool::{Spool, State};

use super::pool::RenderPool;

/// Read-only connections kept for reuse (more are opened under load and
/// dropped after).
const POOL_KEEP: usize = 16;
/// Finished jobs the mean run time of estimates is taken over.
const ESTIMATE_OVER: usize = 50;

/// The web view's shared state.
pub struct Web {
    pub(super) cfg: Arc<Config>,
    pub(super) spool: Arc<Spool>,
    /// The key of result-page tokens.
    pub(super) secret: Vec<u8>,
    /// The staff pages' token; `None` = staff pages always answer 401.
    pub(super) staff: Option<Secret>,
    pool: Mutex<Vec<Gradebook>>,
    /// Where pages are rendered (low-priority threads).
    pub(super) renders: RenderPool,
    /// Leaderboards read recently (public pages: read once per 30 s).
    pub(super) boards: Boards,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("public_url", &self.cfg.web.public_url)
            .finish_non_exhaustive()
    }
}

/// The leaderboards read in the last 30 s (`board::FRESH`), by
/// assignment (only those with a leaderboard: bounded by the config). The
/// page is public and reading it is a pass over every graded job of the
/// assignment (25–50 ms at 10,000 jobs), so a client asking in a loop
/// would otherwise keep the render threads busy and every student's result
/// page waiting.
#[derive(Debug, Default)]
pub(super) struct Boards(pub(super) Mutex<HashMap<String, (Instant, Markup)>>);

/// Where a job is in the queue.
pub(super) enum Place {
    /// In `incoming/`: `position` among `waiting` (1 = next).
    Waiting {
        event: Box<Event>,
        position: usize,
        waiting: usize,
    },
    /// In `active/`, its run started: being graded.
    Running { event: Box<Event> },
    /// In `active/`, prepared (fetched, laid out) and waiting for one of
    /// the `workers` run slots.
    Ready { event: Box<Event> },
    /// Neither (finished, failed, or unknown).
    Elsewhere,
}

impl Web {
    /// The web view of `cfg`, or `None` when `[web] public_url` is empty.
    pub fn start(cfg: Arc<Config>, spool: Arc<Spool>) -> Option<Arc<Web>> {
        if !cfg.web.enabled() {
            return None;
        }
        let Some(secret) = cfg.secrets.web_secret.as_ref() else {
            tracing::error!("{}", crate::config::WEB_NO_SECRET);
            return None;
        };
        let secret = secret.expose().as_bytes().to_vec();
        let staff = cfg.secrets.staff_token.clone();
        if staff.is_none() {
            tracing::warn!(
                "no staff token (web.staff_token_file): the staff pages answer 401 to everyone"
            );
        }
        tracing::info!(public_url = %cfg.web.public_url, "web view on");
        Some(Arc::new(Web {
            spool,
            secret,
            staff,
            pool: Mutex::new(Vec::new()),
            renders: RenderPool::start(cfg.web.renders),
            boards: Default::default(),
            cfg,
        }))
    }

    /// Run `f` on a read-only gradebook connection; `Ok(None)` while the
    /// gradebook does not exist yet.
    pub(super) fn gradebook<T>(
        &self,
        f: impl FnOnce(&Gradebook) -> Result<T, GradebookError>,
    ) -> Result<Option<T>, GradebookError> {
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let gb = match taken {
            Some(g) => g,
            None => match Gradebook::open_readonly(&gradebook::path_in(&self.cfg.spool.dir))? {
                Some(g) => g,
                None => return Ok(None),
            },
        };
        let out = f(&gb);
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(gb);
        }
        out.map(Some)
    }

    /// Where `job_id` is in the queue.
    pub(super) fn place(&self, job_id: &str) -> Place {
        let name = format!("{job_id}.json");
        let read = |state| {
            self.spool
                .read(state, &name)
                .ok()
                .and_then(|b| Event::from_bytes(&b).ok())
                .filter(|e| e.job_id == job_id)
        };
        if let Some(event) = read(State::Incoming) {
            // File names sort oldest first, as the scheduler takes them.
            let names = self.spool.list(State::Incoming).unwrap_or_default();
            let position = names.iter().filter(|n| **n < name).count() + 1;
            return Place::Waiting {
                event: Box::new(event),
                position,
                waiting: names.len().max(position),
            };
        }
        if let Some(event) = read(State::Active) {
            let event = Box::new(event);
            return if crate::grader::run_started(self.spool.root(), job_id) {
                Place::Running { event }
            } else {
                Place::Ready { event }
            };
        }
        Place::Elsewhere
    }

    /// When the job at `position` (1 = next) may start, from the mean run
    /// time of recent jobs, the workers and the jobs running; `None`
    /// without a finished job to learn from.
    pub(super) fn estimate_start(&self, position: usize) -> Option<DateTime<Utc>> {
        let mean = self
            .gradebook(|g| Ok(g.views().mean_run_seconds(ESTIMATE_OVER)?))
            .ok()
            .flatten()
            .flatten()?;
        let workers = self.cfg.grader.effective_workers().max(1);
        let running = self.spool.count(State::Active);
        // Jobs that must start (or finish) before a slot is free for it.
        let ahead = position.saturating_sub(1) + running;
        let rounds = ahead / workers;
        let secs = (rounds as f64 * mean.max(0.0)).min(30.0 * 24.0 * 3600.0);
        Some(Utc::now() + chrono::Duration::milliseconds((secs * 1000.0) as i64))
    }
}
