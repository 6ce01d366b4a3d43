//! What a job of an assignment may use and how it runs.
//!
//! Owns the one resolution of a job's settings: `[grader]` (and
//! `[docker] cpus`) with the `[assignments.NAME]` overrides: its limits,
//! its runner, its image, its grading contract, the points of its
//! `junit.xml` testcases and its workspace size. Pure: it reads the
//! config and nothing else, and never builds a runner.

use crate::config::{Config, Contract, RunnerKind};
use crate::result::Limits;
use crate::results::junit::Points;
use crate::workspace::WorkspaceLimits;

/// `RLIMIT_NOFILE` given to test runs.
const OPEN_FILES: u64 = 1024;

/// How one job of an assignment runs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    pub limits: Limits,
    /// `[grader] runner` (possibly `auto`) unless the assignment overrides it.
    pub runner: RunnerKind,
    /// The assignment's image; `None` = the runner's configured default.
    pub image: Option<String>,
    pub contract: Contract,
    /// `junit_points`: points of `junit.xml` testcases by name.
    pub junit_points: Points,
}

impl JobPlan {
    /// The plan of a job of `assignment`.
    pub fn of(cfg: &Config, assignment: &str) -> JobPlan {
        let a = cfg.assignments.get(assignment);
        JobPlan {
            limits: limits_for(cfg, assignment),
            runner: a.and_then(|a| a.runner).unwrap_or(cfg.grader.runner),
            image: a.and_then(|a| a.image.clone()),
            contract: contract_for(cfg, assignment),
            junit_points: a.map(|a| a.junit_points.clone()).unwrap_or_default(),
        }
    }
}

/// Limits of a job of `assignment`: `[grader]` with the assignment's overrides.
pub fn limits_for(cfg: &Config, assignment: &str) -> Limits {
    let a = cfg.assignments.get(assignment);
    let g = &cfg.grader;
    Limits {
        timeout: a.and_then(|a| a.timeout).unwrap_or(g.timeout).get(),
        memory: a.and_then(|a| a.memory).unwrap_or(g.memory).bytes(),
        pids: a.and_then(|a| a.pids).unwrap_or(g.pids),
        output: g.output_limit.bytes(),
        cpus: cfg.docker.cpus,
        file_size: g.workspace_limit.bytes(),
        open_files: OPEN_FILES,
        disk: g.disk.bytes(),
    }
}

/// Size limits of a job's workspace: `workspace_limit`, `workspace_files`.
pub fn workspace_limits(cfg: &Config) -> WorkspaceLimits {
    WorkspaceLimits {
        bytes: cfg.grader.workspace_limit.bytes(),
        files: cfg.grader.workspace_files,
    }
}

/// The grading contract of `assignment`: its own, else `[grader] contract`.
pub fn contract_for(cfg: &Config, assignment: &str) -> Contract {
    cfg.assignments
        .get(assignment)
        .and_then(|a| a.contract)
        .unwrap_or(cfg.grader.contract)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn assignments_override_grader_and_docker() {
        let c = Config::from_toml(
            "[grader]\ntimeout = \"60s\"\nmemory = \"128MiB\"\npids = 64\nrunner = \"docker\"\n\
             [docker]\nimage = \"base:1\"\n\
             [assignments.big]\ntimeout = \"10m\"\nmemory = \"2GiB\"\nimage = \"ml:2\"\nrunner = \"native\"\n\
             [assignments.small]\npids = 8\n",
            None,
        )
        .unwrap();
        let big = JobPlan::of(&c, "big");
        assert_eq!(
            (big.limits.timeout, big.limits.memory, big.limits.pids),
            (Duration::from_secs(600), 2 << 30, 64)
        );
        assert_eq!(big.limits.output, c.grader.output_limit.bytes());
        assert_eq!(big.image.as_deref(), Some("ml:2"));
        assert_eq!(big.runner, RunnerKind::Native);
        let small = JobPlan::of(&c, "small");
        assert_eq!(
            (small.limits.timeout, small.limits.memory, small.limits.pids),
            (Duration::from_secs(60), 128 << 20, 8)
        );
        assert_eq!(small.image, None);
        assert_eq!(small.runner, RunnerKind::Docker);
        assert_eq!(small.limits, limits_for(&c, "small"));
        let none = JobPlan::of(&c, "other");
        assert_eq!(none.limits.timeout, c.grader.timeout.get());
        assert_eq!(none.contract, c.grader.contract);
    }

    #[test]
    fn junit_points_come_from_the_assignment_and_must_be_sane() {
        let c = Config::from_toml(
            "[assignments.lab1.junit_points]\n\"test_lab.test_add\" = 2.5\ntest_sub = 4\n",
            None,
        )
        .unwrap();
        let p = JobPlan::of(&c, "lab1").junit_points;
        assert_eq!((p["test_lab.test_add"], p["test_sub"]), (2.5, 4.0));
        assert!(JobPlan::of(&c, "lab2").junit_points.is_empty());
        let e = Config::from_toml("[assignments.lab1.junit_points]\nt = -1\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("assignments.lab1.junit_points") && e.contains("not negative"),
            "{e}"
        );
    }
}
