//! Secrets: the [`Secret`] value (never printed, never serialized in
//! clear), the resolved [`Secrets`], and where each is read from (a
//! systemd credential, a `*_file` key, an environment variable). It never
//! logs a secret nor puts one in an error message.

use std::fmt;
use std::path::Path;

use serde::{Serialize, Serializer};

use super::error::ConfigError;

/// Environment variables that may carry secrets instead of files.
pub const WEBHOOK_TOKEN_ENV: &str = "LABGRADER_WEBHOOK_TOKEN";
pub const GITLAB_TOKEN_ENV: &str = "LABGRADER_GITLAB_TOKEN";
pub const CALLBACK_SECRET_ENV: &str = "LABGRADER_CALLBACK_SECRET";
pub const SMTP_PASSWORD_ENV: &str = "LABGRADER_SMTP_PASSWORD";
pub const SLURM_TOKEN_ENV: &str = "LABGRADER_SLURM_TOKEN";
pub const WEB_SECRET_ENV: &str = "LABGRADER_WEB_SECRET";
pub const STAFF_TOKEN_ENV: &str = "LABGRADER_STAFF_TOKEN";
/// Set by systemd to the unit's credentials directory (`LoadCredential=`):
/// a secret found there wins over the `*_file` keys and the environment.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";
/// Credential names: files in `$CREDENTIALS_DIRECTORY`, loaded by the
/// units from `/etc/labgrader/credentials/<name>`.
pub const WEBHOOK_TOKEN_CREDENTIAL: &str = "webhook-token";
pub const GITLAB_TOKEN_CREDENTIAL: &str = "gitlab-token";
pub const CALLBACK_SECRET_CREDENTIAL: &str = "callback-secret";
pub const SMTP_PASSWORD_CREDENTIAL: &str = "smtp-password";
pub const SLURM_TOKEN_CREDENTIAL: &str = "slurm-token";
pub const WEB_SECRET_CREDENTIAL: &str = "web-secret";
pub const STAFF_TOKEN_CREDENTIAL: &str = "web-staff-token";

/// A secret value: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Secrets resolved at load time from `*_file` keys or the environment.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub webhook_token: Option<Secret>,
    pub gitlab_token: Option<Secret>,
    pub callback_secret: Option<Secret>,
    pub smtp_password: Option<Secret>,
    pub slurm_token: Option<Secret>,
    /// `[web] secret_file`: result-page tokens are HMACs under it.
    pub web_secret: Option<Secret>,
    /// `[web] staff_token_file`: the staff pages' bearer token.
    pub staff_token: Option<Secret>,
}

impl Serialize for Secrets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (k, v) in [
            ("webhook_token", &self.webhook_token),
            ("gitlab_token", &self.gitlab_token),
            ("callback_secret", &self.callback_secret),
            ("smtp_password", &self.smtp_password),
            ("slurm_token", &self.slurm_token),
            ("web_secret", &self.web_secret),
            ("staff_token", &self.staff_token),
        ] {
            m.serialize_entry(k, if v.is_some() { "<redacted>" } else { "<unset>" })?;
        }
        m.end()
    }
}

/// One secret, from the first place that has it: the systemd credential
/// `credential` in `creds` (`$CREDENTIALS_DIRECTORY`; an empty or missing
/// file there does not count), else the `*_file` key `key` (`file`), else
/// the environment variable `env`. Text is trimmed; empty means none.
pub(super) fn read_secret(
    creds: Option<&Path>,
    credential: &str,
    key: &str,
    file: &Path,
    env: &str,
) -> Result<Option<Secret>, ConfigError> {
    // An empty credential: the units load every name, unused ones empty.
    let mut empty_credential = false;
    if let Some(dir) = creds {
        let path = dir.join(credential);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => return Ok(Some(Secret::new(text.trim()))),
            Ok(_) => empty_credential = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ConfigError::Secret {
                    key: format!("credential {credential}"),
                    path,
                    source,
                });
            }
        }
    }
    if !file.as_os_str().is_empty() {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            // A config from before the credentials still names a secret
            // file scripts/install has since moved into them (empty there:
            // not configured). Nothing to read, nothing to fail on.
            Err(e) if empty_credential && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(source) => {
                return Err(ConfigError::Secret {
                    key: key.into(),
                    path: file.to_path_buf(),
                    source,
                });
            }
        };
        let t = text.trim();
        return Ok((!t.is_empty()).then(|| Secret::new(t)));
    }
    Ok(std::env::var(env)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(Secret::new))
}
