//! The `docker` runner: each job in a fresh container of the course image,
//! driven through the engine API (bollard). It owns the container's whole
//! life — create, run, kill, remove — and never reads the summary, touches
//! the spool or the gradebook.
//!
//! Design, chosen for the fewest engine round trips per job (create, attach,
//! start, wait, inspect, remove — what `docker run` itself does):
//!
//! - The root filesystem is read-only; `/tmp` and `/workspace` are tmpfs
//!   mounts, so nothing a job writes reaches the host's disk and all of it is
//!   bounded: tmpfs pages are charged to the container's memory cgroup, so
//!   the memory limit covers the process memory *and* the files written
//!   (including the workspace itself).
//! - A tmpfs exists only once the container runs, so the workspace cannot be
//!   uploaded before start (and the engine refuses archive uploads into a
//!   read-only root). Instead the container is created with stdin open; its
//!   command is `sh -c 'tar -xof - && printf READY >&2 && exec ./test_all'`
//!   under the engine's init (`docker-init`, which reaps zombies). We attach
//!   to stdin/stdout/stderr *before* start (so no output is missed), start,
//!   and stream the workspace as a tar (built on the fly, headers owned by
//!   the job user, symlinks stored as links and never followed) into stdin,
//!   then close it. No bind mount: a remote engine works too, and no exec
//!   round trip is needed. The image must have `/bin/sh` and `tar`.
//! - The READY line carries a per-job nonce and is stripped from stderr.
//!   Nothing the student wrote has run before it, so a run that ends
//!   without it is a setup failure (grader fault), never a verdict.
//! - Limits: memory = memory+swap (no swap), pids, CPU quota, `network_mode
//!   = none`, all capabilities dropped, `no-new-privileges`, ulimits `fsize`
//!   and `nofile`, logging driver `none` (output is streamed, never stored
//!   by the engine), label `labgrader.job=<id>`.
//! - Verdicts: deadline → SIGKILL the container, [`Termination::Timeout`];
//!   `State.OOMKilled` → [`Termination::MemoryLimit`] (only that flag means
//!   memory: an exit code of 137 alone may be a pids-limit casualty or a
//!   plain `kill -9`); else the exit code (128+n is reported as signal n).
//! - Grader faults ([`SandboxError`]): engine unreachable, image missing,
//!   API errors, setup failure. The container is removed on every path:
//!   explicitly at the end, and by a drop guard if the job's future is
//!   dropped (cancel, shutdown).
//!
//! Untrusted input here is the workspace (file names, symlinks, sizes) and
//! everything the container prints; both are streamed with fixed buffers.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use chrono::Utc;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use super::none::SAFE_PATH;
use super::output::{Captured, SharedCapture};
use super::{RunOutcome, RunSpec, Runner, SandboxError, TEST_COMMAND, Termination};
use crate::config::DockerConfig;

/// Label carried by every job container; its value is the job id.
pub const JOB_LABEL: &str = "labgrader.job";
/// Label naming the grader that made a container (its spool directory),
/// so that at start a grader removes only its own orphans, never the
/// running jobs of another grader on the same engine.
pub const OWNER_LABEL: &str = "labgrader.owner";
/// Where the workspace is unpacked inside the container (the cwd).
pub const WORKSPACE_DIR: &str = "/workspace";
/// How long engine calls made after the run (kill, wait, inspect, remove)
/// may take before the engine is declared at fault.
const ENGINE_GRACE: Duration = Duration::from_secs(30);
/// After the container exited, how long the output stream may take to end.
const OUTPUT_LINGER: Duration = Duration::from_secs(2);
/// Chunk size of the streamed workspace tar, and chunks in flight.
const TAR_CHUNK: usize = 64 * 1024;
const TAR_CHUNKS_IN_FLIGHT: usize = 8;
/// Setup chatter (tar warnings) kept for the error message.
const SETUP_LOG_LIMIT: usize = 16 * 1024;
/// SIGXFSZ: what the kernel sends a process writing past RLIMIT_FSIZE.
const SIGXFSZ: i32 = 25;

