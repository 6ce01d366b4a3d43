//! Configuration: one TOML file, every key with a default.
//!
//! Owns parsing, validation and the typed values (sizes, durations, secrets)
//! every other part receives. Nothing here starts a server or touches the
//! spool. The file is untrusted text: unknown keys and bad values are errors
//! that name the file, line, column and key (serde's `deny_unknown_fields`
//! plus typed deserializers, so toml attaches the span of the bad value).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "LABGRADER_CONFIG";
/// Environment variables that may carry secrets instead of files.
pub const WEBHOOK_TOKEN_ENV: &str = "LABGRADER_WEBHOOK_TOKEN";
pub const GITLAB_TOKEN_ENV: &str = "LABGRADER_GITLAB_TOKEN";
pub const CALLBACK_SECRET_ENV: &str = "LABGRADER_CALLBACK_SECRET";
pub const SMTP_PASSWORD_ENV: &str = "LABGRADER_SMTP_PASSWORD";
pub const SLURM_TOKEN_ENV: &str = "LABGRADER_SLURM_TOKEN";
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message already carries line, column, the offending line and
    /// the key; we add the file name.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("cannot read secret for `{key}` from {path}: {source}")]
    Secret {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The whole configuration. Every section and key has a default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub spool: SpoolConfig,
    pub gitlab: GitlabConfig,
    pub grader: GraderConfig,
    pub docker: DockerConfig,
    pub native: NativeConfig,
    pub slurm: SlurmConfig,
    pub callback: CallbackConfig,
    pub email: EmailConfig,
    pub deliver: DeliverConfig,
    /// Per-assignment policy, keyed by the student repository's name.
    pub assignments: BTreeMap<String, AssignmentConfig>,
    /// Secrets resolved from files or the environment at load time.
    #[serde(skip_deserializing)]
    pub secrets: Secrets,
    /// Where the config came from (for messages); `None` = built-in defaults.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub webhook_token_file: PathBuf,
    pub max_body: ByteSize,
    /// How long a "this test repository exists / does not exist" answer is
    /// trusted before GitLab (or git) is asked again.
    pub test_repo_cache_ttl: Seconds,
    /// Upper bound on the lookup made while GitLab waits (it gives 10 s).
    pub test_repo_lookup_timeout: Seconds,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8088".parse().expect("static address"),
            webhook_token_file: PathBuf::new(),
            max_body: ByteSize(1 << 20),
            test_repo_cache_ttl: Seconds(Duration::from_secs(300)),
            test_repo_lookup_timeout: Seconds(Duration::from_secs(3)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Root of the spool and of the daemon's state (mirrors, gradebook).
    pub dir: PathBuf,
    /// How long a dedup marker (`keys/`) and a delivery receipt (`sent/`)
    /// are kept: a delivery re-sent within this window of the first is
    /// recognized as a duplicate. Older ones are removed hourly.
    pub dedup_window: Seconds,
    /// Free space kept in reserve on the spool's file system: under it the
    /// hook refuses new jobs (503) and the grader stops claiming, so jobs
    /// already accepted can finish and deliver. 0 turns the check off.
    pub min_free: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("spool"),
            dedup_window: Seconds(Duration::from_secs(14 * 24 * 3600)),
            min_free: ByteSize(1 << 30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitlabConfig {
    pub url: String,
    pub token_file: PathBuf,
    /// `{gitlab_url}` and `{path}` (namespace/name) are substituted.
    pub clone_url: String,
    pub tests_namespace: String,
    pub tests_suffix: String,
    pub commit_status: bool,
    pub status_name: String,
    /// Optional; `{job_id}`, `{path}`, `{sha}` are substituted.
    pub target_url: String,
    pub api_timeout: Seconds,
    /// The URL GitLab calls for project hooks (this hook server as GitLab
    /// reaches it, e.g. `https://grader.example.edu/hooks/gitlab`). Used by
    /// `labgrader gitlab add-project-hooks` without `--url`; when set, a
    /// `project_create` system hook makes labgrader add this project hook
    /// to the new project. Empty = neither.
    pub project_hook_url: String,
}

impl Default for GitlabConfig {
    fn default() -> Self {
        Self {
            url: "https://gitlab.example.edu".into(),
            token_file: PathBuf::new(),
            clone_url: "{gitlab_url}/{path}.git".into(),
            tests_namespace: "root".into(),
            tests_suffix: "-test".into(),
            commit_status: true,
            status_name: "labgrader".into(),
            target_url: String::new(),
            api_timeout: Seconds(Duration::from_secs(10)),
            project_hook_url: String::new(),
        }
    }
}

impl GitlabConfig {
    /// The clone URL of `path` (namespace/name), never with a credential in it.
    pub fn clone_url_for(&self, path: &str) -> String {
        self.clone_url
            .replace("{gitlab_url}", self.url.trim_end_matches('/'))
            .replace("{path}", path)
    }

    /// The test repository's path for a student repository named `name`.
    pub fn tests_path_for(&self, name: &str) -> String {
        format!("{}/{}{}", self.tests_namespace, name, self.tests_suffix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    Auto,
    Docker,
    Native,
    Slurm,
    None,
}

/// Which grading contract a job follows (`[grader] contract`, per
/// assignment `contract`).
///
/// - `stdout` (gitlab-ag's): `test_all` runs in the student's workspace with
///   the test files laid over it (read-only to the job) and the grade is the
///   last `<summary>` block of its stdout.
/// - `trusted`: `test_all` (the harness) runs as a harness identity in its
///   own copy of the test tree; student code runs only through
///   `run-as-student`, as a student identity, in the workspace (the
///   student's tree with the tests' `public/` laid over it); the grade is
///   `results.json` in `$LABGRADER_RESULTS`, which only the harness can
///   write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Contract {
    #[default]
    Stdout,
    Trusted,
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Contract::Stdout => "stdout",
            Contract::Trusted => "trusted",
        })
    }
}

impl fmt::Display for RunnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunnerKind::Auto => "auto",
            RunnerKind::Docker => "docker",
            RunnerKind::Native => "native",
            RunnerKind::Slurm => "slurm",
            RunnerKind::None => "none",
        })
    }
}

