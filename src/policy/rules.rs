//! The rules of one assignment for one push: its resolved settings
//! ([`ResolvedPolicy`]), whether the push is a submission, whether it is
//! late. Pure decisions from the config and the facts a caller hands in;
//! nothing here reads a file, the spool or the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};

use crate::config::{Config, LatePolicy, ManifestPolicy, Quota, Trigger};
use crate::event::{EventKind, ZERO_SHA};

use super::quota::{QuotaDecision, QuotaError, QuotaLedger};

/// Answer text for a push that is not a matching tag in tag mode.
pub const NOT_A_SUBMISSION_TAG: &str = "not a submission tag";
/// Answer text for a branch or tag deletion.
pub const DELETION: &str = "a deletion is not a submission";

/// The policy of one assignment, resolved from the config once per event.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPolicy {
    /// The student repository's name (the key of `[assignments.NAME]`).
    pub assignment: String,
    /// False when the config has no section for it (every push graded).
    pub configured: bool,
    pub trigger: Trigger,
    pub tag_pattern: Option<String>,
    pub manifest: ManifestPolicy,
    /// Roster CSV, resolved against the config file's directory.
    pub roster: Option<PathBuf>,
    pub quota: Option<Quota>,
    /// Usernames whose pushes are exempt from the quota (lower-cased).
    pub staff: Vec<String>,
    pub deadline: Option<DateTime<FixedOffset>>,
    pub grace: Duration,
    pub late: LatePolicy,
}

impl ResolvedPolicy {
    /// The policy for the student repository named `project_name` (the last
    /// component of its path). No section = the defaults: every push to a
    /// branch is a submission, no manifest needed, no quota, no deadline.
    pub fn for_project(cfg: &Config, project_name: &str) -> ResolvedPolicy {
        let section = cfg.assignments.get(project_name);
        let a = section.cloned().unwrap_or_default();
        let base_dir = cfg
            .source
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let roster = a.roster.map(|p| match (&base_dir, p.is_relative()) {
            (Some(dir), true) => dir.join(p),
            _ => p,
        });
        ResolvedPolicy {
            assignment: project_name.to_string(),
            configured: section.is_some(),
            trigger: a.trigger,
            tag_pattern: a.tag_pattern,
            manifest: a.manifest,
            roster,
            quota: a.quota,
            staff: a.staff.iter().map(|s| s.trim().to_lowercase()).collect(),
            deadline: a.deadline,
            grace: a.grace.map(|g| g.get()).unwrap_or_default(),
            late: a.late,
        }
    }

    /// Whether `username` is staff (their pushes take no quota).
    pub fn is_staff(&self, username: &str) -> bool {
        let u = username.trim().to_lowercase();
        self.staff.contains(&u)
    }

    /// The last moment a submission is on time (deadline + grace).
    pub fn due(&self) -> Option<DateTime<Utc>> {
        let d = self.deadline?.with_timezone(&Utc);
        Some(d + chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX))
    }

    /// Take one quota slot for every author of job `job_id`, all or none,
    /// at the submission time `at` (the hook's receipt time). The staff
    /// exemption is the pusher's: a push by staff takes no slot, and a
    /// student who lists staff among the authors is charged like any other
    /// submission. No quota configured → [`QuotaDecision::Exempt`].
    /// Blocking (SQLite): call it from `spawn_blocking` in async code.
    pub fn take_quota(
        &self,
        ledger: &QuotaLedger,
        pusher: Option<&str>,
        authors: &[String],
        job_id: &str,
        at: DateTime<Utc>,
    ) -> Result<QuotaDecision, QuotaError> {
        let Some(quota) = self.quota else {
            return Ok(QuotaDecision::Exempt);
        };
        if pusher.is_some_and(|p| self.is_staff(p)) {
            return Ok(QuotaDecision::Exempt);
        }
        let counted: Vec<&str> = authors.iter().map(String::as_str).collect();
        if counted.is_empty() {
            return Ok(QuotaDecision::Exempt);
        }
        ledger.try_take_all(&self.assignment, &counted, job_id, quota, at)
    }
}

/// The facts of a push that decide whether it is a submission.
#[derive(Debug, Clone, Copy)]
pub struct PushFacts<'a> {
    pub kind: EventKind,
    /// Full ref, e.g. `refs/heads/main` or `refs/tags/submit-1`.
    pub git_ref: &'a str,
    /// The pushed SHA; all zeros for a deletion.
    pub after: &'a str,
    /// When the hook received the event: the submission time.
    pub received_at: DateTime<Utc>,
}