/// Runs jobs in containers on one Docker engine.
#[derive(Debug, Clone)]
pub struct DockerRunner {
    /// Made on first use in the runtime that runs the jobs (a client made
    /// in another runtime would hold connections bound to it).
    client: Arc<OnceCell<Docker>>,
    cfg: DockerConfig,
    user: JobUser,
    /// Value of [`OWNER_LABEL`] on this runner's containers.
    owner: String,
}

/// The configured `user`, as far as it is numeric (for tar headers and the
/// workspace tmpfs owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JobUser {
    uid: Option<u32>,
    gid: Option<u32>,
}

impl JobUser {
    fn parse(user: &str) -> JobUser {
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        JobUser {
            uid: u.parse().ok(),
            gid: g.and_then(|g| g.parse().ok()),
        }
    }
}

/// Open a client for `cfg.host` (empty: `DOCKER_HOST`, else the local
/// socket) and agree on an API version with the engine.
async fn client(cfg: &DockerConfig) -> Result<Docker, SandboxError> {
    let docker = if cfg.host.is_empty() {
        Docker::connect_with_defaults()
    } else {
        Docker::connect_with_host(&cfg.host)
    }
    .map_err(unavailable)?;
    docker.negotiate_version().await.map_err(unavailable)
}

fn unavailable(e: BollardError) -> SandboxError {
    SandboxError::Unavailable {
        runner: "docker".into(),
        message: format!(
            "{e}; is the Docker engine running and is this user allowed to use its socket?"
        ),
    }
}

fn engine(step: &'static str) -> impl FnOnce(BollardError) -> SandboxError {
    move |e| SandboxError::Setup {
        step,
        message: e.to_string(),
    }
}

