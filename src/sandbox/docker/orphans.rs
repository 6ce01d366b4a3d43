//! Leftovers: finding this grader's job containers by their labels and
//! removing them: all of them once at start (a crashed daemon's), those
//! of jobs not running now periodically (an attempt the engine's restart
//! interrupted), and one job's before its retry. It never touches another
//! grader's containers nor the container of a job that runs now.

use bollard::models::ContainerSummaryStateEnum;

use super::container::{JOB_LABEL, OWNER_LABEL};
use super::engine::DockerRunner;
use crate::sandbox::spec::SandboxError;

impl DockerRunner {
    /// Remove the job containers (labelled `labgrader.job`) of this
    /// runner's owner, and those with no owner label (made before there
    /// was one): what a crashed daemon left. Call once at start, before
    /// any job runs: it also removes running ones. Another grader's
    /// containers on the same engine are left alone. Returns how many
    /// were removed.
    pub async fn remove_orphans(&self) -> Result<usize, SandboxError> {
        let ids: Vec<String> = self
            .list_labelled(JOB_LABEL)
            .await?
            .into_iter()
            .filter(|c| {
                let owner = c.labels.as_ref().and_then(|l| l.get(OWNER_LABEL));
                owner.is_none_or(|o| *o == self.owner)
            })
            .filter_map(|c| c.id)
            .collect();
        for id in &ids {
            tracing::warn!(container = %id, "removing orphaned job container");
            self.remove(id).await?;
        }
        Ok(ids.len())
    }

    /// Remove this owner's stopped job containers whose job `running` does
    /// not name (called periodically while jobs run). Returns how many.
    pub async fn sweep(
        &self,
        running: &std::collections::HashSet<String>,
    ) -> Result<usize, SandboxError> {
        let ids: Vec<String> = self
            .list_labelled(JOB_LABEL)
            .await?
            .into_iter()
            .filter(|c| {
                let labels = c.labels.as_ref();
                let owner = labels.and_then(|l| l.get(OWNER_LABEL));
                let job = labels.and_then(|l| l.get(JOB_LABEL));
                // Only stopped ones: a job claimed after `running` was
                // read has a created or running container, never kept
                // from it (the window is one list call, shorter than a run).
                let stopped = matches!(
                    c.state,
                    Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD)
                );
                owner.is_none_or(|o| *o == self.owner)
                    && job.is_none_or(|j| !running.contains(j))
                    && stopped
            })
            .filter_map(|c| c.id)
            .collect();
        for id in &ids {
            tracing::warn!(container = %id, "removing a job container its job left behind");
            self.remove(id).await?;
        }
        Ok(ids.len())
    }

    /// Remove the containers an earlier attempt of job `job_id` left
    /// (before its retry starts a new one). Returns how many.
    pub async fn remove_job(&self, job_id: &str) -> Result<usize, SandboxError> {
        let ids = self.job_containers(Some(job_id)).await?;
        for id in &ids {
            tracing::warn!(job_id, container = %id, "removing the container of an interrupted attempt");
            self.remove(id).await?;
        }
        Ok(ids.len())
    }

    /// Does the engine answer a ping now (within two seconds)?
    pub async fn answers(&self) -> bool {
        let ping = async {
            self.docker()
                .await?
                .ping()
                .await
                .map_err(super::engine::engine("ping"))
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), ping).await,
            Ok(Ok(_))
        )
    }

    /// Ids of the containers (any state) of job `job_id`, or of all jobs.
    pub async fn job_containers(&self, job_id: Option<&str>) -> Result<Vec<String>, SandboxError> {
        let label = match job_id {
            Some(id) => format!("{JOB_LABEL}={id}"),
            None => JOB_LABEL.to_string(),
        };
        let list = self.list_labelled(&label).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }
}
