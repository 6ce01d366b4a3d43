//! Leftovers of a crashed daemon: finding this grader's job containers
//! by their labels and removing them, once, at start. It never touches
//! another grader's containers nor a container of a job that runs now
//! (it is called before any job runs).

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