/// How long `available()` waits for the engine to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Does the engine answer (within a few seconds)? Used by `runner = "auto"`.
pub async fn available(cfg: &DockerConfig) -> bool {
    let probe = async {
        match client(cfg).await {
            Ok(d) => d.ping().await.is_ok(),
            Err(_) => false,
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .unwrap_or(false)
}

impl DockerRunner {
    /// Connect to the engine and check that the configured image is there
    /// (no registry is assumed reachable: images are built or loaded by the
    /// course staff).
    pub async fn connect(cfg: &DockerConfig) -> Result<DockerRunner, SandboxError> {
        let docker = client(cfg).await?;
        docker.ping().await.map_err(unavailable)?;
        let runner = DockerRunner {
            client: Arc::new(OnceCell::new_with(Some(docker))),
            cfg: cfg.clone(),
            user: JobUser::parse(&cfg.user),
            owner: String::new(),
        };
        runner.image_id(&cfg.image).await?;
        Ok(runner)
    }

    /// Name the grader this runner works for (the daemon passes its spool
    /// directory): see [`OWNER_LABEL`].
    pub fn with_owner(mut self, owner: impl Into<String>) -> DockerRunner {
        self.owner = owner.into();
        self
    }

    /// [`DockerRunner::connect`] for synchronous callers (`build_runner`),
    /// inside or outside a tokio runtime: the checks run on a thread of
    /// their own; the engine client is made again on first use.
    pub fn connect_blocking(cfg: &DockerConfig) -> Result<DockerRunner, SandboxError> {
        let cfg2 = cfg.clone();
        let checked = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                tokio::time::timeout(PROBE_TIMEOUT, DockerRunner::connect(&cfg2))
                    .await
                    .unwrap_or_else(|_| {
                        Err(SandboxError::Unavailable {
                            runner: "docker".into(),
                            message: "the engine did not answer within 5 s".into(),
                        })
                    })
            })
            .map(|_| ())
        })
        .join()
        .map_err(|_| SandboxError::Setup {
            step: "connect to docker",
            message: "the connecting thread panicked".into(),
        })?;
        checked?;
        Ok(DockerRunner {
            client: Arc::new(OnceCell::new()),
            cfg: cfg.clone(),
            user: JobUser::parse(&cfg.user),
            owner: String::new(),
        })
    }

    async fn docker(&self) -> Result<&Docker, SandboxError> {
        self.client.get_or_try_init(|| client(&self.cfg)).await
    }

    /// The immutable id (`sha256:…`) of `image` on the engine.
    pub async fn image_id(&self, image: &str) -> Result<String, SandboxError> {
        match self.docker().await?.inspect_image(image).await {
            Ok(i) => Ok(i.id.unwrap_or_default()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(SandboxError::Setup {
                step: "find image",
                message: format!(
                    "image `{image}` is not on the Docker engine; build it \
                     (scripts/images/course.sh shows how) or `docker load` it"
                ),
            }),
            Err(e) => Err(engine("inspect image")(e)),
        }
    }

    /// Remove the job containers (labelled `labgrader.job`) of this
    /// runner's owner, and those with no owner label (made before there
    /// was one): what a crashed daemon left. Call once at start, before
    /// any job runs: it also removes running ones. Another grader's
    /// containers on the same engine are left alone. Returns how many
    /// were removed.
    pub async fn remove_orphans(&self) -> Result<usize, SandboxError> {
        let ids: Vec<String> = self
            .list_labelled(JOB_LABEL)
            .await?
            .into_iter()
            .filter(|c| {
                let owner = c.labels.as_ref().and_then(|l| l.get(OWNER_LABEL));
                owner.is_none_or(|o| *o == self.owner)
            })
            .filter_map(|c| c.id)
            .collect();
        for id in &ids {
            tracing::warn!(container = %id, "removing orphaned job container");
            self.remove(id).await?;
        }
        Ok(ids.len())
    }

    /// Ids of the containers (any state) of job `job_id`, or of all jobs.
    pub async fn job_containers(&self, job_id: Option<&str>) -> Result<Vec<String>, SandboxError> {
        let label = match job_id {
            Some(id) => format!("{JOB_LABEL}={id}"),
            None => JOB_LABEL.to_string(),
        };
        let list = self.list_labelled(&label).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Containers in any state matching a `label` filter (`key` or `key=value`).
    async fn list_labelled(
        &self,
        label: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, SandboxError> {
        let filters = HashMap::from([("label", vec![label])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker()
            .await?
            .list_containers(Some(opts))
            .await
            .map_err(engine("list containers"))
    }

    async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker().await?.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            // 409: removal already in progress (e.g. the drop guard).
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(engine("remove container")(e)),
        }
    }

    fn container_body(&self, spec: &RunSpec, image: &str, marker: &str) -> ContainerCreateBody {
        let l = &spec.limits;
        let mut env = vec![
            format!("PATH={SAFE_PATH}"),
            format!("HOME={WORKSPACE_DIR}"),
            "LANG=C.UTF-8".to_string(),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let ws_owner = match (self.user.uid, self.user.gid) {
            (Some(u), Some(g)) => format!(",uid={u},gid={g},mode=0700"),
            (Some(u), None) => format!(",uid={u},mode=0700"),
            _ => ",mode=1777".to_string(),
        };
        let tmpfs = HashMap::from([
            (
                WORKSPACE_DIR.to_string(),
                format!("rw,exec,nosuid,nodev,size={}{ws_owner}", l.memory),
            ),
            (
                "/tmp".to_string(),
                format!("rw,exec,nosuid,nodev,size={},mode=1777", l.memory),
            ),
        ]);
        let cpus = if l.cpus > 0.0 {
            l.cpus.min(self.cfg.cpus)
        } else {
            self.cfg.cpus
        };
        let ulimit = |name: &str, v: u64| ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(clamp(v)),
            hard: Some(clamp(v)),
        };
        let script = format!("tar -xof - && printf '%s\\n' '{marker}' >&2 && exec {TEST_COMMAND}");
        ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), script]),
            entrypoint: Some(vec![]),
            user: Some(self.cfg.user.clone()),
            working_dir: Some(WORKSPACE_DIR.into()),
            env: Some(env),
            labels: Some(HashMap::from([
                (JOB_LABEL.to_string(), spec.job_id.clone()),
                (OWNER_LABEL.to_string(), self.owner.clone()),
            ])),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            tty: Some(false),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                init: Some(true),
                memory: Some(clamp(l.memory)),
                memory_swap: Some(clamp(l.memory)),
                pids_limit: Some(clamp(l.pids)),
                nano_cpus: Some((cpus * 1e9) as i64),
                network_mode: Some("none".into()),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(self.cfg.readonly_rootfs),
                ipc_mode: Some("private".into()),
                tmpfs: Some(tmpfs),
                ulimits: Some(vec![
                    ulimit("fsize", l.file_size),
                    ulimit("nofile", l.open_files),
                ]),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".into()),
                    config: None,
                }),
                auto_remove: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Removes the container if the job's future is dropped before it could.
