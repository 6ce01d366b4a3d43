//! Held pushes: accepted pushes from `[gitlab] student_namespaces` whose
//! test repository does not exist yet, or is still empty, wait in
//! `spool/held/` instead of being ignored and lost (or graded against no
//! tests).
//!
//! Owns putting a push on hold (its dedup marker, then the event made
//! durable in `held/` through [`Spool::hold`]), releasing the held pushes
//! of a test repository to `incoming/` the moment it has a commit on its
//! default branch (a push to it, which carries that commit; or, asked of
//! GitLab or git, on GitLab's `project_create` system hook, the second
//! look after holding, and the periodic check: a project created empty
//! keeps its pushes held), and expiring holds older than `[spool]
//! hold_for` to `failed/` with a reason the student is emailed. It never
//! grades, and moves a job only through the spool's typed operations.
//!
//! [`Spool::hold`]: crate::spool::Spool::hold

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::error::HookError;
use super::intake::undo_markers;
use super::state::Hook;
use super::testrepos::TestRepo;
use crate::event::Event;
use crate::spool::State;

/// How often held pushes are checked (their test repository, their age).
pub const HOLD_CHECK: Duration = Duration::from_secs(60);
/// Test repositories looked up at once by the periodic check.
pub const HOLD_LOOKUPS_AT_ONCE: usize = 4;
/// Longest one periodic check spends on lookups; the test repositories
/// not reached wait for the next check (the most-held are asked first).
pub const HOLD_CHECK_BUDGET: Duration = Duration::from_secs(30);

impl Hook {
    /// Store `event` in `held/` under its dedup marker `key`.
    pub(super) async fn hold(
        &self,
        key: String,
        event: &Event,
        bytes: Vec<u8>,
    ) -> Result<(), HookError> {
        let (spool, markers) = (self.spool.clone(), self.markers.clone());
        let job = event.job_id.clone();
        let name = event.file_name();
        tokio::task::spawn_blocking(move || {
            let keys = [key];
            if let Err(source) = markers.set(&keys[0], &job) {
                return Err(HookError::Marker {
                    path: markers.dir().to_path_buf(),
                    source,
                });
            }
            spool
                .hold(&name, &bytes)
                .inspect_err(|_| undo_markers(&markers, &keys, &job))
                .map(drop)
                .map_err(HookError::from)
        })
        .await
        .map_err(|e| HookError::Task(e.to_string()))??;
        tracing::info!(job_id = %event.job_id, project = %event.project.path, sha = %event.commit,
            tests = %self.cfg.gitlab.tests_path_for(&event.project.name),
            "push held: its test repository is missing or has no commit yet");
        Ok(())
    }

    /// Why a push of `project` (in `namespace`) may not be held now: the
    /// pushes already held for that project or that namespace path are at
    /// `[spool] held_per_project` / `held_per_namespace`. Each held push
    /// costs a lookup of its test repository every [`HOLD_CHECK`], and a
    /// student may create any number of projects.
    pub(super) async fn held_limit(&self, project: &str, namespace: &str) -> Option<String> {
        let spool = self.spool.clone();
        let (project, namespace) = (project.to_string(), namespace.to_string());
        let (per_project, per_ns) = (
            self.cfg.spool.held_per_project,
            self.cfg.spool.held_per_namespace,
        );
        tokio::task::spawn_blocking(move || {
            let held = held_events(&spool);
            let of_project = held
                .iter()
                .filter(|(_, e)| e.project.path == project)
                .count();
            let of_ns = held
                .iter()
                .filter(|(_, e)| e.project.namespace == namespace)
                .count();
            if of_project >= per_project {
                Some(format!(
                    "{of_project} pushes of {project} are already held for its test repository \
                     ([spool] held_per_project = {per_project}); this one is not kept: push again \
                     once the course staff have created the test repository"
                ))
            } else if of_ns >= per_ns {
                Some(format!(
                    "{of_ns} pushes of projects in {namespace} are already held for their test \
                     repositories ([spool] held_per_namespace = {per_ns}); this one is not kept: \
                     push again once the course staff have created the test repository"
                ))
            } else {
                None
            }
        })
        .await
        .unwrap_or(None)
    }

