//! `[web]`: the web view served beside the hook (result pages for
//! students, staff pages, leaderboards). Off while `public_url` is empty.
//! Only the shape and defaults live here; the secrets are read by `load`
//! like every other, and nothing here serves a page.

use std::path::PathBuf;
use std::time::Duration;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::assignment::AssignmentConfig;
use super::secrets::Secret;
use super::values::Seconds;

/// Shortest web secret accepted: the tokens of result links are HMACs
/// under it, so a short one could be guessed.
pub const WEB_SECRET_MIN: usize = 16;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// The base URL students open (e.g. `https://grader.example.edu`):
    /// result links are `<public_url>/jobs/<job_id>?t=<token>`. Empty =
    /// no web view, no links.
    pub public_url: String,
    /// The secret result-page tokens are HMACs under (credential
    /// `web-secret`, generated at install).
    pub secret_file: PathBuf,
    /// The bearer token of the staff pages (credential `web-staff-token`,
    /// generated at install). Without one, `/staff/` always answers 401.
    pub staff_token_file: PathBuf,
    /// How often a page of a waiting or running job reloads itself.
    pub refresh: Seconds,
    /// Jobs listed on the staff page of recent jobs.
    pub recent_jobs: usize,
    /// Threads pages are rendered on (at a lower priority than intake and
    /// grading); 0 = one per CPU.
    pub renders: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            public_url: String::new(),
            secret_file: PathBuf::new(),
            staff_token_file: PathBuf::new(),
            refresh: Seconds(Duration::from_secs(10)),
            recent_jobs: 200,
            renders: 0,
        }
    }
}

impl WebConfig {
    /// Whether the web view is on.
    pub fn enabled(&self) -> bool {
        !self.public_url.trim().is_empty()
    }

    /// `public_url` without its trailing slashes.
    pub fn base(&self) -> &str {
        self.public_url.trim().trim_end_matches('/')
    }
}

/// `[web]` and the assignments' leaderboard keys (before secrets are
/// read): the key and the message of the first problem.
pub(super) fn check(
    web: &WebConfig,
    assignments: &BTreeMap<String, AssignmentConfig>,
) -> Result<(), (String, String)> {
    let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
    let url = web.public_url.trim();
    let scheme_ok = url.is_empty() || url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok || url.contains(['?', '#', ' ']) {
        return bad(
            "web.public_url",
            "must be an http:// or https:// URL without a query (e.g. \
             \"https://grader.example.edu\"), or empty to turn the web view off",
        );
    }
    if web.refresh.get() < Duration::from_secs(2) {
        return bad("web.refresh", "must be at least 2s");
    }
    if web.recent_jobs == 0 {
        return bad("web.recent_jobs", "must be at least 1");
    }
    for (name, a) in assignments {
        if let Some(k) = &a.leaderboard
            && (k.trim().is_empty() || k.len() > 64 || k.contains(['\'', '"', '\\']))
        {
            return Err((
                format!("assignments.{name}.leaderboard"),
                "must name a key: grade_total, score, execution_time, or a summary key".into(),
            ));
        }
    }
    Ok(())
}

/// A web secret, when there is one, must be long enough. None is not an
/// error here (staff commands load the config without the credentials);
/// the daemon then serves no pages and sends no links, and says so
/// ([`NO_SECRET`]).
pub(super) fn check_secret(web: &WebConfig, secret: Option<&Secret>) -> Result<(), String> {
    match secret {
        Some(s) if web.enabled() && s.expose().len() < WEB_SECRET_MIN => Err(format!(
            "the web secret must be at least {WEB_SECRET_MIN} characters"
        )),
        _ => Ok(()),
    }
}

/// A staff token, when the web view is on, must be as long as a web
/// secret: the staff pages are on the students' network and answer every
/// guess at once, so a short password falls to a script.
pub(super) fn check_staff_token(web: &WebConfig, token: Option<&Secret>) -> Result<(), String> {
    match token {
        Some(t) if web.enabled() && t.expose().chars().count() < WEB_SECRET_MIN => Err(format!(
            "the staff token must be at least {WEB_SECRET_MIN} characters (students can try \
             guesses at the staff pages); generate one, e.g. `head -c 24 /dev/urandom | base64`"
        )),
        _ => Ok(()),
    }
}

/// What the daemon logs when `public_url` is set without a secret.
pub const NO_SECRET: &str = "WEB VIEW OFF: web.public_url is set but there is no web secret; \
     generate one (e.g. `head -c 32 /dev/urandom | od -An -vtx1 | tr -d ' \\n'`) into the \
     credential web-secret, web.secret_file or LABGRADER_WEB_SECRET";

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn err(toml: &str) -> String {
        Config::from_toml(toml, None).unwrap_err().to_string()
    }

    #[test]
    fn the_web_view_is_refused_without_its_secret_or_with_a_bad_url() {
        let off = Config::from_toml("", None).unwrap();
        assert!(!off.web.enabled());
        // Without a secret it loads (staff commands have no credentials),
        // and the daemon serves nothing (Web::start).
        let no_secret =
            Config::from_toml("[web]\npublic_url = \"https://g.example.edu\"\n", None).unwrap();
        assert!(no_secret.secrets.web_secret.is_none());
        let d = tempfile::tempdir().unwrap();
        let short = d.path().join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let e = err(&format!(
            "[web]\npublic_url = \"https://g.example.edu\"\nsecret_file = \"{}\"\n",
            short.display()
        ));
        assert!(e.contains("at least 16"), "{e}");
        let good = d.path().join("good");
        std::fs::write(&good, "0123456789abcdef0123\n").unwrap();
        let c = Config::from_toml(
            &format!(
                "[web]\npublic_url = \"https://g.example.edu/\"\nsecret_file = \"{}\"\n",
                good.display()
            ),
            None,
        )
        .unwrap();
        assert_eq!(c.web.base(), "https://g.example.edu");
        // A staff token a script could guess is refused like a short secret.
        let weak = d.path().join("weak");
        std::fs::write(&weak, "letmein\n").unwrap();
        let e = err(&format!(
            "[web]\npublic_url = \"https://g.example.edu\"\nsecret_file = \"{}\"\n\
             staff_token_file = \"{}\"\n",
            good.display(),
            weak.display()
        ));
        assert!(e.contains("web.staff_token_file"), "{e}");
        assert!(e.contains("staff token must be at least 16"), "{e}");
        assert!(!c.to_redacted_toml().contains("0123456789abcdef0123"));
        for (toml, key) in [
            ("[web]\npublic_url = \"ftp://x\"\n", "web.public_url"),
            ("[web]\npublic_url = \"https://x/?a=b\"\n", "web.public_url"),
            ("[web]\nrefresh = \"1s\"\n", "web.refresh"),
            ("[web]\nrecent_jobs = 0\n", "web.recent_jobs"),
            (
                "[assignments.a]\nleaderboard = \"\"\n",
                "assignments.a.leaderboard",
            ),
            (
                "[assignments.a]\nleaderboard_order = \"up\"\n",
                "leaderboard_order",
            ),
        ] {
            let e = err(toml);
            assert!(e.contains(key), "{toml}: {e}");
        }
    }
}