struct ContainerGuard {
    runner: DockerRunner,
    id: String,
    armed: bool,
}

impl ContainerGuard {
    async fn remove(mut self) -> Result<(), SandboxError> {
        self.armed = false;
        tokio::time::timeout(ENGINE_GRACE, self.runner.remove(&self.id))
            .await
            .unwrap_or_else(|_| {
                Err(SandboxError::Setup {
                    step: "remove container",
                    message: "the engine did not answer in time".into(),
                })
            })
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (runner, id) = (self.runner.clone(), std::mem::take(&mut self.id));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = runner.remove(&id).await {
                    tracing::error!(container = %id, error = %e, "could not remove job container");
                }
            });
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One workspace entry to send.
struct Entry {
    rel: PathBuf,
    kind: EntryKind,
}

enum EntryKind {
    Dir,
    File { size: u64 },
    Symlink(PathBuf),
}

/// Walk the workspace (no symlink is followed); special files are skipped.
fn list_workspace(root: &Path) -> std::io::Result<(Vec<Entry>, u64, u64)> {
    let (mut entries, mut total, mut largest) = (Vec::new(), 0u64, 0u64);
    for item in walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
    {
        let item = item.map_err(std::io::Error::other)?;
        let rel = item
            .path()
            .strip_prefix(root)
            .expect("walkdir yields paths under its root")
            .to_path_buf();
        let ft = item.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink(std::fs::read_link(item.path())?)
        } else if ft.is_file() {
            let size = item.metadata().map_err(std::io::Error::other)?.len();
            total += size;
            largest = largest.max(size);
            EntryKind::File { size }
        } else {
            continue;
        };
        entries.push(Entry { rel, kind });
    }
    Ok((entries, total, largest))
}

/// `Write` into a bounded channel of chunks (the tar builder runs on a
/// blocking thread; the async side forwards chunks to the container).
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= TAR_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(TAR_CHUNK));
            self.tx.blocking_send(chunk).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "receiver gone")
            })?;
        }
        Ok(())
    }
}

/// Write the tar of `entries` (owned by `user`) into `out`.
fn write_tar(
    root: &Path,
    entries: &[Entry],
    user: JobUser,
    out: impl Write,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    let (uid, gid) = (
        user.uid.unwrap_or(0) as u64,
        user.gid.or(user.uid).unwrap_or(0) as u64,
    );
    for e in entries {
        let path = root.join(&e.rel);
        let mut h = tar::Header::new_gnu();
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(0);
        match &e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, &e.rel, std::io::empty())?;
            }
            EntryKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, &e.rel, target)?;
            }
            EntryKind::File { size } => {
                let f = std::fs::File::open(&path)?;
                let meta = f.metadata()?;
                // The file may have changed since the walk: send what the
                // header says, no more.
                let exec = meta.permissions().mode() & 0o111 != 0;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if exec { 0o755 } else { 0o644 });
                h.set_size(*size);
                tar.append_data(
                    &mut h,
                    &e.rel,
                    std::io::Read::take(f, *size).chain_zeros(*size),
                )?;
            }
        }
    }
    tar.into_inner()?.flush()
}