/// Why a push is not graded (answered `ignored: <text>`; nothing stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Tag mode and the push is not a tag matching `tag_pattern`.
    NotSubmissionTag,
    /// A branch or tag deletion (nothing to grade).
    Deletion,
}

impl IgnoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::NotSubmissionTag => NOT_A_SUBMISSION_TAG,
            IgnoreReason::Deletion => DELETION,
        }
    }

    /// Short code for metrics (`labgrader_hook_ignored_total{reason}`).
    pub fn code(self) -> &'static str {
        match self {
            IgnoreReason::NotSubmissionTag => "not_submission_tag",
            IgnoreReason::Deletion => "deletion",
        }
    }
}

impl std::fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accepted submission and what the result must record about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Acceptance {
    pub received_at: DateTime<Utc>,
    /// Past deadline + grace and `late = "flag"`.
    pub late: bool,
    /// Past deadline + grace (whatever the late policy).
    pub after_deadline: bool,
    pub deadline: Option<DateTime<FixedOffset>>,
}

impl Acceptance {
    /// Facts for `JobResult::extra` (and the gradebook's `late` column).
    pub fn extras(&self) -> BTreeMap<String, serde_json::Value> {
        let mut m = BTreeMap::new();
        m.insert("late".into(), serde_json::Value::Bool(self.late));
        if let Some(d) = self.deadline {
            m.insert("deadline".into(), serde_json::Value::String(d.to_rfc3339()));
            m.insert(
                "after_deadline".into(),
                serde_json::Value::Bool(self.after_deadline),
            );
        }
        m
    }
}

/// What to do with a push.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Grade it.
    Accept(Acceptance),
    /// Not a submission: answer `ignored: {reason}`, store nothing.
    Ignore(IgnoreReason),
    /// A submission refused by policy (`late = "reject"`): keep it in
    /// `failed/` with reason `late` and tell the student `message`.
    Reject {
        reason: &'static str,
        message: String,
    },
}

/// The hook's one question: should this push be answered
/// `ignored: {reason}` and stored nowhere? `None` = write the event
/// (lateness, manifest and quota are the grader's business, so a late
/// push is still stored and refused later with an email).
pub fn hook_ignores(
    cfg: &Config,
    project_name: &str,
    push: &PushFacts<'_>,
) -> Option<IgnoreReason> {
    match decide_submission(&ResolvedPolicy::for_project(cfg, project_name), push) {
        Decision::Ignore(r) => Some(r),
        Decision::Accept(_) | Decision::Reject { .. } => None,
    }
}

/// Decide whether a push is a submission for `policy`, and if it is late.
pub fn decide_submission(policy: &ResolvedPolicy, push: &PushFacts<'_>) -> Decision {
    let deletion = push.after.is_empty() || push.after == ZERO_SHA;
    match policy.trigger {
        // Every push (branch or tag) is a submission, as gitlab-ag did.
        Trigger::Push => {
            if deletion {
                return Decision::Ignore(IgnoreReason::Deletion);
            }
        }
        Trigger::Tag => {
            let tag = push.git_ref.strip_prefix("refs/tags/");
            let pattern = policy.tag_pattern.as_deref().unwrap_or("*");
            match tag {
                Some(name) if push.kind == EventKind::TagPush && glob_match(pattern, name) => {
                    if deletion {
                        return Decision::Ignore(IgnoreReason::Deletion);
                    }
                }
                _ => return Decision::Ignore(IgnoreReason::NotSubmissionTag),
            }
        }
    }
    judge_lateness(policy, push.received_at)
}