impl FromStr for RunnerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "docker" => Ok(Self::Docker),
            "native" => Ok(Self::Native),
            "slurm" => Ok(Self::Slurm),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown runner `{other}`; expected docker, native, slurm, none or auto"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraderConfig {
    /// 0 = number of CPUs.
    pub workers: usize,
    pub runner: RunnerKind,
    pub timeout: Seconds,
    pub memory: ByteSize,
    pub pids: u64,
    pub output_limit: ByteSize,
    pub workspace_limit: ByteSize,
    pub workspace_files: u64,
    /// Bytes a job may write (workspace, `/tmp`, results), on every
    /// sandboxed runner; never charged to the spool's filesystem.
    pub disk: ByteSize,
    /// The grading contract of assignments that do not set their own.
    pub contract: Contract,
    /// Timeout of each git command (fetch, export).
    pub git_timeout: Seconds,
    /// A job that was active during this many daemon crashes goes to failed/.
    pub max_crashes: u32,
    /// Infrastructure failures are retried this many times before `infra_error`.
    pub infra_retries: u32,
    pub infra_backoff: Seconds,
    /// On SIGTERM running jobs get this long before they are killed and requeued.
    pub shutdown_grace: Seconds,
    /// Safety-net rescan of incoming/ besides inotify.
    pub rescan_interval: Seconds,
}

