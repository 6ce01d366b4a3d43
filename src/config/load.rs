//! Reading a config: `--config`, else `$LABGRADER_CONFIG`, else built-in
//! defaults; parsing the TOML, validating it and resolving the secrets. It
//! never starts anything; a [`Config`] it returns is checked and complete.

use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::secrets::{
    CALLBACK_SECRET_CREDENTIAL, CALLBACK_SECRET_ENV, CREDENTIALS_ENV, GITLAB_TOKEN_CREDENTIAL,
    GITLAB_TOKEN_ENV, SLURM_TOKEN_CREDENTIAL, SLURM_TOKEN_ENV, SMTP_PASSWORD_CREDENTIAL,
    SMTP_PASSWORD_ENV, STAFF_TOKEN_CREDENTIAL, STAFF_TOKEN_ENV, Secrets, WEB_SECRET_CREDENTIAL,
    WEB_SECRET_ENV, WEBHOOK_TOKEN_CREDENTIAL, WEBHOOK_TOKEN_ENV, read_secret,
};
use super::sections::Config;

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "LABGRADER_CONFIG";

impl Config {
    /// Load from `--config`, else `$LABGRADER_CONFIG`, else built-in defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = std::env::var_os(CONFIG_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        match explicit.map(Path::to_path_buf).or(from_env) {
            Some(path) => Self::from_file(&path),
            None => {
                let mut cfg = Config::default();
                cfg.finish(None)?;
                Ok(cfg)
            }
        }
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, Some(path))
    }

    /// Parse `text`; `path` is only used in messages and to resolve relative
    /// secret files.
    pub fn from_toml(text: &str, path: Option<&Path>) -> Result<Config, ConfigError> {
        let shown = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("<config>"));
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.finish(path)?;
        Ok(cfg)
    }

    fn finish(&mut self, path: Option<&Path>) -> Result<(), ConfigError> {
        self.source = path.map(Path::to_path_buf);
        self.validate()?;
        let creds = std::env::var_os(CREDENTIALS_ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let creds = creds.as_deref();
        self.secrets = Secrets {
            webhook_token: read_secret(
                creds,
                WEBHOOK_TOKEN_CREDENTIAL,
                "server.webhook_token_file",
                &self.server.webhook_token_file,
                WEBHOOK_TOKEN_ENV,
            )?,
            gitlab_token: read_secret(
                creds,
                GITLAB_TOKEN_CREDENTIAL,
                "gitlab.token_file",
                &self.gitlab.token_file,
                GITLAB_TOKEN_ENV,
            )?,
            callback_secret: read_secret(
                creds,
                CALLBACK_SECRET_CREDENTIAL,
                "callback.secret_file",
                &self.callback.secret_file,
                CALLBACK_SECRET_ENV,
            )?,
            smtp_password: read_secret(
                creds,
                SMTP_PASSWORD_CREDENTIAL,
                "email.password_file",
                &self.email.password_file,
                SMTP_PASSWORD_ENV,
            )?,
            slurm_token: read_secret(
                creds,
                SLURM_TOKEN_CREDENTIAL,
                "slurm.token_file",
                &self.slurm.token_file,
                SLURM_TOKEN_ENV,
            )?,
            web_secret: read_secret(
                creds,
                WEB_SECRET_CREDENTIAL,
                "web.secret_file",
                &self.web.secret_file,
                WEB_SECRET_ENV,
            )?,
            staff_token: read_secret(
                creds,
                STAFF_TOKEN_CREDENTIAL,
                "web.staff_token_file",
                &self.web.staff_token_file,
                STAFF_TOKEN_ENV,
            )?,
        };
        super::web::check_secret(&self.web, self.secrets.web_secret.as_ref())
            .map_err(|m| self.invalid("web.secret_file", m))?;
        super::web::check_staff_token(&self.web, self.secrets.staff_token.as_ref())
            .map_err(|m| self.invalid("web.staff_token_file", m))?;
        Ok(())
    }

    /// The effective config as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;
    use std::time::Duration;

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml("", None).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8088");
        assert_eq!(c.server.max_body, ByteSize(1 << 20));
        assert_eq!(c.grader.timeout.0, Duration::from_secs(120));
        assert_eq!(c.gitlab.tests_path_for("lab1"), "root/lab1-test");
        assert_eq!(
            c.gitlab.clone_url_for("a/b/lab1"),
            "https://gitlab.example.edu/a/b/lab1.git"
        );
    }

    #[test]
    fn docker_identities_are_numeric_distinct_and_never_root() {
        // A config from before the harness key still loads.
        let c = Config::from_toml("[docker]\nuser = \"1000:1000\"\n", None).unwrap();
        assert_eq!(c.docker.harness_user, "65533:65533");
        assert_eq!(parse_ids("1000").unwrap(), (1000, 1000));
        // So does the old default, `user = "nobody"`.
        let c = Config::from_toml("[docker]\nuser = \"nobody\"\n", None).unwrap();
        assert_eq!(parse_ids(&c.docker.user).unwrap(), (65534, 65534));
        for (toml, key) in [
            ("[docker]\nuser = \"0:0\"\n", "docker.user"),
            ("[docker]\nuser = \"www-data\"\n", "docker.user"),
            ("[docker]\nharness_user = \"1:0\"\n", "docker.harness_user"),
            (
                "[docker]\nharness_user = \"65534:1\"\n",
                "docker.harness_user",
            ),
        ] {
            let e = Config::from_toml(toml, None).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n",
            Some(Path::new("c.toml")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("c.toml"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_size_names_line() {
        let e = Config::from_toml(
            "[server]\nmax_body = \"12 parsecs\"\n",
            Some(Path::new("c.toml")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("parsecs"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!("1MiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
        assert_eq!("512k".parse::<ByteSize>().unwrap(), ByteSize(512_000));
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap(), ByteSize(3 << 29));
        assert!("-1".parse::<ByteSize>().is_err());
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
        let q: Quota = "5/24h".parse().unwrap();
        assert_eq!((q.count, q.window), (5, Duration::from_secs(86400)));
        assert!("5".parse::<Quota>().is_err());
    }

    #[test]
    fn a_systemd_credential_wins_over_the_file_key_and_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let creds = d.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("webhook-token"), "from-credential\n").unwrap();
        std::fs::write(creds.join("smtp-password"), "\n").unwrap();
        let file = d.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let read = |cred: &str, file: &Path| {
            read_secret(
                Some(&creds),
                cred,
                "k",
                file,
                "LABGRADER_TEST_UNSET_VARIABLE",
            )
            .unwrap()
            .map(|s| s.expose().to_string())
        };
        assert_eq!(
            read("webhook-token", &file).as_deref(),
            Some("from-credential")
        );
        // An empty credential (the placeholder install leaves) or none at
        // all: the file key still counts.
        assert_eq!(read("smtp-password", &file).as_deref(), Some("from-file"));
        assert_eq!(read("gitlab-token", &file).as_deref(), Some("from-file"));
        assert_eq!(read("gitlab-token", Path::new("")), None);
        // With the credential there, a file key the daemon could not read
        // (the old root-only path) is never opened.
        assert_eq!(
            read("webhook-token", Path::new("/nonexistent/webhook-token")).as_deref(),
            Some("from-credential")
        );
        // An old config naming a secret file install moved away, with the
        // credential left empty: not configured, not an error.
        assert_eq!(read("smtp-password", Path::new("/nonexistent/pw")), None);
        assert!(
            read_secret(
                Some(&creds),
                "gitlab-token",
                "k",
                Path::new("/nonexistent/t"),
                "X"
            )
            .is_err()
        );
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let mut c = Config::from_toml("", None).unwrap();
        c.secrets.webhook_token = Some(Secret::new("hunter2"));
        let out = c.to_redacted_toml();
        assert!(!out.contains("hunter2"));
        assert!(out.contains("<redacted>"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn tag_trigger_needs_pattern() {
        let e = Config::from_toml("[assignments.lab1]\ntrigger = \"tag\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("assignments.lab1.tag_pattern"), "{e}");
    }

    #[test]
    fn deadline_accepts_quoted_and_toml_datetimes() {
        let c = Config::from_toml(
            "[assignments.a]\ndeadline = \"2026-12-01T23:59:00+01:00\"\n\
             [assignments.b]\ndeadline = 2026-12-01T23:59:00+01:00\n",
            None,
        )
        .unwrap();
        let a = c.assignments["a"].deadline.unwrap();
        assert_eq!(a, c.assignments["b"].deadline.unwrap());
        assert_eq!(a.to_rfc3339(), "2026-12-01T23:59:00+01:00");
    }

    #[test]
    fn dedup_window_shorter_than_delivery_retries_is_refused() {
        let e = Config::from_toml("[spool]\ndedup_window = \"1h\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spool.dedup_window"), "{e}");
        assert!(e.contains("retry_for"), "{e}");
        let c = Config::from_toml(
            "[spool]\ndedup_window = \"2h\"\n[deliver]\nretry_for = \"1h\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.spool.dedup_window.get(), Duration::from_secs(7200));
    }

    #[test]
    fn deadline_without_offset_is_refused_with_line() {
        let e = Config::from_toml(
            "[assignments.a]\ndeadline = \"2026-12-01T23:59:00\"\n",
            Some(Path::new("c.toml")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("offset"), "{e}");
    }

    #[test]
    fn assignment_overrides_are_validated() {
        for (text, key) in [
            ("memory = \"1MiB\"", "assignments.a.memory"),
            ("pids = 0", "assignments.a.pids"),
            ("timeout = 0", "assignments.a.timeout"),
            ("quota = \"0/1h\"", "assignments.a.quota"),
            ("grace = \"5m\"", "assignments.a.grace"),
            ("late = \"reject\"", "assignments.a.late"),
            ("staff = [\"\"]", "assignments.a.staff"),
            ("image = \" \"", "assignments.a.image"),
            (
                "trigger = \"tag\"\ntag_pattern = \"\"",
                "assignments.a.tag_pattern",
            ),
        ] {
            let e = Config::from_toml(&format!("[assignments.a]\n{text}\n"), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
