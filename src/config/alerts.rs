//! `[alerts]`: who staff alerts go to (email addresses, a callback URL),
//! how a burst is gathered into one message and how often one is sent;
//! and the checks of those keys and of the held-push keys (`[gitlab]
//! student_namespaces`, `[spool] hold_for`). Off by default: no address
//! and no URL means no alert is ever written.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::sections::Config;
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

impl Config {
    /// The checks of `[alerts]`, `[gitlab] student_namespaces` and
    /// `[spool] hold_for`.
    pub(super) fn validate_alerts_and_holds(&self) -> Result<(), ConfigError> {
        let a = &self.alerts;
        for addr in &a.email {
            if addr.parse::<lettre::Address>().is_err() {
                return Err(self.invalid(
                    "alerts.email",
                    format!("`{addr}` is not an email address (user@host)"),
                ));
            }
        }
        if !a.email.is_empty() && self.email.url.is_empty() {
            return Err(self.invalid(
                "alerts.email",
                "needs a way to send mail: set [email] url (e.g. \"smtp://RELAY:25\") or \
                 install a local MTA (/usr/sbin/sendmail)",
            ));
        }
        if !a.callback_url.is_empty()
            && !a.callback_url.starts_with("http://")
            && !a.callback_url.starts_with("https://")
        {
            return Err(self.invalid(
                "alerts.callback_url",
                "must be an http:// or https:// URL, or empty (no alert callback)",
            ));
        }
        if a.window.0.is_zero() {
            return Err(self.invalid(
                "alerts.window",
                "must be longer than zero (e.g. \"1h\": at most one alert message per hour)",
            ));
        }
        if a.gather.0 > a.window.0 {
            return Err(self.invalid("alerts.gather", "must not be longer than alerts.window"));
        }
        for ns in &self.gitlab.student_namespaces {
            let bad = ns.is_empty()
                || ns.starts_with('/')
                || ns.ends_with('/')
                || ns.split('/').any(|p| p.is_empty() || p == "." || p == "..");
            if bad {
                return Err(self.invalid(
                    "gitlab.student_namespaces",
                    format!("`{ns}` is not a GitLab namespace path (e.g. \"course2026\")"),
                ));
            }
            if *ns == self.gitlab.tests_namespace {
                return Err(self.invalid(
                    "gitlab.student_namespaces",
                    format!("`{ns}` is gitlab.tests_namespace: students never push there"),
                ));
            }
        }
        if self.spool.hold_for.0.is_zero() {
            return Err(self.invalid(
                "spool.hold_for",
                "must be longer than zero (e.g. \"7d\"); leave gitlab.student_namespaces \
                 empty to hold nothing",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_off_by_default_and_bad_keys_are_named() {
        let c = Config::from_toml("", None).unwrap();
        assert!(!c.alerts.enabled());
        assert_eq!(c.spool.hold_for.0, Duration::from_secs(7 * 24 * 3600));
        assert!(c.gitlab.student_namespaces.is_empty());
        for (toml, key) in [
            (
                "[alerts]\nemail = [\"nobody\"]\n[email]\nurl = \"sendmail\"\n",
                "alerts.email",
            ),
            (
                "[alerts]\nemail = [\"a@b.c\"]\n[email]\nurl = \"\"\n",
                "alerts.email",
            ),
            (
                "[alerts]\ncallback_url = \"ftp://x\"\n",
                "alerts.callback_url",
            ),
            ("[alerts]\nwindow = \"0s\"\n", "alerts.window"),
            (
                "[alerts]\ngather = \"2h\"\nwindow = \"1h\"\n",
                "alerts.gather",
            ),
            (
                "[gitlab]\nstudent_namespaces = [\"a/../b\"]\n",
                "gitlab.student_namespaces",
            ),
            (
                "[gitlab]\nstudent_namespaces = [\"root\"]\n",
                "gitlab.student_namespaces",
            ),
            ("[spool]\nhold_for = \"0s\"\n", "spool.hold_for"),
        ] {
            let e = Config::from_toml(toml, None).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
        let ok = Config::from_toml(
            "[alerts]\nemail = [\"staff@uni.example\"]\ncallback_url = \"https://x/alerts\"\n\
             [email]\nurl = \"smtp://127.0.0.1:25\"\n",
            None,
        )
        .unwrap();
        assert!(ok.alerts.enabled());
    }
}