/// A reader padded with zeros to exactly `len` bytes (a file that shrank
/// after the walk must not corrupt the tar stream).
trait ChainZeros: std::io::Read + Sized {
    fn chain_zeros(self, len: u64) -> std::io::Take<std::io::Chain<Self, std::io::Repeat>> {
        std::io::Read::take(std::io::Read::chain(self, std::io::repeat(0)), len)
    }
}
impl<R: std::io::Read> ChainZeros for R {}

/// Splits the setup chatter and the READY marker off the stderr stream.
struct ReadyGate {
    marker: Vec<u8>,
    pending: Vec<u8>,
    setup_log: Vec<u8>,
    ready: bool,
}

impl ReadyGate {
    fn new(marker: &str) -> ReadyGate {
        ReadyGate {
            marker: format!("{marker}\n").into_bytes(),
            pending: Vec::new(),
            setup_log: Vec::new(),
            ready: false,
        }
    }

    /// Feed a stderr chunk; what belongs to the job goes to `capture`.
    fn push(&mut self, chunk: &[u8], capture: &SharedCapture, limit: u64) {
        if self.ready {
            capture.push(chunk, limit);
            return;
        }
        self.pending.extend_from_slice(chunk);
        if let Some(pos) = find(&self.pending, &self.marker) {
            self.ready = true;
            let rest = self.pending.split_off(pos + self.marker.len());
            self.pending.truncate(pos);
            self.keep_setup_log();
            if !rest.is_empty() {
                capture.push(&rest, limit);
            }
        } else if self.pending.len() > 2 * self.marker.len() {
            // Keep only a tail long enough to hold a split marker.
            let cut = self.pending.len() - self.marker.len();
            let head: Vec<u8> = self.pending.drain(..cut).collect();
            let room = SETUP_LOG_LIMIT.saturating_sub(self.setup_log.len());
            self.setup_log
                .extend_from_slice(&head[..head.len().min(room)]);
        }
    }

