//! Intake: for each ref update of a delivery, eligibility (tests
//! namespace, tag policy, test repository), dedup, and the event file made
//! durable by the group commit; then the "pending" commit status, off the
//! answer's path. It never grades and never moves a job after `incoming/`.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use hyper::StatusCode;

use super::answer::Answer;
use super::dedup::{Markers, job_exists, update_key};
use super::error::HookError;
use super::parse::{Ignored, RefUpdate};
use super::state::Hook;
use super::testrepos::TestRepo;
use crate::event::{EVENT_SCHEMA, Event, HookSource};
use crate::metrics;
use crate::spool::new_job_id;

/// Refs of one delivery stored concurrently.
const REFS_IN_FLIGHT: usize = 64;

/// What happened to one ref update.
enum Outcome {
    Stored {
        job: String,
        duplicate: bool,
    },
    /// Stored in `held/`: its test repository does not exist yet, or is
    /// `empty` (created, its tests not pushed yet).
    Held {
        job: String,
        tests: String,
        empty: bool,
    },
    Ignored(Ignored),
}

impl Hook {
    /// Queue the "pending" commit status of an accepted job, off the
    /// answer's path: it is informational (the final status follows from
    /// the result), so GitLab does not wait for its fsyncs.
    fn queue_pending_status(&self, event: Event) {
        if !self.cfg.callback.url.is_empty() {
            let (cfg, spool, event) = (self.cfg.clone(), self.spool.clone(), event.clone());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::deliver::enqueue_callback_stage(
                    &cfg,
                    &spool,
                    &event,
                    crate::deliver::JobStage::Queued,
                ) {
                    tracing::warn!(job_id = %event.job_id, error = %e, "cannot queue the queued callback");
                }
            });
        }
        if !crate::deliver::commit_status_enabled(&self.cfg) {
            return;
        }
        if event.commit_may_be_tag_object() {
            // A status on a tag object would be refused by GitLab (or
            // land nowhere a student looks); the grader sends `running`
            // on the commit once it has peeled the tag.
            tracing::debug!(job_id = %event.job_id, "no pending status: the commit may be a tag object");
            return;
        }
        let (cfg, spool) = (self.cfg.clone(), self.spool.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::deliver::enqueue_commit_status(
                &cfg,
                &spool,
                &event,
                crate::deliver::CommitState::Pending,
            ) {
                tracing::warn!(job_id = %event.job_id, error = %e, "cannot queue the pending commit status");
            }
        });
    }

    /// Decide and store every update of one delivery.
    pub(super) async fn intake(
        self: Arc<Self>,
        source: HookSource,
        gitlab_event: String,
        delivery: Option<String>,
        body: Bytes,
        updates: Vec<RefUpdate>,
        skipped: Vec<Ignored>,
    ) -> Answer {
        // The body parsed once more as a generic value for `raw`: parse()
        // only checked it.
        let raw: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let mut jobs: Vec<String> = Vec::new();
        let mut held: Vec<String> = Vec::new();
        let mut all_duplicates = true;
        let mut ignored = skipped;
        // The refs of a big push go through the same group commits rather
        // than one after another (GitLab waits at most 10 s).
        let outcomes: Vec<_> = futures_util::stream::iter(updates)
            .map(|u| {
                let raw = raw_for(&raw, &u);
                self.intake_one(source, &gitlab_event, delivery.as_deref(), raw, u)
            })
            .buffered(REFS_IN_FLIGHT)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome {
                Ok(Outcome::Stored { job, duplicate }) => {
                    all_duplicates &= duplicate;
                    if !jobs.contains(&job) {
                        jobs.push(job);
                    }
                }
                Ok(Outcome::Held { job, tests, empty }) => {
                    all_duplicates = false;
                    held.push(if empty {
                        format!("job {job} held until the test repository {tests} has a commit")
                    } else {
                        format!("job {job} held until the test repository {tests} exists")
                    });
                    jobs.push(job);
                }
                Ok(Outcome::Ignored(i)) => ignored.push(i),
                Err(HookError::LowSpace(low)) => {
                    metrics::inc(
                        "labgrader_hook_low_space_total",
                        "Deliveries refused because the spool's free space was under [spool] min_free.",
                        &[],
                    );
                    tracing::error!(
                        free = low.free,
                        min_free = low.min_free,
                        "SPOOL FILE SYSTEM NEARLY FULL: refusing new jobs (503) until space is freed; \
                         re-send refused hooks from GitLab afterwards"
                    );
                    return Answer::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("event not stored: {low}; re-send the hook once space is freed"),
                    );
                }
                Err(e) => {
                    metrics::inc(
                        "labgrader_hook_spool_errors_total",
                        "Deliveries refused because the spool could not be written.",
                        &[],
                    );
                    tracing::error!(error = %e, "cannot store the event; answering 503");
                    return Answer::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("spool unavailable, event not stored: {e}"),
                    );
                }
            }
        }
        if jobs.is_empty() {
            return self.ignored(&ignored);
        }
        for i in &ignored {
            metrics::inc(
                "labgrader_hook_ignored_total",
                "GitLab deliveries (or refs) not graded, by reason.",
                &[("reason", i.code)],
            );
        }
        let mut v = serde_json::json!({ "job_id": jobs[0] });
        if jobs.len() > 1 {
            v["job_ids"] = serde_json::json!(jobs);
        }
        if all_duplicates {
            v["duplicate"] = serde_json::json!(true);
        }
        if !held.is_empty() {
            v["held"] = serde_json::json!(held);
        }
        let mut body = serde_json::to_vec(&v).expect("json serializes");
        body.push(b'\n');
        Answer {
            status: StatusCode::ACCEPTED,
            body: Bytes::from(body),
            json: true,
        }
    }

    /// Eligibility, then dedup, then a durable event file.
    async fn intake_one(
        &self,
        source: HookSource,
        gitlab_event: &str,
        delivery: Option<&str>,
        raw: serde_json::Value,
        u: RefUpdate,
    ) -> Result<Outcome, HookError> {
        let gl = &self.cfg.gitlab;
        let ns = &u.project.namespace;
        if *ns == gl.tests_namespace || ns.starts_with(&format!("{}/", gl.tests_namespace)) {
            // A push to a test repository: it exists and has a commit now
            // (deletions were ignored by parse). A tag alone makes no
            // default branch: then asked, like a project_create.
            self.repos.invalidate(std::slice::from_ref(&u.project.path));
            if u.kind == crate::event::EventKind::TagPush {
                self.release_if_ready(&u.project.path).await;
            } else {
                self.release_held(&u.project.path).await;
            }
            return Ok(Outcome::Ignored(Ignored::new(
                "tests_namespace",
                format!(
                    "{} is in the tests namespace `{}`",
                    u.project.path, gl.tests_namespace
                ),
            )));
        }
        // Course policy (issue #7): in tag mode only a tag matching
        // `tag_pattern` is a submission. Lateness, manifest and quota are
        // the grader's business.
        let facts = crate::policy::PushFacts {
            kind: u.kind,
            git_ref: &u.git_ref,
            after: &u.after,
            received_at: Utc::now(),
        };
        if let Some(why) = crate::policy::hook_ignores(&self.cfg, &u.project.name, &facts) {
            return Ok(Outcome::Ignored(Ignored::new(why.code(), why.to_string())));
        }
        let tests = gl.tests_path_for(&u.project.name);
        let mut hold = None;
        match self.repos.state(&tests).await {
            Ok(TestRepo::Ready) => {}
            // The course's own students: held until the tests are there.
            Ok(state) if gl.is_student_namespace(ns) => hold = Some(state),
            // Graded (and failing as the course's fault) as before holds.
            Ok(TestRepo::Empty) => {}
            Ok(TestRepo::Missing) => {
                return Ok(Outcome::Ignored(Ignored::new(
                    "no_test_repository",
                    format!("no test repository {tests} for {}", u.project.path),
                )));
            }
            Err(e) => {
                // Unsure: store it. A job too many costs a grader minute; a
                // push ignored is lost (GitLab will not re-send it).
                metrics::inc(
                    "labgrader_hook_test_repo_lookup_errors_total",
                    "Test repository lookups that failed (the push was accepted).",
                    &[],
                );
                tracing::warn!(project = %u.project.path, error = %e, "cannot tell whether the test repository exists; accepting the push");
            }
        }

        // One key per ref update: a re-send of a delivery (same
        // Idempotency-Key, same body) and the same push arriving through
        // another hook all map to it.
        let ukey = update_key(&u.project.path, &u.git_ref, &u.before, &u.after);
        let _one_at_a_time = self.locks.lock(&ukey).await;
        let root = self.spool.root();
        if let Some(job) = self.markers.get(&ukey).filter(|j| job_exists(root, j)) {
            metrics::inc(
                "labgrader_hook_duplicates_total",
                "Deliveries of a push already stored (re-sends, several hooks).",
                &[],
            );
            tracing::info!(job_id = %job, project = %u.project.path, git_ref = %u.git_ref, "duplicate delivery; answering with the stored job");
            return Ok(Outcome::Stored {
                job,
                duplicate: true,
            });
        }

        // The reserve: under `[spool] min_free` no new job is stored, so
        // the jobs already accepted keep room to finish and deliver.
        // Checked before anything is written (no marker, no tmp file);
        // duplicates and ignored refs above are still answered.
        self.reserve.check()?;

        // Held pushes are bounded per project and per namespace path; the
        // namespace's lock makes the count and the hold one step.
        let _held_lock = match hold {
            Some(_) => {
                let guard = self.locks.lock(&format!("held-namespace:{ns}")).await;
                if let Some(why) = self.held_limit(&u.project.path, ns).await {
                    metrics::inc(
                        "labgrader_hook_held_limit_total",
                        "Pushes not held because their project or namespace had too many held.",
                        &[],
                    );
                    tracing::warn!(project = %u.project.path, tests = %tests, %why, "push ignored: held-push limit");
                    return Ok(Outcome::Ignored(Ignored::new("held_limit", why)));
                }
                Some(guard)
            }
            None => None,
        };

        let job = new_job_id();
        let event = Event {
            schema: EVENT_SCHEMA,
            job_id: job.clone(),
            received_at: Utc::now(),
            kind: u.kind,
            source,
            gitlab_event: gitlab_event.to_string(),
            delivery_key: delivery.map(str::to_string),
            clone_url: gl.clone_url_for(&u.project.path),
            project: u.project,
            pusher: u.pusher,
            git_ref: u.git_ref,
            before: u.before,
            after: u.after,
            commit: u.commit,
            crashes: 0,
            infra_attempts: 0,
            fetch_timeouts: 0,
            not_before: None,
            last_error: None,
            regrade: None,
            raw,
        };
        let bytes = event.to_bytes();
        if let Some(state) = hold {
            self.hold(ukey, &event, bytes).await?;
            // A project_create or push of the tests between the lookup
            // above and the hold found nothing to release; it dropped the
            // cached answer, so this second look (a cache hit otherwise)
            // sees the tests.
            if matches!(self.repos.state(&tests).await, Ok(TestRepo::Ready)) {
                self.release_held(&tests).await;
            }
            let empty = state == TestRepo::Empty;
            return Ok(Outcome::Held { job, tests, empty });
        }
        let spool = self.spool.clone();
        let keys: Vec<String> = vec![ukey];
        let markers = self.markers.clone();
        let job2 = job.clone();
        let keys2 = keys.clone();
        // Marker first (a marker without its job is stale and ignored; a
        // job without its marker could be stored twice), then the event,
        // written but not yet fsynced: the group commit does that.
        let staged = tokio::task::spawn_blocking(move || {
            for k in &keys2 {
                if let Err(source) = markers.set(k, &job2) {
                    undo_markers(&markers, &keys2, &job2);
                    return Err(HookError::Marker {
                        path: markers.dir().to_path_buf(),
                        source,
                    });
                }
            }
            spool
                .stage(&format!("{job2}.json"), &bytes)
                .inspect_err(|_| undo_markers(&markers, &keys2, &job2))
                .map_err(HookError::from)
        })
        .await
        .map_err(|e| HookError::Task(e.to_string()))??;
        if let Err(e) = self.commit.publish(staged).await {
            undo_markers(&self.markers, &keys, &job);
            return Err(HookError::Sync(e));
        }
        metrics::inc(
            "labgrader_hook_accepted_total",
            "Pushes stored as new jobs, by kind.",
            &[(
                "kind",
                match event.kind {
                    crate::event::EventKind::Push => "push",
                    crate::event::EventKind::TagPush => "tag_push",
                },
            )],
        );
        tracing::info!(job_id = %job, project = %event.project.path, git_ref = %event.git_ref, sha = %event.commit, "push accepted");
        self.queue_pending_status(event);
        Ok(Outcome::Stored {
            job,
            duplicate: false,
        })
    }
}

/// The `raw` payload of one event: the body as received, except that a
/// repository_update's `changes` and `refs` are narrowed to this event's
/// ref, so a push of many refs does not copy the whole body into each of
/// its event files.
fn raw_for(raw: &serde_json::Value, u: &RefUpdate) -> serde_json::Value {
    let Some(obj) = raw.as_object() else {
        return raw.clone();
    };
    if !obj.contains_key("changes") {
        return raw.clone();
    }
    let mut narrowed: serde_json::Map<String, serde_json::Value> = obj
        .iter()
        .filter(|(k, _)| *k != "changes" && *k != "refs")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    narrowed.insert(
        "changes".into(),
        serde_json::json!([{"before": u.before, "after": u.after, "ref": u.git_ref}]),
    );
    narrowed.insert("refs".into(), serde_json::json!([u.git_ref]));
    serde_json::Value::Object(narrowed)
}

pub(super) fn undo_markers(markers: &Markers, keys: &[String], job: &str) {
    for k in keys {
        markers.remove_if(k, job);
    }
}
