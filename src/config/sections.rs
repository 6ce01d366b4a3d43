//! The config file's sections (`[server]`, `[spool]`, `[gitlab]`,
//! `[grader]`, `[docker]`, `[native]`, `[slurm]`, `[callback]`, `[email]`,
//! `[deliver]`), their keys and built-in defaults, and the whole
//! [`Config`]. Single values are checked by their types while parsing;
//! nothing here reads files or the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::assignment::AssignmentConfig;
use super::secrets::Secrets;
use super::values::{ByteSize, Contract, RunnerKind, Seconds};

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
    /// Staff alerts (off unless an address or a URL is set).
    pub alerts: super::alerts::AlertsConfig,
    pub web: super::web::WebConfig,
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
    /// How long a push from `[gitlab] student_namespaces` whose test
    /// repository does not exist yet is held (`held/`) before it fails.
    pub hold_for: Seconds,
    /// Most pushes held at once for one student project; a push over it
    /// is ignored with the reason.
    pub held_per_project: usize,
    /// Most pushes held at once for one namespace path (all its projects);
    /// a push over it is ignored with the reason.
    pub held_per_namespace: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("spool"),
            dedup_window: Seconds(Duration::from_secs(14 * 24 * 3600)),
            min_free: ByteSize(1 << 30),
            hold_for: Seconds(Duration::from_secs(7 * 24 * 3600)),
            held_per_project: 20,
            held_per_namespace: 50,
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
    /// Namespaces the course's students push in: a push there whose test
    /// repository is missing is held (`[spool] hold_for`), not ignored.
    pub student_namespaces: Vec<String>,
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
            student_namespaces: Vec::new(),
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

    /// True when `namespace` is one of `student_namespaces` or inside one.
    pub fn is_student_namespace(&self, namespace: &str) -> bool {
        self.student_namespaces.iter().any(|ns| {
            namespace == ns
                || namespace
                    .strip_prefix(ns.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// The test repository's path for a student repository named `name`.
    pub fn tests_path_for(&self, name: &str) -> String {
        format!("{}/{}{}", self.tests_namespace, name, self.tests_suffix)
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
    /// At most this many jobs submitted to Slurm and not yet collected;
    /// the others wait unsubmitted (never thousands in Slurm's queue).
    pub max_in_flight: usize,
    /// Pilot allocations kept while jobs wait (0 = one Slurm job per
    /// grading job). Each runs `labgrader sandbox --serve` and each job in
    /// it as its own step with its own limits.
    pub pilots: usize,
    /// Jobs one pilot runs at once.
    pub pilot_slots: usize,
    /// CPUs and memory of one pilot's allocation (its jobs' steps share it).
    pub pilot_cpus: u64,
    pub pilot_memory: ByteSize,
    /// A pilot's Slurm time limit; it takes no job that could outlive it.
    pub pilot_lifetime: Seconds,
    /// A pilot without work for this long ends, giving its node back.
    pub pilot_idle: Seconds,
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
            poll_interval: Seconds(Duration::from_secs(5)),
            labgrader_bin: PathBuf::new(),
            queue_timeout: Seconds(Duration::from_secs(600)),
            memory_margin: ByteSize(64 << 20),
            max_in_flight: 32,
            pilots: 0,
            pilot_slots: 8,
            pilot_cpus: 2,
            pilot_memory: ByteSize(4 << 30),
            pilot_lifetime: Seconds(Duration::from_secs(3600)),
            pilot_idle: Seconds(Duration::from_secs(60)),
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

/// The host's own mail transfer agent, when it has one (Postfix, Exim…).
pub const SENDMAIL: &str = "/usr/sbin/sendmail";

impl EmailConfig {
    /// The default `email.url`: the host's MTA (`sendmail`) when it has
    /// one, else no email. Never an SMTP port nobody may listen on, whose
    /// deliveries would be retried for a day.
    pub fn default_url() -> String {
        if std::path::Path::new(SENDMAIL).exists() {
            "sendmail".into()
        } else {
            String::new()
        }
    }
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            url: EmailConfig::default_url(),
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
    /// How long a job's run (the sandbox's start included) must have lasted
    /// before the `running` callback and commit status are queued: a job
    /// that ends sooner sends its result alone (one request instead of
    /// two). Zero: always.
    pub running_after: Seconds,
}

impl Default for DeliverConfig {
    fn default() -> Self {
        Self {
            retry_for: Seconds(Duration::from_secs(24 * 3600)),
            max_attempts: 50,
            backoff_min: Seconds(Duration::from_secs(2)),
            backoff_max: Seconds(Duration::from_secs(600)),
            concurrency: 8,
            running_after: Seconds(Duration::from_secs(1)),
        }
    }
}