impl Default for GraderConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            runner: RunnerKind::Auto,
            timeout: Seconds(Duration::from_secs(120)),
            memory: ByteSize(256 << 20),
            pids: 256,
            output_limit: ByteSize(1 << 20),
            workspace_limit: ByteSize(512 << 20),
            workspace_files: 20_000,
            disk: ByteSize(1 << 30),
            contract: Contract::Stdout,
            git_timeout: Seconds(Duration::from_secs(120)),
            max_crashes: 3,
            infra_retries: 5,
            infra_backoff: Seconds(Duration::from_secs(30)),
            shutdown_grace: Seconds(Duration::from_secs(30)),
            rescan_interval: Seconds(Duration::from_secs(10)),
        }
    }
}

impl GraderConfig {
    pub fn effective_workers(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.workers
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    pub image: String,
    /// The student identity, numeric `uid:gid` (or `uid`, gid = uid):
    /// `test_all` under `stdout`, `run-as-student` children under
    /// `trusted`. Never 0.
    pub user: String,
    /// The harness identity (`test_all` under `trusted`), numeric like
    /// `user` and different from it. Never 0.
    pub harness_user: String,
    pub cpus: f64,
    pub readonly_rootfs: bool,
    /// Empty = the local engine's default socket (or DOCKER_HOST).
    pub host: String,
}

/// A sandbox identity `uid:gid` or `uid` (gid = uid), numeric (names
/// cannot be looked up inside an arbitrary image before anything runs),
/// never 0.
pub fn parse_ids(s: &str) -> Result<(u32, u32), String> {
    // The old default (`user = "nobody"`) keeps working: nobody is 65534
    // in Debian, Alpine and busybox images alike.
    if matches!(s.trim(), "nobody" | "nobody:nogroup" | "nobody:nobody") {
        return Ok((65534, 65534));
    }
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let num = |v: &str| v.trim().parse::<u32>().ok();
    match (num(u), num(g)) {
        (Some(0), _) | (_, Some(0)) => Err(format!(
            "`{s}` is root: job processes never run as uid or gid 0"
        )),
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(format!(
            "`{s}` is not a numeric `uid:gid` (user names other than `nobody` are not looked \
             up in the image); write e.g. \"65534:65534\""
        )),
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            image: "labgrader/grader:latest".into(),
            user: "65534:65534".into(),
            harness_user: "65533:65533".into(),
            cpus: 1.0,
            readonly_rootfs: true,
            host: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeConfig {
    pub rootfs: PathBuf,
    /// The student identity inside the sandbox (the harness is 65533).
    pub uid: u32,
    pub gid: u32,
    /// A root daemon maps its jobs' ids from this user's range in
    /// /etc/subuid and /etc/subgid; an unprivileged one uses its own user's.
    pub subid_user: String,
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            rootfs: PathBuf::from("/"),
            uid: 65534,
            gid: 65534,
            subid_user: "labgrader".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmConfig {
    pub url: String,
    pub api_version: String,
    pub user: String,
    pub token_file: PathBuf,
    pub partition: String,
    pub shared_dir: PathBuf,
    pub poll_interval: Seconds,
    /// The `labgrader` binary as compute nodes see it (empty = this
    /// process's own executable, which must then be at the same path there).
    pub labgrader_bin: PathBuf,
    /// A job still pending after this long is cancelled and retried later
    /// (a grader fault: the cluster has no room or the partition is down).
    pub queue_timeout: Seconds,
    /// Added to the job's memory limit for Slurm's own limit, which is a
    /// backstop over the sandbox's (the sandbox process itself needs some).
    pub memory_margin: ByteSize,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:6820".into(),
            api_version: "v0.0.38".into(),
            user: "labgrader".into(),
            token_file: PathBuf::new(),
            partition: "grade".into(),
            shared_dir: PathBuf::from("/srv/labgrader/shared"),
            poll_interval: Seconds(Duration::from_secs(1)),
            labgrader_bin: PathBuf::new(),
            queue_timeout: Seconds(Duration::from_secs(600)),
            memory_margin: ByteSize(64 << 20),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackConfig {
    /// Empty = no callback.
    pub url: String,
    pub secret_file: PathBuf,
    pub include_stderr: bool,
    pub include_hidden: bool,
    /// Time allowed for one callback request.
    pub timeout: Seconds,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret_file: PathBuf::new(),
            include_stderr: false,
            include_hidden: false,
            timeout: Seconds(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    Required,
    Opportunistic,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host:port`, `smtps://host:port`, `sendmail`, or "" for no email.
    pub url: String,
    pub from: String,
    pub starttls: StartTls,
    pub username: String,
    pub password_file: PathBuf,
    /// Used when GitLab hid the pusher's email; `{username}` is substituted.
    pub address_template: String,
    /// Bytes of stdout put in the message body (the rest is cut with a mark).
    pub stdout_limit: ByteSize,
    /// Time allowed for one SMTP conversation (or sendmail run).
    pub timeout: Seconds,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            url: "smtp://localhost:25".into(),
            from: "labgrader <grader@example.edu>".into(),
            starttls: StartTls::Opportunistic,
            username: String::new(),
            password_file: PathBuf::new(),
            address_template: String::new(),
            stdout_limit: ByteSize(256 << 10),
            timeout: Seconds(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverConfig {
    pub retry_for: Seconds,
    pub max_attempts: u32,
    pub backoff_min: Seconds,
    pub backoff_max: Seconds,
    /// Deliveries tried at the same time (the rest wait on disk).
    pub concurrency: usize,
}

impl Default for DeliverConfig {
    fn default() -> Self {
        Self {
            retry_for: Seconds(Duration::from_secs(24 * 3600)),
            max_attempts: 50,
            backoff_min: Seconds(Duration::from_secs(2)),
            backoff_max: Seconds(Duration::from_secs(600)),
            concurrency: 8,
        }
    }
}

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

/// `N/window`, e.g. `5/24h`: at most N accepted submissions per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub count: u32,
    pub window: Duration,
}

impl FromStr for Quota {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, w) = s
            .split_once('/')
            .ok_or_else(|| format!("quota `{s}` is not of the form COUNT/WINDOW, e.g. 5/24h"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("quota count `{n}` is not a whole number"))?;
        let window = parse_duration(w.trim())?;
        if window.is_zero() {
            return Err("quota window must be longer than zero".into());
        }
        Ok(Quota { count, window })
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.window)
        )
    }
}

/// A number of bytes written as `1MiB`, `512k`, `2 GB` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. 1MiB, 512KiB or 1048576"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" | "ki" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" | "mi" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" | "gi" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" | "ti" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KiB, MiB, GiB (or kB, MB, GB)"
                ));
            }
        };
        let v = num * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(format!("size `{s}` is out of range"));
        }
        Ok(ByteSize(v as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= m && b % m == 0 {
                return write!(f, "{}{}", b / m, unit);
            }
        }
        write!(f, "{b}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration written as `120s`, `5m`, `24h`, `1h 30m` or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub fn get(self) -> Duration {
        self.0
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 120s, 5m or 24h"))
}

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Seconds)
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Seconds(Duration::from_secs(n))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quota {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Quota {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

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
        ] {
            m.serialize_entry(k, if v.is_some() { "<redacted>" } else { "<unset>" })?;
        }
        m.end()
    }
}

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
        };
        Ok(())
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
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
    fn validate(&self) -> Result<(), ConfigError> {
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
            if a.runner == Some(RunnerKind::Auto) {
                return Err(self.invalid(
                    &format!("assignments.{name}.runner"),
                    "must name a runner (docker, native, slurm, none); auto is only for [grader]",
                ));
            }
        }
        Ok(())
    }

    /// The effective config as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// One secret, from the first place that has it: the systemd credential
/// `credential` in `creds` (`$CREDENTIALS_DIRECTORY`; an empty or missing
/// file there does not count), else the `*_file` key `key` (`file`), else
/// the environment variable `env`. Text is trimmed; empty means none.
fn read_secret(
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

#[cfg(test)]
mod tests {
    use super::*;

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
