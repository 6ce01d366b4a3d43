//! `[alerts]`: who staff alerts go to (email addresses, a callback URL),
//! how a burst is gathered into one message and how often one is sent;
//! and the checks of those keys and of the held-push keys (`[gitlab]
//! student_namespaces`, `[spool] hold_for`), each a key and what to do,
//! turned into errors by `validate`. Off by default: no address and no
//! URL means no alert is ever written.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::Seconds;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Staff addresses; each gets a message of their own (sent through
    /// `[email] url`).
    pub email: Vec<String>,
    /// A URL that gets each batch as a signed JSON `POST` (signed like the
    /// result callback, with the callback secret when one is set).
    pub callback_url: String,
    /// How long the first alert of a burst waits for the others, so a
    /// burst is one message.
    pub gather: Seconds,
    /// At most one message per window; what happens in between waits for
    /// the next one, listed with counts.
    pub window: Seconds,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            email: Vec::new(),
            callback_url: String::new(),
            gather: Seconds(Duration::from_secs(30)),
            window: Seconds(Duration::from_secs(3600)),
        }
    }
}

impl AlertsConfig {
    /// True when alerts go somewhere (then, and only then, are they written).
    pub fn enabled(&self) -> bool {
        !self.email.is_empty() || !self.callback_url.is_empty()
    }
}

/// A refused key and what to do about it.
pub(super) type Problem = (&'static str, String);

impl AlertsConfig {
    /// The first bad `[alerts]` key; `email_on`: `[email] url` is set.
    pub(super) fn problem(&self, email_on: bool) -> Option<Problem> {
        for addr in &self.email {
            if addr.parse::<lettre::Address>().is_err() {
                return Some((
                    "alerts.email",
                    format!("`{addr}` is not an email address (user@host)"),
                ));
            }
        }
        if !self.email.is_empty() && !email_on {
            return Some((
                "alerts.email",
                "needs a way to send mail: set [email] url (e.g. \"smtp://RELAY:25\") or \
                 install a local MTA (/usr/sbin/sendmail)"
                    .into(),
            ));
        }
        if !self.callback_url.is_empty()
            && !self.callback_url.starts_with("http://")
            && !self.callback_url.starts_with("https://")
        {
            return Some((
                "alerts.callback_url",
                "must be an http:// or https:// URL, or empty (no alert callback)".into(),
            ));
        }
        if self.window.0.is_zero() {
            return Some((
                "alerts.window",
                "must be longer than zero (e.g. \"1h\": at most one alert message per hour)".into(),
            ));
        }
        if self.gather.0 > self.window.0 {
            return Some((
                "alerts.gather",
                "must not be longer than alerts.window".into(),
            ));
        }
        None
    }
}

/// The first bad held-push key: `[gitlab] student_namespaces` (GitLab
/// namespace paths, never the tests namespace) or `[spool] hold_for`.
pub(super) fn hold_problem(
    student_namespaces: &[String],
    tests_namespace: &str,
    hold_for: Duration,
) -> Option<Problem> {
    for ns in student_namespaces {
        let bad = ns.is_empty() || ns.split('/').any(|p| p.is_empty() || p == "." || p == "..");
        if bad {
            return Some((
                "gitlab.student_namespaces",
                format!("`{ns}` is not a GitLab namespace path (e.g. \"course2026\")"),
            ));
        }
        if ns == tests_namespace {
            return Some((
                "gitlab.student_namespaces",
                format!("`{ns}` is gitlab.tests_namespace: students never push there"),
            ));
        }
    }
    if hold_for.is_zero() {
        return Some((
            "spool.hold_for",
            "must be longer than zero (e.g. \"7d\"); leave gitlab.student_namespaces empty \
             to hold nothing"
                .into(),
        ));
    }
    None
}

/// `[spool] held_per_project` and `held_per_namespace`: at least 1 each.
pub(super) fn held_limit_problem(per_project: usize, per_namespace: usize) -> Option<Problem> {
    if per_project == 0 {
        return Some((
            "spool.held_per_project",
            "must be at least 1 (e.g. 20); leave gitlab.student_namespaces empty to hold nothing"
                .into(),
        ));
    }
    if per_namespace == 0 {
        return Some((
            "spool.held_per_namespace",
            "must be at least 1 (e.g. 50); leave gitlab.student_namespaces empty to hold nothing"
                .into(),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_limits_are_at_least_one() {
        assert_eq!(held_limit_problem(20, 50), None);
        assert_eq!(
            held_limit_problem(0, 50).unwrap().0,
            "spool.held_per_project"
        );
        assert_eq!(
            held_limit_problem(1, 0).unwrap().0,
            "spool.held_per_namespace"
        );
    }

    fn key(p: Option<Problem>) -> &'static str {
        p.map(|(k, _)| k).unwrap_or("")
    }

    #[test]
    fn alerts_are_off_by_default_and_bad_keys_are_named() {
        let d = AlertsConfig::default();
        assert!(!d.enabled());
        assert_eq!(d.problem(false), None);
        let with = |f: fn(&mut AlertsConfig)| {
            let mut a = AlertsConfig::default();
            f(&mut a);
            a
        };
        let bad = with(|a| a.email = vec!["nobody".into()]);
        assert_eq!(key(bad.problem(true)), "alerts.email");
        let ok = with(|a| a.email = vec!["staff@uni.example".into()]);
        assert!(ok.enabled());
        assert_eq!(ok.problem(true), None);
        assert_eq!(key(ok.problem(false)), "alerts.email");
        let url = with(|a| a.callback_url = "ftp://x".into());
        assert_eq!(key(url.problem(true)), "alerts.callback_url");
        let w = with(|a| a.window = Seconds(Duration::ZERO));
        assert_eq!(key(w.problem(true)), "alerts.window");
        let g = with(|a| a.gather = Seconds(Duration::from_secs(7200)));
        assert_eq!(key(g.problem(true)), "alerts.gather");
    }

    #[test]
    fn student_namespaces_match_whole_path_components() {
        let gl = super::super::GitlabConfig {
            student_namespaces: vec!["course".into(), "dept/cs101".into()],
            ..Default::default()
        };
        for (ns, yes) in [
            ("course", true),
            ("course/alice", true),
            ("dept/cs101/team3", true),
            // A look-alike namespace is not the course's.
            ("course2", false),
            ("coursework/alice", false),
            ("dept/cs1010", false),
            ("dept", false),
            ("root", false),
        ] {
            assert_eq!(gl.is_student_namespace(ns), yes, "{ns}");
        }
    }

    #[test]
    fn hold_keys_are_checked() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let ns = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(hold_problem(&ns(&["course", "a/b"]), "root", week), None);
        for bad in ["a/../b", "", "/a", "a/"] {
            assert_eq!(
                key(hold_problem(&ns(&[bad]), "root", week)),
                "gitlab.student_namespaces",
                "{bad}"
            );
        }
        assert_eq!(
            key(hold_problem(&ns(&["root"]), "root", week)),
            "gitlab.student_namespaces"
        );
        assert_eq!(
            key(hold_problem(&[], "root", Duration::ZERO)),
            "spool.hold_for"
        );
    }
}
