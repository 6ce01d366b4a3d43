//! The slurmrestd client: JWT-authenticated calls to Slurm's REST API
//! (OpenAPI plugin `[slurm] api_version`), the small typed structs its
//! answers are parsed into, and the errors it reports ([`SlurmError`]).
//! Slurm's answers are untrusted input: unknown fields are ignored,
//! missing ones are faults of the cluster, never of the student. It never
//! shells out to `sbatch`/`scancel`, never touches a job directory and
//! never decides what a job's end means.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;

use crate::config::Config;
use crate::httpc::{HttpClient, HttpError};
use crate::sandbox::spec::SandboxError;

/// Prefix of every job name labgrader submits.
pub const JOB_NAME_PREFIX: &str = "labgrader-";
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Slurm's "Invalid job id specified" (ESLURM_INVALID_JOB_ID).
const ESLURM_INVALID_JOB_ID: i64 = 2017;
/// Slurm's "Job/step already completing or completed".
const ESLURM_ALREADY_DONE: i64 = 2021;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "no slurm token: set [slurm] token_file or ${}",
        crate::config::SLURM_TOKEN_ENV
    )]
    NoToken,
    #[error("cannot read the slurm token file {path}: {source}")]
    TokenFile { path: PathBuf, source: io::Error },
    #[error("slurmrestd: {0}")]
    Http(#[from] HttpError),
    #[error("slurmrestd answered {status} to {what}: {message}")]
    Api {
        what: String,
        status: u16,
        message: String,
    },
    #[error("unreadable answer from slurmrestd to {what}: {message}")]
    Decode { what: String, message: String },
    #[error("job id `{0}` cannot name a job directory")]
    JobId(String),
    #[error("cannot find the labgrader binary for the nodes (set [slurm] labgrader_bin): {0}")]
    Binary(io::Error),
    #[error("cannot prepare the job directory {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("slurm job {slurm_id} {message}")]
    Job { slurm_id: u64, message: String },
}

impl From<SlurmError> for SandboxError {
    fn from(e: SlurmError) -> SandboxError {
        match e {
            SlurmError::Prepare { .. } | SlurmError::JobId(_) | SlurmError::Binary(_) => {
                SandboxError::Setup {
                    step: "prepare the slurm job directory",
                    message: e.to_string(),
                }
            }
            SlurmError::Job { .. } => SandboxError::Setup {
                step: "slurm job",
                message: e.to_string(),
            },
            other => SandboxError::Unavailable {
                runner: "slurm".into(),
                message: other.to_string(),
            },
        }
    }
}

/// One job as slurmrestd reports it (the fields labgrader reads).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlurmJob {
    #[serde(default)]
    pub job_id: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub user_name: Option<String>,
    /// `PENDING`, `RUNNING`, `COMPLETING`, `COMPLETED`, `FAILED`, …
    #[serde(default)]
    pub job_state: Option<String>,
    #[serde(default)]
    pub state_reason: Option<String>,
    /// The batch script's raw wait status (v0.0.38).
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub batch_host: Option<String>,
}

impl SlurmJob {
    pub(super) fn state(&self) -> &str {
        self.job_state.as_deref().unwrap_or("UNKNOWN")
    }
}

#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(default)]
    error_number: Option<i64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct JobsAnswer {
    #[serde(default)]
    errors: Vec<ApiError>,
    #[serde(default)]
    jobs: Vec<SlurmJob>,
}

#[derive(Debug, Default, Deserialize)]
struct SubmitAnswer {
    #[serde(default)]
    errors: Vec<ApiError>,
    #[serde(default)]
    job_id: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct PingAnswer {
    #[serde(default)]
    errors: Vec<ApiError>,
    #[serde(default)]
    pings: Vec<Ping>,
}

#[derive(Debug, Default, Deserialize)]
struct Ping {
    #[serde(default)]
    ping: Option<String>,
}

/// A client of one slurmrestd, as `[slurm]` user `user`.
pub struct RestClient {
    http: HttpClient,
    /// `<url>/slurm/<api_version>`.
    pub(super) base: String,
    pub(super) user: String,
    token_file: PathBuf,
    token: Option<String>,
}

impl RestClient {
    /// The client of `cfg`'s `[slurm]`; refused without a token.
    pub fn new(cfg: &Config) -> Result<RestClient, SlurmError> {
        let s = &cfg.slurm;
        let token = cfg
            .secrets
            .slurm_token
            .as_ref()
            .map(|t| t.expose().to_string());
        if token.is_none() && s.token_file.as_os_str().is_empty() {
            return Err(SlurmError::NoToken);
        }
        Ok(RestClient {
            http: HttpClient::new(),
            base: format!(
                "{}/slurm/{}",
                s.url.trim_end_matches('/'),
                s.api_version.trim_matches('/')
            ),
            user: s.user.clone(),
            token_file: s.token_file.clone(),
            token,
        })
    }