/// The deadline part of [`decide_submission`] alone: `Accept` (with the
/// late flag) or `Reject` for a submission received at `received_at`.
/// The grader calls it again at grading time (through `admit`), so a
/// deadline moved by staff applies to jobs still waiting.
pub fn judge_lateness(policy: &ResolvedPolicy, received_at: DateTime<Utc>) -> Decision {
    let push = PushFacts {
        kind: EventKind::Push,
        git_ref: "",
        after: "",
        received_at,
    };
    let after_deadline = policy.due().is_some_and(|due| push.received_at > due);
    if after_deadline && policy.late == LatePolicy::Reject {
        let due = policy.deadline.expect("due() implies a deadline");
        let grace = if policy.grace.is_zero() {
            String::new()
        } else {
            format!(" (grace {})", humantime::format_duration(policy.grace))
        };
        return Decision::Reject {
            reason: "late",
            message: format!(
                "received at {} after the deadline {}{grace}; late submissions are not graded",
                push.received_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                due.to_rfc3339(),
            ),
        };
    }
    Decision::Accept(Acceptance {
        received_at: push.received_at,
        late: after_deadline && policy.late == LatePolicy::Flag,
        after_deadline,
        deadline: policy.deadline,
    })
}

/// Shell-style match of a whole name: `*` any run of characters (also
/// `/`), `?` exactly one character, everything else literal. No classes,
/// no escapes: tag names rarely need them and a pattern never fails.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where the last `*` was, and the text position it currently covers to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text, None).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const SHA: &str = "1234567890123456789012345678901234567890";

    fn push<'a>(kind: EventKind, git_ref: &'a str, after: &'a str) -> PushFacts<'a> {
        PushFacts {
            kind,
            git_ref,
            after,
            received_at: Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap(),
        }
    }

    #[test]
    fn glob_rules() {
        for (p, t, want) in [
            ("submit-*", "submit-1", true),
            ("submit-*", "submit-", true),
            ("submit-*", "submit", false),
            ("submit-*", "xsubmit-1", false),
            ("submit-?", "submit-1", true),
            ("submit-?", "submit-12", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*-final", "lab-1-final", true),
            ("**x", "abx", true),
            ("v?.*", "v1.2.3", true),
            ("é*", "été", true),
            ("submit-*", "submit-a/b", true),
            ("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn no_section_grades_every_branch_push() {
        let c = cfg("");
        let p = ResolvedPolicy::for_project(&c, "lab1");
        assert!(!p.configured);
        assert_eq!(p.trigger, Trigger::Push);
        assert!(matches!(
            decide_submission(&p, &push(EventKind::Push, "refs/heads/main", SHA)),
            Decision::Accept(Acceptance { late: false, .. })
        ));
        assert_eq!(
            decide_submission(&p, &push(EventKind::Push, "refs/heads/main", ZERO_SHA)),
            Decision::Ignore(IgnoreReason::Deletion)
        );
        assert!(matches!(
            decide_submission(&p, &push(EventKind::TagPush, "refs/tags/v1", SHA)),
            Decision::Accept(_)
        ));
    }

    #[test]
    fn tag_mode_grades_only_matching_tags() {
        let c = cfg("[assignments.lab1]\ntrigger = \"tag\"\ntag_pattern = \"submit-*\"\n");
        let p = ResolvedPolicy::for_project(&c, "lab1");
        let d = decide_submission(&p, &push(EventKind::Push, "refs/heads/main", SHA));
        assert_eq!(d, Decision::Ignore(IgnoreReason::NotSubmissionTag));
        assert_eq!(
            IgnoreReason::NotSubmissionTag.to_string(),
            "not a submission tag"
        );
        assert_eq!(
            decide_submission(&p, &push(EventKind::TagPush, "refs/tags/v1", SHA)),
            Decision::Ignore(IgnoreReason::NotSubmissionTag)
        );
        assert!(matches!(
            decide_submission(&p, &push(EventKind::TagPush, "refs/tags/submit-1", SHA)),
            Decision::Accept(_)
        ));
        // A branch named like the pattern is still not a tag.
        assert_eq!(
            decide_submission(&p, &push(EventKind::Push, "refs/heads/submit-1", SHA)),
            Decision::Ignore(IgnoreReason::NotSubmissionTag)
        );
        // Another assignment keeps the defaults.
        let other = ResolvedPolicy::for_project(&c, "lab2");
        assert_eq!(other.trigger, Trigger::Push);
    }

    #[test]
    fn hook_stores_late_pushes_and_ignores_only_non_submissions() {
        let c = cfg(
            "[assignments.lab1]\ntrigger = \"tag\"\ntag_pattern = \"submit-*\"\n\
             deadline = \"2000-01-01T00:00:00Z\"\nlate = \"reject\"\n",
        );
        assert_eq!(
            hook_ignores(&c, "lab1", &push(EventKind::Push, "refs/heads/main", SHA)),
            Some(IgnoreReason::NotSubmissionTag)
        );
        assert_eq!(
            hook_ignores(
                &c,
                "lab1",
                &push(EventKind::TagPush, "refs/tags/submit-2", SHA)
            ),
            None
        );
        assert_eq!(
            hook_ignores(&c, "other", &push(EventKind::Push, "refs/heads/main", SHA)),
            None
        );
    }

    #[test]
    fn tag_deletion_is_never_a_submission() {
        let c = cfg("[assignments.lab1]\ntrigger = \"tag\"\ntag_pattern = \"submit-*\"\n");
        let p = ResolvedPolicy::for_project(&c, "lab1");
        assert_eq!(
            decide_submission(
                &p,
                &push(EventKind::TagPush, "refs/tags/submit-1", ZERO_SHA)
            ),
            Decision::Ignore(IgnoreReason::Deletion)
        );
    }

    fn deadline_policy(late: &str) -> ResolvedPolicy {
        let c = cfg(&format!(
            "[assignments.lab1]\ndeadline = \"2026-12-01T23:59:00+01:00\"\ngrace = \"5m\"\nlate = \"{late}\"\n"
        ));
        ResolvedPolicy::for_project(&c, "lab1")
    }

    fn at_time(p: &ResolvedPolicy, when: &str) -> Decision {
        let mut f = push(EventKind::Push, "refs/heads/main", SHA);
        f.received_at = at(when);
        decide_submission(p, &f)
    }

    #[test]
    fn deadline_grace_boundaries() {
        let p = deadline_policy("flag");
        // 23:59+01:00 = 22:59Z; grace 5 min → due 23:04:00Z, inclusive.
        assert_eq!(p.due(), Some(at("2026-12-01T23:04:00Z")));
        for (when, late) in [
            ("2026-12-01T22:00:00Z", false),
            ("2026-12-01T23:03:59Z", false),
            ("2026-12-01T23:04:00Z", false),
            ("2026-12-01T23:04:01Z", true),
            ("2026-12-02T09:00:00+09:00", true),
        ] {
            match at_time(&p, when) {
                Decision::Accept(a) => {
                    assert_eq!(a.late, late, "{when}");
                    assert_eq!(a.extras()["late"], serde_json::Value::Bool(late));
                }
                other => panic!("{when}: {other:?}"),
            }
        }
    }

    #[test]
    fn late_accept_grades_without_flag() {
        let p = deadline_policy("accept");
        match at_time(&p, "2026-12-02T10:00:00Z") {
            Decision::Accept(a) => {
                assert!(!a.late);
                assert!(a.after_deadline);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn late_reject_says_why() {
        let p = deadline_policy("reject");
        match at_time(&p, "2026-12-02T10:00:00Z") {
            Decision::Reject { reason, message } => {
                assert_eq!(reason, "late");
                assert!(message.contains("2026-12-01T23:59:00+01:00"), "{message}");
                assert!(message.contains("grace 5m"), "{message}");
                assert!(message.contains("2026-12-02T10:00:00Z"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            at_time(&p, "2026-12-01T22:00:00Z"),
            Decision::Accept(Acceptance { late: false, .. })
        ));
    }

    #[test]
    fn lateness_uses_receipt_time_not_commit_date() {
        // The only time decide_submission sees is received_at: a commit
        // dated before the deadline but received after it is late.
        let p = deadline_policy("flag");
        assert!(matches!(
            at_time(&p, "2026-12-03T00:00:00Z"),
            Decision::Accept(Acceptance { late: true, .. })
        ));
    }

    #[test]
    fn roster_path_is_relative_to_config_file() {
        let mut c = cfg("[assignments.lab1]\nroster = \"rosters/lab1.csv\"\n");
        c.source = Some(PathBuf::from("/etc/labgrader/config.toml"));
        let p = ResolvedPolicy::for_project(&c, "lab1");
        assert_eq!(
            p.roster.as_deref(),
            Some(Path::new("/etc/labgrader/rosters/lab1.csv"))
        );
    }

    #[test]
    fn staff_match_ignores_case() {
        let c = cfg("[assignments.lab1]\nstaff = [\"Prof\"]\n");
        let p = ResolvedPolicy::for_project(&c, "lab1");
        assert!(p.is_staff("prof"));
        assert!(p.is_staff("PROF"));
        assert!(!p.is_staff("alice"));
    }
}
