//! `[assignments.NAME]`: per-assignment overrides and course policy
//! (trigger, manifest, roster, quota, deadline). Only the shape and the
//! deadline's parsing live here; it never applies a rule (that is the
//! policy's).

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::values::{ByteSize, Contract, Quota, RunnerKind, Seconds};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    #[default]
    Push,
    Tag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestPolicy {
    #[default]
    Optional,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatePolicy {
    #[default]
    Accept,
    Flag,
    Reject,
}

/// `[assignments.NAME]`: overrides and course policy for one assignment.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssignmentConfig {
    pub image: Option<String>,
    pub timeout: Option<Seconds>,
    pub memory: Option<ByteSize>,
    pub pids: Option<u64>,
    pub runner: Option<RunnerKind>,
    pub contract: Option<Contract>,
    pub trigger: Trigger,
    pub tag_pattern: Option<String>,
    pub manifest: ManifestPolicy,
    pub roster: Option<PathBuf>,
    pub quota: Option<Quota>,
    pub staff: Vec<String>,
    /// RFC 3339 with an offset, quoted or as a TOML offset date-time.
    #[serde(deserialize_with = "deserialize_deadline")]
    pub deadline: Option<chrono::DateTime<chrono::FixedOffset>>,
    pub grace: Option<Seconds>,
    pub late: LatePolicy,
    /// Points of `junit.xml` testcases without a `points` property, by
    /// `classname.name` or bare name (else 1 point each).
    pub junit_points: std::collections::BTreeMap<String, f64>,
    /// Whether a student's email says how many hidden tests there were
    /// (`true`) or says nothing of them at all (`false`).
    pub mention_hidden_tests: Option<bool>,
    /// The leaderboard's key (`grade_total`, a results.json number such
    /// as `score` or `execution_time`, or a visible summary key); none =
    /// no leaderboard for this assignment.
    pub leaderboard: Option<String>,
    /// Which end of the leaderboard is best.
    pub leaderboard_order: LeaderboardOrder,
}

/// `leaderboard_order`: `desc` (highest first, the default) or `asc`
/// (lowest first, e.g. a run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaderboardOrder {
    Asc,
    #[default]
    Desc,
}

/// Accepts `deadline = "2026-12-01T23:59:00+01:00"` and the unquoted TOML
/// form; a date-time without an offset is refused (whose midnight?).
fn deserialize_deadline<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Str(String),
        Toml(toml::value::Datetime),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Str(s) => s,
        Raw::Toml(t) => t.to_string(),
    };
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(Some)
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "deadline `{text}` is not an RFC 3339 date-time with an offset ({e}); \
                 write e.g. \"2026-12-01T23:59:00+01:00\""
            ))
        })
}
