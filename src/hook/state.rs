//! The hook server's shared state ([`Hook`]) and its start-up: sweeping
//! dead writers' tmp files, restoring dedup markers of waiting events,
//! making what is on disk durable, starting the group commit; and the
//! hourly pruning of old markers. It never answers a request.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::dedup::{KeyLocks, Markers, job_exists, update_key};
use super::error::HookError;
use super::sync::GroupCommit;
use super::testrepos::TestRepos;
use crate::config::{Config, Secret};
use crate::event::Event;
use crate::reserve::Reserve;
use crate::spool::{Spool, State};

/// Shared state of the server.
#[derive(Debug)]
pub(super) struct Hook {
    pub(super) cfg: Arc<Config>,
    pub(super) spool: Arc<Spool>,
    pub(super) token: Option<Secret>,
    pub(super) markers: Markers,
    pub(super) locks: KeyLocks,
    pub(super) commit: GroupCommit,
    pub(super) repos: TestRepos,
    /// `[spool] min_free`: no new job under it.
    pub(super) reserve: Reserve,
}

/// At start and then hourly, drop dedup markers past `[spool] dedup_window`.
pub(super) async fn prune_markers(hook: Arc<Hook>, shutdown: CancellationToken) {
    let window = hook.cfg.spool.dedup_window.get();
    loop {
        let h = hook.clone();
        let pruned =
            tokio::task::spawn_blocking(move || h.markers.prune(h.spool.root(), window)).await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(removed = n, ?window, "pruned dedup markers past the window")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune spool/keys/"),
            Err(e) => tracing::warn!(error = %e, "marker pruning task failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(crate::spool::HOUSEKEEPING_EVERY) => {}
        }
    }
}

impl Hook {
    /// Prepare the spool for intake: sweep tmp files of dead writers,
    /// make sure every waiting event has its dedup markers, and make what
    /// is on disk durable.
    pub(super) fn start(cfg: Arc<Config>, spool: Arc<Spool>) -> Result<Hook, HookError> {
        let prep = |source| HookError::Prepare {
            path: spool.root().to_path_buf(),
            source,
        };
        let swept = spool.sweep_dead_tmp()?;
        if swept > 0 {
            tracing::info!(swept, "removed tmp/ files of writers that died");
        }
        let markers = Markers::open(spool.root()).map_err(prep)?;
        let rebuilt = rebuild_markers(&spool, &markers).map_err(prep)?;
        if rebuilt > 0 {
            tracing::info!(rebuilt, "restored dedup markers of waiting events");
        }
        // What a previous life left visible but maybe not durable (it was
        // killed before its fsyncs) is made durable before anyone is told
        // "duplicate" about it.
        for d in [spool.dir(State::Incoming), markers.dir().to_path_buf()] {
            crate::spool::fsync_dir(&d).map_err(prep)?;
        }
        let commit =
            GroupCommit::start(spool.clone(), vec![markers.dir().to_path_buf()]).map_err(prep)?;
        let token = cfg.secrets.webhook_token.clone();
        if token.is_none() {
            tracing::warn!(
                "NO WEBHOOK TOKEN CONFIGURED: anyone who can reach this server can queue \
                 grading jobs. Set server.webhook_token_file or LABGRADER_WEBHOOK_TOKEN and \
                 the same secret token in GitLab's hook settings."
            );
        }
        let repos = TestRepos::new(&cfg);
        let reserve = Reserve::new(spool.root(), cfg.spool.min_free.bytes());
        Ok(Hook {
            cfg,
            reserve,
            spool,
            token,
            markers,
            locks: KeyLocks::default(),
            commit,
            repos,
        })
    }
}

/// Recreate missing markers of events waiting in `incoming/` and `active/`
/// (a crash may have made an event durable before its marker).
fn rebuild_markers(spool: &Spool, markers: &Markers) -> std::io::Result<usize> {
    let mut made = 0;
    for state in [State::Incoming, State::Active] {
        let names = spool
            .list(state)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for name in names {
            let Ok(bytes) = spool.read(state, &name) else {
                continue;
            };
            // Unparseable files are the grader's to quarantine.
            let Ok(ev) = Event::from_bytes(&bytes) else {
                continue;
            };
            let keys = [update_key(
                &ev.project.path,
                &ev.git_ref,
                &ev.before,
                &ev.after,
            )];
            for k in keys {
                let ok = markers
                    .get(&k)
                    .is_some_and(|j| job_exists(spool.root(), &j));
                if !ok {
                    markers.set(&k, &ev.job_id)?;
                    made += 1;
                }
            }
        }
    }
    Ok(made)
}