    /// Release every held push whose test repository is `tests_path`
    /// (it has its tests now). Returns how many went to `incoming/`.
    pub(super) async fn release_held(&self, tests_path: &str) -> usize {
        let (cfg, spool) = (self.cfg.clone(), self.spool.clone());
        let tests_path = tests_path.to_string();
        tokio::task::spawn_blocking(move || {
            let mut released = 0;
            for (name, ev) in held_events(&spool) {
                if cfg.gitlab.tests_path_for(&ev.project.name) != tests_path {
                    continue;
                }
                match spool.release(&name) {
                    Ok(true) => {
                        released += 1;
                        tracing::info!(job_id = %ev.job_id, project = %ev.project.path, tests = %tests_path,
                            "held push released: its test repository exists");
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(job_id = %ev.job_id, error = %e, "cannot release a held push"),
                }
            }
            released
        })
        .await
        .unwrap_or(0)
    }

    /// Release the pushes held for `tests_path` if it has a commit now,
    /// asked afresh of GitLab or git (a project created or moved there may
    /// still be empty). Nothing held for it: no lookup at all (GitLab
    /// sends `project_create` for every project, students' too).
    pub(super) async fn release_if_ready(&self, tests_path: &str) -> usize {
        let (cfg, spool) = (self.cfg.clone(), self.spool.clone());
        let tests = tests_path.to_string();
        let waiting = tokio::task::spawn_blocking(move || {
            spool.count(State::Held) > 0
                && held_events(&spool)
                    .iter()
                    .any(|(_, ev)| cfg.gitlab.tests_path_for(&ev.project.name) == tests)
        })
        .await
        .unwrap_or(false);
        if !waiting {
            return 0;
        }
        match self.repos.state(tests_path).await {
            Ok(TestRepo::Ready) => self.release_held(tests_path).await,
            Ok(state) => {
                tracing::info!(tests = %tests_path, ?state, "held pushes stay held: their test repository has no commit yet");
                0
            }
            Err(e) => {
                tracing::warn!(tests = %tests_path, error = %e, "cannot tell whether the test repository has its tests; held pushes stay held (checked again every minute)");
                0
            }
        }
    }

    /// One pass over `held/`: expire what is older than `hold_for`, ask
    /// whether each remaining test repository has a commit (one lookup per
    /// distinct test repository, [`HOLD_LOOKUPS_AT_ONCE`] at a time, the
    /// one with the most held pushes first, for at most
    /// [`HOLD_CHECK_BUDGET`]), release those.
    async fn check_held(&self) {
        let spool = self.spool.clone();
        let held = tokio::task::spawn_blocking(move || held_events(&spool))
            .await
            .unwrap_or_default();
        let hold_for =
            chrono::Duration::from_std(self.cfg.spool.hold_for.get()).unwrap_or_default();
        let mut waiting: HashMap<String, usize> = HashMap::new();
        for (name, ev) in held {
            if Utc::now() - ev.received_at >= hold_for {
                self.expire(&name, &ev);
                continue;
            }
            *waiting
                .entry(self.cfg.gitlab.tests_path_for(&ev.project.name))
                .or_default() += 1;
        }
        // A lab the class pushes to before its tests exist has many held
        // pushes; one student's stray projects have one or a few each.
        let mut order: Vec<(String, usize)> = waiting.into_iter().collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let total = order.len();
        let lookups = futures_util::stream::iter(order.into_iter().map(|(tests, _)| async move {
            // A fresh answer, not the cache's "missing".
            self.repos.invalidate(std::slice::from_ref(&tests));
            let found = matches!(self.repos.state(&tests).await, Ok(TestRepo::Ready));
            if found {
                self.release_held(&tests).await;
            }
        }))
        .buffer_unordered(HOLD_LOOKUPS_AT_ONCE)
        .count();
        match tokio::time::timeout(HOLD_CHECK_BUDGET, lookups).await {
            Ok(_) => {}
            Err(_) => tracing::warn!(
                test_repos = total,
                budget = ?HOLD_CHECK_BUDGET,
                "the check of held pushes ran out of time; the test repositories not asked wait for the next check"
            ),
        }
    }

    /// A hold past `hold_for`: `failed/` with the reason, and the student
    /// told by email (when email is on).
    fn expire(&self, name: &str, ev: &Event) {
        let tests = self.cfg.gitlab.tests_path_for(&ev.project.name);
        let why = format!(
            "no test repository {tests} with a commit appeared within {} ([spool] hold_for) of the push; \
             ask the course staff, who can grade it with `labgrader retry {}`",
            crate::config::Seconds(self.cfg.spool.hold_for.get()),
            ev.job_id
        );
        // `CODE: message`, like the other refusals in failed/.
        let reason = format!("held: {why}");
        if let Err(e) = self
            .spool
            .fail(State::Held, name, &ev.job_id, &ev.to_bytes(), &reason)
        {
            tracing::error!(job_id = %ev.job_id, error = %e, "cannot expire a held push");
            return;
        }
        tracing::warn!(job_id = %ev.job_id, project = %ev.project.path, %reason, "held push expired: failed/");
        let text = format!("This push was not graded: {why}.\n");
        let verdict =
            crate::result::Verdict::new(crate::result::Status::Error, format!("not graded: {why}"));
        let mut r = crate::result::result_without_run(ev, "none", None, verdict);
        r.stdout = crate::result::Captured::from_bytes(text.into_bytes(), 1 << 16);
        if let Err(e) = crate::deliver::enqueue_email(&self.cfg, &self.spool, ev, &r) {
            tracing::warn!(job_id = %ev.job_id, error = %e, "cannot queue the expired hold's email");
        }
    }
}

/// Every readable event in `held/` with its file name, oldest first.
fn held_events(spool: &crate::spool::Spool) -> Vec<(String, Event)> {
    let names = spool.list(State::Held).unwrap_or_default();
    names
        .into_iter()
        .filter_map(|n| {
            let bytes = spool.read(State::Held, &n).ok()?;
            match Event::from_bytes(&bytes) {
                Ok(ev) => Some((n, ev)),
                Err(e) => {
                    tracing::error!(name = %n, error = %e, "unreadable held event: corrupt/");
                    let _ = spool.quarantine(&n, State::Held);
                    None
                }
            }
        })
        .collect()
}

/// At start and every [`HOLD_CHECK`]: [`Hook::check_held`], while any
/// student namespace is configured (or anything is held).
pub(super) async fn watch_held(hook: Arc<Hook>, shutdown: CancellationToken) {
    loop {
        if !hook.cfg.gitlab.student_namespaces.is_empty() || hook.spool.count(State::Held) > 0 {
            hook.check_held().await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HOLD_CHECK) => {}
        }
    }
}