    fn keep_setup_log(&mut self) {
        let room = SETUP_LOG_LIMIT.saturating_sub(self.setup_log.len());
        let n = self.pending.len().min(room);
        self.setup_log.extend_from_slice(&self.pending[..n]);
        self.pending.clear();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How the wait for the container ended.
enum Ending {
    Exited,
    Timeout,
    Cancelled,
}

#[async_trait::async_trait]
impl Runner for DockerRunner {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn remove_orphans(&self) -> Result<usize, SandboxError> {
        DockerRunner::remove_orphans(self).await
    }

    async fn run(
        &self,
        spec: &RunSpec,
        cancel: &CancellationToken,
    ) -> Result<RunOutcome, SandboxError> {
        let image = spec.image.clone().unwrap_or_else(|| self.cfg.image.clone());
        let limits = &spec.limits;

        // The workspace must fit where it goes: in memory, files under fsize.
        let root = spec.workspace.clone();
        let (entries, total, largest) = tokio::task::spawn_blocking(move || list_workspace(&root))
            .await
            .map_err(|e| SandboxError::Io(std::io::Error::other(e)))??;
        if total > limits.memory || largest > limits.file_size {
            let (termination, why) = if total > limits.memory {
                (
                    Termination::MemoryLimit,
                    format!(
                        "the workspace holds {total} bytes but the memory limit is {} bytes \
                         (files in /workspace live in memory)",
                        limits.memory
                    ),
                )
            } else {
                (
                    Termination::Signaled { signal: SIGXFSZ },
                    format!(
                        "a workspace file has {largest} bytes but the file-size limit is {} bytes",
                        limits.file_size
                    ),
                )
            };
            tracing::warn!(job_id = %spec.job_id, "{why}");
            let now = Utc::now();
            return Ok(RunOutcome {
                termination,
                stdout: Captured::default(),
                stderr: Captured::from_bytes(
                    format!("labgrader: {why}\n").into_bytes(),
                    limits.output,
                ),
                started_at: now,
                ended_at: now,
                runner: self.name().into(),
                image: Some(image),
                image_id: None,
                disk_full: false,
            });
        }

        let marker = format!("labgrader-ready-{}", ulid::Ulid::generate());
        let body = self.container_body(spec, &image, &marker);
        let created = match self
            .docker()
            .await?
            .create_container(None::<CreateContainerOptions>, body)
            .await
        {
            Ok(c) => c,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(self
                    .image_id(&image)
                    .await
                    .err()
                    .unwrap_or(SandboxError::Setup {
                        step: "create container",
                        message: format!("image `{image}` disappeared"),
                    }));
            }
            Err(e) => return Err(engine("create container")(e)),
        };
        let guard = ContainerGuard {
            runner: self.clone(),
            id: created.id.clone(),
            armed: true,
        };
        let id = created.id.as_str();
        tracing::debug!(job_id = %spec.job_id, container = %id, "container created");

        let ran = self.run_container(id, spec, entries, &marker, cancel).await;
        // Removed on every path; a removal failure is the engine's fault.
        let removed = guard.remove().await;
        let ran = ran?;
        removed?;

        let state = &ran.state;
        let termination = match ran.ending {
            Ending::Cancelled => return Err(SandboxError::Cancelled),
            Ending::Timeout => Termination::Timeout,
            Ending::Exited if state.oom_killed => Termination::MemoryLimit,
            Ending::Exited if !ran.gate.ready => {
                let chatter = String::from_utf8_lossy(&ran.gate.setup_log)
                    .trim()
                    .to_string();
                return Err(SandboxError::Setup {
                    step: "unpack workspace in container",
                    message: format!(
                        "`sh -c 'tar -x …'` exited with code {}{}{} (the image needs /bin/sh and tar)",
                        state.exit_code,
                        if chatter.is_empty() { "" } else { ": " },
                        chatter
                    ),
                });
            }
            Ending::Exited => match state.exit_code {
                code @ 129..=192 => Termination::Signaled {
                    signal: (code - 128) as i32,
                },
                code => Termination::Exited { code: code as i32 },
            },
        };
        Ok(RunOutcome {
            termination,
            stdout: ran.stdout.snapshot(),
            stderr: ran.stderr.snapshot(),
            started_at: ran.started_at,
            ended_at: Utc::now(),
            runner: self.name().into(),
            image: Some(image),
            image_id: ran.state.image_id,
            disk_full: false,
        })
    }
}

/// What the container's final state says.
#[derive(Debug, Default)]
struct FinalState {
    oom_killed: bool,
    exit_code: i64,
    image_id: Option<String>,
}

/// A container run, before it is judged.
struct Ran {
    ending: Ending,
    state: FinalState,
    stdout: SharedCapture,
    stderr: SharedCapture,
    gate: ReadyGate,
    started_at: chrono::DateTime<Utc>,
}

impl DockerRunner {
    /// Attach, start, feed the workspace, collect output until the
    /// container ends (or the deadline / cancel), then read its state.
    async fn run_container(
        &self,
        id: &str,
        spec: &RunSpec,
        entries: Vec<Entry>,
        marker: &str,
        cancel: &CancellationToken,
    ) -> Result<Ran, SandboxError> {
        let limit = spec.limits.output;
        let docker = self.docker().await?;
        let attach = docker
            .attach_container(
                id,
                Some(
                    AttachContainerOptionsBuilder::new()
                        .stdin(true)
                        .stdout(true)
                        .stderr(true)
                        .stream(true)
                        .logs(false)
                        .build(),
                ),
            )
            .await
            .map_err(engine("attach to container"))?;
        let mut output = attach.output;
        let mut input = attach.input;

        // The tar is built on a blocking thread and forwarded chunk by chunk.
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TAR_CHUNKS_IN_FLIGHT);
        let root = spec.workspace.clone();
        let user = self.user;
        let builder = tokio::task::spawn_blocking(move || {
            let out = ChunkWriter {
                tx,
                buf: Vec::with_capacity(TAR_CHUNK),
            };
            write_tar(&root, &entries, user, out)
        });
        let job_id = spec.job_id.clone();
        // Aborted when this function returns, on every path.
        let _feeder = AbortOnDrop(tokio::spawn(async move {
            let mut fed = Ok(());
            while let Some(chunk) = rx.recv().await {
                if let Err(e) = input.write_all(&chunk).await {
                    fed = Err(e);
                    break;
                }
            }
            drop(rx);
            let _ = input.shutdown().await;
            match builder.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(job_id = %job_id, error = %e, "building workspace tar failed")
                }
                Err(e) => tracing::warn!(job_id = %job_id, error = %e, "workspace tar task failed"),
            }
            if let Err(e) = fed {
                tracing::debug!(job_id = %job_id, error = %e, "container stdin closed early");
            }
            // Keep the write half alive until the output side is done: on
            // some engines dropping it closes the whole connection.
            input
        }));

        let started_at = Utc::now();
        docker
            .start_container(id, None)
            .await
            .map_err(engine("start container"))?;

        let (stdout, stderr) = (SharedCapture::default(), SharedCapture::default());
        let mut gate = ReadyGate::new(marker);
        let deadline = tokio::time::sleep(spec.limits.timeout);
        tokio::pin!(deadline);

        // Phase 1: output until the stream ends; phase 2: the exit itself.
        let mut ending = Ending::Exited;
        let mut stream_error = None;
        loop {
            tokio::select! {
                item = output.next() => match item {
                    Some(Ok(LogOutput::StdOut { message })) | Some(Ok(LogOutput::Console { message })) => {
                        stdout.push(&message, limit)
                    }
                    Some(Ok(LogOutput::StdErr { message })) => gate.push(&message, &stderr, limit),
                    Some(Ok(LogOutput::StdIn { .. })) => {}
                    Some(Err(e)) => {
                        stream_error = Some(e);
                        break;
                    }
                    None => break,
                },
                _ = &mut deadline => {
                    ending = Ending::Timeout;
                    break;
                }
                _ = cancel.cancelled() => {
                    ending = Ending::Cancelled;
                    break;
                }
            }
        }
        if matches!(ending, Ending::Exited) {
            let wait = async {
                let opts = WaitContainerOptionsBuilder::new()
                    .condition("not-running")
                    .build();
                let mut w = docker.wait_container(id, Some(opts));
                match w.next().await {
                    Some(Ok(_)) | None => Ok(()),
                    Some(Err(BollardError::DockerContainerWaitError { .. })) => Ok(()),
                    Some(Err(e)) => Err(e),
                }
            };
            tokio::select! {
                w = wait => {
                    if let Err(e) = w {
                        return Err(engine("wait for container")(e));
                    }
                }
                _ = &mut deadline => ending = Ending::Timeout,
                _ = cancel.cancelled() => ending = Ending::Cancelled,
            }
        }
        if !matches!(ending, Ending::Exited) {
            let opts = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
            match self.docker().await?.kill_container(id, Some(opts)).await {
                Ok(()) => {}
                // Not running any more (it ended just now).
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => {}
                Err(e) => return Err(engine("kill container")(e)),
            }
            // Keep what is still in flight, briefly.
            let _ = tokio::time::timeout(OUTPUT_LINGER, async {
                while let Some(Ok(item)) = output.next().await {
                    match item {
                        LogOutput::StdOut { message } | LogOutput::Console { message } => {
                            stdout.push(&message, limit)
                        }
                        LogOutput::StdErr { message } => gate.push(&message, &stderr, limit),
                        LogOutput::StdIn { .. } => {}
                    }
                }
            })
            .await;
        } else if let Some(e) = stream_error {
            return Err(engine("read container output")(e));
        }

        let inspect = tokio::time::timeout(
            ENGINE_GRACE,
            self.docker().await?.inspect_container(id, None),
        )
        .await
        .map_err(|_| SandboxError::Setup {
            step: "inspect container",
            message: "the engine did not answer in time".into(),
        })?
        .map_err(engine("inspect container"))?;
        let state = inspect.state.unwrap_or_default();
        let fin = FinalState {
            oom_killed: state.oom_killed.unwrap_or(false),
            exit_code: state.exit_code.unwrap_or(-1),
            image_id: inspect.image,
        };
        if matches!(ending, Ending::Exited) && state.running == Some(true) {
            return Err(SandboxError::Setup {
                step: "wait for container",
                message: "the output stream ended but the container still runs".into(),
            });
        }
        Ok(Ran {
            ending,
            state: fin,
            stdout,
            stderr,
            gate,
            started_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_user_parses_numeric_and_named_users() {
        assert_eq!(
            JobUser::parse("65534:65534"),
            JobUser {
                uid: Some(65534),
                gid: Some(65534)
            }
        );
        assert_eq!(
            JobUser::parse("1000"),
            JobUser {
                uid: Some(1000),
                gid: None
            }
        );
        assert_eq!(
            JobUser::parse("nobody"),
            JobUser {
                uid: None,
                gid: None
            }
        );
    }

    #[test]
    fn ready_gate_strips_marker_split_across_chunks() {
        let cap = SharedCapture::default();
        let mut g = ReadyGate::new("labgrader-ready-X");
        g.push(b"tar: warning\nlabgrader-re", &cap, 1000);
        assert!(!g.ready);
        g.push(b"ady-X\nstudent err\n", &cap, 1000);
        assert!(g.ready);
        assert_eq!(cap.snapshot().bytes, b"student err\n");
        assert_eq!(g.setup_log, b"tar: warning\n");
    }

    #[test]
    fn ready_gate_without_marker_keeps_setup_log_bounded() {
        let cap = SharedCapture::default();
        let mut g = ReadyGate::new("m");
        for _ in 0..10_000 {
            g.push(b"tar: something went wrong\n", &cap, 1000);
        }
        assert!(!g.ready);
        assert!(g.setup_log.len() <= SETUP_LOG_LIMIT);
        assert!(cap.snapshot().bytes.is_empty());
    }

    #[test]
    fn workspace_tar_keeps_symlinks_as_links_and_sets_owner() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("leak")).unwrap();
        let (entries, total, largest) = list_workspace(dir.path()).unwrap();
        assert_eq!((total, largest), (5, 5));
        let mut out = Vec::new();
        let user = JobUser::parse("65534:65533");
        write_tar(dir.path(), &entries, user, &mut out).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (65534, 65533));
            let kind = h.entry_type();
            let link = e.link_name().unwrap().map(|l| l.into_owned());
            seen.push((e.path().unwrap().into_owned(), kind, link));
        }
        assert!(seen.iter().any(|(p, k, l)| p == Path::new("leak")
            && *k == tar::EntryType::Symlink
            && l.as_deref() == Some(Path::new("/etc/shadow"))));
        assert!(
            seen.iter()
                .any(|(p, k, _)| p == Path::new("sub/a.txt") && *k == tar::EntryType::Regular)
        );
    }
}