    /// The token, re-read from the file each time (tokens expire and are
    /// replaced in place), else the one resolved at config load.
    fn token(&self) -> Result<String, SlurmError> {
        if !self.token_file.as_os_str().is_empty() {
            let t = std::fs::read_to_string(&self.token_file).map_err(|source| {
                SlurmError::TokenFile {
                    path: self.token_file.clone(),
                    source,
                }
            })?;
            let t = t.trim();
            if !t.is_empty() {
                return Ok(t.to_string());
            }
        }
        self.token.clone().ok_or(SlurmError::NoToken)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<crate::httpc::Response, SlurmError> {
        let token = self.token()?;
        let url = format!("{}{}", self.base, path);
        let headers = [
            ("X-SLURM-USER-NAME", self.user.as_str()),
            ("X-SLURM-USER-TOKEN", token.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ];
        Ok(self
            .http
            .request(method, &url, &headers, body, REQUEST_TIMEOUT)
            .await?)
    }

    /// Is slurmrestd reachable, the token accepted and slurmctld up?
    pub async fn ping(&self) -> Result<(), SlurmError> {
        let what = "ping";
        let r = self.call(Method::GET, "/ping", None).await?;
        let a: PingAnswer = decode(what, &r)?;
        api_ok(what, &r, &a.errors)?;
        if a.pings.iter().any(|p| p.ping.as_deref() == Some("UP")) {
            Ok(())
        } else {
            Err(SlurmError::Api {
                what: what.into(),
                status: r.status.as_u16(),
                message: "slurmctld is not UP".into(),
            })
        }
    }

    /// One job by id; `None` when Slurm no longer knows it.
    pub async fn job(&self, slurm_id: u64) -> Result<Option<SlurmJob>, SlurmError> {
        let what = format!("GET job/{slurm_id}");
        let r = self
            .call(Method::GET, &format!("/job/{slurm_id}"), None)
            .await?;
        let a: JobsAnswer = decode(&what, &r)?;
        if a.errors
            .iter()
            .any(|e| e.error_number == Some(ESLURM_INVALID_JOB_ID))
        {
            return Ok(None);
        }
        api_ok(&what, &r, &a.errors)?;
        Ok(a.jobs.into_iter().find(|j| j.job_id == Some(slurm_id)))
    }

    /// Every job Slurm knows under labgrader's name for `job_id`, in
    /// submission order.
    pub async fn jobs_named(&self, job_id: &str) -> Result<Vec<SlurmJob>, SlurmError> {
        let what = "GET jobs";
        let r = self.call(Method::GET, "/jobs", None).await?;
        let a: JobsAnswer = decode(what, &r)?;
        api_ok(what, &r, &a.errors)?;
        let name = format!("{JOB_NAME_PREFIX}{job_id}");
        let mut v: Vec<SlurmJob> = a
            .jobs
            .into_iter()
            .filter(|j| j.name.as_deref() == Some(name.as_str()))
            .filter(|j| j.user_name.as_deref().is_none_or(|u| u == self.user))
            .collect();
        v.sort_by_key(|j| j.job_id);
        Ok(v)
    }

    /// `DELETE job/{id}` (SIGKILL to every process of the job).
    pub async fn cancel(&self, slurm_id: u64) -> Result<(), SlurmError> {
        let what = format!("DELETE job/{slurm_id}");
        let r = self
            .call(
                Method::DELETE,
                &format!("/job/{slurm_id}?signal=KILL"),
                None,
            )
            .await?;
        let a: JobsAnswer = decode(&what, &r).unwrap_or_default();
        // Already finished or gone: nothing to cancel.
        if a.errors.iter().any(|e| {
            e.error_number == Some(ESLURM_INVALID_JOB_ID)
                || e.error_number == Some(ESLURM_ALREADY_DONE)
        }) {
            return Ok(());
        }
        api_ok(&what, &r, &a.errors)
    }

    /// `POST job/submit` of `body`; the new job's id.
    pub async fn submit(&self, body: &serde_json::Value) -> Result<u64, SlurmError> {
        let what = "POST job/submit";
        let body = serde_json::to_vec(body).expect("json value");
        let r = self.call(Method::POST, "/job/submit", Some(body)).await?;
        let a: SubmitAnswer = decode(what, &r)?;
        api_ok(what, &r, &a.errors)?;
        a.job_id.ok_or_else(|| SlurmError::Decode {
            what: what.into(),
            message: "no job_id in the answer".into(),
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    r: &crate::httpc::Response,
) -> Result<T, SlurmError> {
    r.json().map_err(|e| {
        if r.status.is_success() {
            SlurmError::Decode {
                what: what.into(),
                message: e.to_string(),
            }
        } else {
            SlurmError::Api {
                what: what.into(),
                status: r.status.as_u16(),
                message: r.body_snippet(),
            }
        }
    })
}

fn api_ok(what: &str, r: &crate::httpc::Response, errors: &[ApiError]) -> Result<(), SlurmError> {
    if errors.is_empty() && r.status.is_success() {
        return Ok(());
    }
    let message = if errors.is_empty() {
        r.body_snippet()
    } else {
        errors
            .iter()
            .map(|e| {
                format!(
                    "{} ({}; error {})",
                    e.description.as_deref().unwrap_or(""),
                    e.error.as_deref().unwrap_or(""),
                    e.error_number.unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    Err(SlurmError::Api {
        what: what.into(),
        status: r.status.as_u16(),
        message,
    })
}
