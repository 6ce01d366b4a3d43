//! The grader's parts, wired once: configuration, spool, mirrors,
//! gradebook, runners and the course-policy gate.
//!
//! Owns [`Grader`]: what a daemon builds at start ([`Grader::new`]) and a
//! replay builds for one run ([`Grader::for_replay`], no policy gate), and
//! the few services every stage shares (the runner of a kind, the
//! gradebook write, the quota release). It never moves a job between spool
//! states and never decides a job's outcome.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{error, warn};

use crate::config::{Config, RunnerKind};
use crate::event::Event;
use crate::gitlab::GitlabApi;
use crate::gradebook::{self, Gradebook};
use crate::mirror::Mirrors;
use crate::policy::QuotaLedger;
use crate::reserve::Reserve;
use crate::result::JobResult;
use crate::sandbox::{self, Runner, SandboxError};
use crate::spool::Spool;
use crate::workspace::WorkspaceError;

use super::blame::{GraderError, GraderFault, Verdict};
use super::verdict::result_without_run;

/// One grader: configuration, spool, mirrors, gradebook, runners.
pub struct Grader {
    pub(super) cfg: Arc<Config>,
    pub(super) spool: Arc<Spool>,
    pub(super) mirrors: Mirrors,
    pub(super) gradebook: Arc<Mutex<Gradebook>>,
    runners: Mutex<HashMap<String, Arc<dyn Runner>>>,
    /// `<spool>/work/`: the job directories.
    pub(super) work: PathBuf,
    /// Course policy (manifest, authors, quota); `None` for replays.
    pub(super) gate: Option<PolicyGate>,
    /// `[spool] min_free`: no job is claimed under it.
    pub(super) reserve: Reserve,
    /// Jobs put back after a sandbox fault, waiting for the engine.
    pub(super) engine_waits: super::engine_waits::EngineWaits,
}

/// What admission needs besides the config.
pub(super) struct PolicyGate {
    pub(super) ledger: Arc<QuotaLedger>,
    pub(super) gitlab: Option<GitlabApi>,
}

impl Grader {
    /// Open the gradebook and mirrors under the spool and build the
    /// configured runner (refusing to start when it is unavailable).
    pub fn new(cfg: Arc<Config>, spool: Arc<Spool>) -> Result<Grader, GraderError> {
        let root = spool.root().to_path_buf();
        let mut g = Grader::unguarded(cfg, spool)?;
        std::fs::create_dir_all(&g.work).map_err(|source| {
            GraderFault::Workspace(WorkspaceError::Write {
                path: g.work.clone(),
                source,
            })
        })?;
        let ledger = QuotaLedger::in_spool(&root)?;
        let gitlab = GitlabApi::from_config(&g.cfg, crate::httpc::HttpClient::new());
        g.gate = Some(PolicyGate {
            ledger: Arc::new(ledger),
            gitlab,
        });
        g.runner(g.cfg.grader.runner)?;
        g.check_assignment_images()?;
        Ok(g)
    }

    /// Every `[assignments.NAME] image` that runs on docker must be on the
    /// engine at start, like `[docker] image`: a mistyped one otherwise
    /// shows only when a student's job fails on it.
    fn check_assignment_images(&self) -> Result<(), GraderError> {
        for (name, a) in &self.cfg.assignments {
            let Some(image) = &a.image else { continue };
            let kind = a.runner.unwrap_or(self.cfg.grader.runner);
            if self.runner(kind)?.name() != "docker" {
                continue;
            }
            let docker = crate::config::DockerConfig {
                image: image.clone(),
                ..self.cfg.docker.clone()
            };
            crate::sandbox::docker::DockerRunner::connect_blocking(&docker).map_err(|e| {
                GraderError::AssignmentImage {
                    assignment: name.clone(),
                    source: e,
                }
            })?;
        }
        Ok(())
    }

    /// A grader without the course-policy gate (nothing is admitted or
    /// charged), for `replay`.
    pub(super) fn for_replay(cfg: Arc<Config>, spool: Arc<Spool>) -> Result<Grader, GraderError> {
        Grader::unguarded(cfg, spool)
    }

    fn unguarded(cfg: Arc<Config>, spool: Arc<Spool>) -> Result<Grader, GraderError> {
        let root = spool.root();
        Ok(Grader {
            mirrors: Mirrors::new(
                root.join("mirrors"),
                cfg.grader.git_timeout.get(),
                cfg.secrets.gitlab_token.clone(),
            ),
            gradebook: Arc::new(Mutex::new(Gradebook::open(&gradebook::path_in(root))?)),
            runners: Mutex::new(HashMap::new()),
            work: super::jobdir::work_dir(root),
            gate: None,
            reserve: Reserve::new(root, cfg.spool.min_free.bytes()),
            engine_waits: Default::default(),
            cfg,
            spool,
        })
    }

    /// The runner of `kind`, built on first use.
    pub(super) fn runner(&self, kind: RunnerKind) -> Result<Arc<dyn Runner>, SandboxError> {
        let mut g = self.runners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = g.get(&kind.to_string()) {
            return Ok(r.clone());
        }
        let r = sandbox::build_runner(&self.cfg, kind)?;
        g.insert(kind.to_string(), r.clone());
        Ok(r)
    }

    /// Start-up: remove the sandboxes (docker containers) that jobs of a
    /// crashed daemon left behind, before any job runs.
    pub async fn remove_orphans(&self) -> Result<(), SandboxError> {
        let runners: Vec<Arc<dyn Runner>> = {
            let g = self.runners.lock().unwrap_or_else(|p| p.into_inner());
            g.values().cloned().collect()
        };
        for r in runners {
            let n = r.remove_orphans().await?;
            if n > 0 {
                warn!(
                    runner = r.name(),
                    removed = n,
                    "removed sandboxes left by a crash"
                );
            }
        }
        Ok(())
    }

    /// Write `result`'s gradebook row (off the async threads).
    pub(super) async fn record_gradebook(&self, result: JobResult) -> Result<(), GraderFault> {
        let gb = self.gradebook.clone();
        tokio::task::spawn_blocking(move || {
            gb.lock().unwrap_or_else(|p| p.into_inner()).record(&result)
        })
        .await??;
        Ok(())
    }

    /// The gradebook row of job `job_id`, if any (`None` on any error).
    pub(super) async fn gradebook_row(&self, job_id: &str) -> Option<JobResult> {
        let (gb, id) = (self.gradebook.clone(), job_id.to_string());
        tokio::task::spawn_blocking(move || gb.lock().unwrap_or_else(|p| p.into_inner()).get(&id))
            .await
            .ok()?
            .ok()?
    }

    /// A result for a job that did not run, naming the configured runner.
    pub(super) fn bare_result(
        &self,
        ev: &Event,
        tests_sha: Option<String>,
        verdict: Verdict,
    ) -> JobResult {
        result_without_run(ev, &self.cfg.grader.runner.to_string(), tests_sha, verdict)
    }

    /// Give back the quota slots of a job that failed by the grader's
    /// fault (never charged to the student).
    pub(super) fn release_quota(&self, ev: &Event) {
        if let Some(gate) = &self.gate
            && let Err(e) = gate.ledger.release(&ev.job_id)
        {
            error!(job_id = %ev.job_id, error = %e, "cannot release the job's quota slots");
        }
    }
}
