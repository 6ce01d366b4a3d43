//! The checks that span more than one value (single values are checked by
//! their types while parsing, with line numbers). Each refusal names the
//! key and says what would be accepted; nothing here changes the config.

use std::path::PathBuf;

use super::assignment::{LatePolicy, Trigger};
use super::error::ConfigError;
use super::sections::Config;
use super::values::{RunnerKind, parse_ids};

/// Upper bound of `[slurm] max_in_flight`: beyond it slurmctld's queue, not
/// the spool, would hold the backlog.
const MAX_SLURM_IN_FLIGHT: usize = 10_000;

impl Config {
    pub(super) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self
                .source
                .clone()
                .unwrap_or_else(|| PathBuf::from("<defaults>")),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Checks that span more than one value (single values are checked by
    /// their types while parsing, with line numbers).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.server.max_body.0 < 1024 {
            return Err(self.invalid("server.max_body", "must be at least 1KiB"));
        }
        if !self.gitlab.clone_url.contains("{path}") {
            return Err(self.invalid(
                "gitlab.clone_url",
                "must contain {path} (the project's namespace/name)",
            ));
        }
        if !self.gitlab.project_hook_url.is_empty()
            && !self.gitlab.project_hook_url.starts_with("http://")
            && !self.gitlab.project_hook_url.starts_with("https://")
        {
            return Err(self.invalid(
                "gitlab.project_hook_url",
                "must be an http:// or https:// URL, or empty",
            ));
        }
        if self.gitlab.tests_namespace.is_empty() {
            return Err(self.invalid("gitlab.tests_namespace", "must not be empty"));
        }
        if self.spool.dedup_window.0 < self.deliver.retry_for.0 {
            return Err(self.invalid(
                "spool.dedup_window",
                "must be at least deliver.retry_for (a re-sent delivery or a retried \
                 status stage within it must still be recognized)",
            ));
        }
        if self.grader.timeout.0.is_zero() {
            return Err(self.invalid("grader.timeout", "must be longer than zero"));
        }
        if self.grader.memory.0 < 4 << 20 {
            return Err(self.invalid("grader.memory", "must be at least 4MiB"));
        }
        if self.grader.pids == 0 {
            return Err(self.invalid("grader.pids", "must be at least 1"));
        }
        if self.grader.output_limit.0 < 1024 {
            return Err(self.invalid("grader.output_limit", "must be at least 1KiB"));
        }
        if !(self.docker.cpus > 0.0 && self.docker.cpus.is_finite()) {
            return Err(self.invalid("docker.cpus", "must be a positive number"));
        }
        let student = parse_ids(&self.docker.user).map_err(|m| self.invalid("docker.user", m))?;
        let harness = parse_ids(&self.docker.harness_user)
            .map_err(|m| self.invalid("docker.harness_user", m))?;
        if student.0 == harness.0 {
            return Err(self.invalid(
                "docker.harness_user",
                "must have another uid than docker.user (the student must not be able to \
                 signal or read the harness)",
            ));
        }
        if self.slurm.poll_interval.0.is_zero() {
            return Err(self.invalid("slurm.poll_interval", "must be longer than zero"));
        }
        if !(1..=MAX_SLURM_IN_FLIGHT).contains(&self.slurm.max_in_flight) {
            return Err(self.invalid(
                "slurm.max_in_flight",
                format!(
                    "must be between 1 and {MAX_SLURM_IN_FLIGHT} (jobs in Slurm at once; the \
                     others wait in the spool)"
                ),
            ));
        }
        if self.slurm.pilots > 0 {
            let s = &self.slurm;
            if s.pilot_slots == 0 || s.pilot_cpus == 0 {
                return Err(self.invalid(
                    "slurm.pilot_slots",
                    "pilot_slots and pilot_cpus must be at least 1 when pilots are used",
                ));
            }
            if s.pilot_memory.0 < (256 << 20) {
                return Err(self.invalid("slurm.pilot_memory", "must be at least 256MiB"));
            }
            if s.pilot_lifetime.0 < std::time::Duration::from_secs(300) {
                return Err(self.invalid(
                    "slurm.pilot_lifetime",
                    "must be at least 5m (a pilot takes no job that could outlive it)",
                ));
            }
            if s.pilot_idle.0.is_zero() {
                return Err(self.invalid("slurm.pilot_idle", "must be longer than zero"));
            }
        }
        if !self.slurm.shared_dir.is_absolute() {
            return Err(self.invalid(
                "slurm.shared_dir",
                "must be an absolute path (the same on every node)",
            ));
        }
        if self.deliver.backoff_min.0 > self.deliver.backoff_max.0 {
            return Err(self.invalid(
                "deliver.backoff_min",
                "must not be longer than deliver.backoff_max",
            ));
        }
        if self.deliver.concurrency == 0 {
            return Err(self.invalid("deliver.concurrency", "must be at least 1"));
        }
        if self.deliver.backoff_min.0.is_zero() {
            return Err(self.invalid("deliver.backoff_min", "must be longer than zero"));
        }
        if !self.email.url.is_empty()
            && self.email.url != "sendmail"
            && !self.email.url.starts_with("smtp://")
            && !self.email.url.starts_with("smtps://")
        {
            return Err(self.invalid(
                "email.url",
                "must be smtp://HOST[:PORT], smtps://HOST[:PORT], sendmail, or empty",
            ));
        }
        for (name, a) in &self.assignments {
            if a.trigger == Trigger::Tag && a.tag_pattern.is_none() {
                return Err(self.invalid(
                    &format!("assignments.{name}.tag_pattern"),
                    "required when trigger = \"tag\" (e.g. \"submit-*\")",
                ));
            }
            let key = |k: &str| format!("assignments.{name}.{k}");
            if a.tag_pattern
                .as_deref()
                .is_some_and(|p| p.trim().is_empty())
            {
                return Err(self.invalid(&key("tag_pattern"), "must not be empty"));
            }
            if a.timeout.is_some_and(|t| t.0.is_zero()) {
                return Err(self.invalid(&key("timeout"), "must be longer than zero"));
            }
            if a.memory.is_some_and(|m| m.0 < 4 << 20) {
                return Err(self.invalid(&key("memory"), "must be at least 4MiB"));
            }
            if a.pids == Some(0) {
                return Err(self.invalid(&key("pids"), "must be at least 1"));
            }
            if a.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
                return Err(self.invalid(
                    &key("image"),
                    "must not be empty (leave it out to use docker.image)",
                ));
            }
            if a.quota.is_some_and(|q| q.count == 0) {
                return Err(self.invalid(
                    &key("quota"),
                    "count must be at least 1; to close an assignment use a deadline with late = \"reject\"",
                ));
            }
            if a.grace.is_some() && a.deadline.is_none() {
                return Err(self.invalid(&key("grace"), "needs a deadline"));
            }
            if a.late != LatePolicy::Accept && a.deadline.is_none() {
                return Err(self.invalid(&key("late"), "needs a deadline"));
            }
            if a.staff.iter().any(|s| s.trim().is_empty()) {
                return Err(self.invalid(&key("staff"), "holds an empty username"));
            }
            if let Some((test, p)) = a
                .junit_points
                .iter()
                .find(|(_, p)| !p.is_finite() || **p < 0.0)
            {
                return Err(self.invalid(
                    &key("junit_points"),
                    format!("`{test}` = {p}: points must be a finite number, not negative"),
                ));
            }
            if a.runner == Some(RunnerKind::Auto) {
                return Err(self.invalid(
                    &format!("assignments.{name}.runner"),
                    "must name a runner (docker, native, slurm, none); auto is only for [grader]",
                ));
            }
        }
        super::web::check(&self.web, &self.assignments).map_err(|(k, m)| self.invalid(&k, m))?;
        let problem = self.alerts.problem(!self.email.url.is_empty()).or_else(|| {
            super::alerts::hold_problem(
                &self.gitlab.student_namespaces,
                &self.gitlab.tests_namespace,
                self.spool.hold_for.get(),
            )
        });
        let problem = problem.or_else(|| {
            super::alerts::held_limit_problem(
                self.spool.held_per_project,
                self.spool.held_per_namespace,
            )
        });
        match problem {
            Some((key, message)) => Err(self.invalid(key, message)),
            None => Ok(()),
        }
    }
}
