//! The `docker` runner: each job in a fresh container of the course image,
//! driven through the engine API (bollard). It owns the container's whole
//! life — create, run, kill, remove — and never reads the summary, touches
//! the spool or the gradebook.
//!
//! Design, chosen for the fewest engine round trips per job (create, attach,
//! start, wait, inspect, remove — what `docker run` itself does):
//!
//! - Identities (`SANDBOX-SPEC.md`): the container starts as its root with
//!   every capability dropped but the few `lg-init` needs ([`INIT_CAPS`]),
//!   `no-new-privileges`, network none, read-only root. Only `tar` and
//!   `lg-init` run as that root; `lg-init` lays the files out, then runs
//!   `test_all` as the student (`stdout`) or the harness (`trusted`, with
//!   its `run-as-student` broker), both numeric, unprivileged, without
//!   capabilities or supplementary groups.
//! - Writable places are tmpfs mounts of `limits.disk` bytes each
//!   (`/workspace`, `/tmp`, `/harness` under `trusted`) plus the small
//!   root-only `/.labgrader`: nothing a job writes reaches the host's disk,
//!   and tmpfs pages are also charged to the container's memory cgroup.
//! - A tmpfs exists only once the container runs, so nothing can be
//!   uploaded before start. The container is created with stdin open; its
//!   command is `sh -c 'tar -xof - -C / && printf READY >&2 && exec
//!   lg-init …'` under the engine's init (`docker-init`, which reaps
//!   zombies; `lg-init` is also the job's subreaper). We attach before
//!   start (so no output is missed), start, and stream one tar built on
//!   the fly into stdin: `lg-init` with its `run-as-student` link, the
//!   test-paths file and the results nonce under `/.labgrader/`, the
//!   workspace (symlinks stored as links, never followed) and, under
//!   `trusted`, the tests at `/harness/tests`. No bind mount: a remote
//!   engine works too. The image needs `/bin/sh` and `tar`.
//! - The READY line carries a per-job marker and is stripped from stderr.
//!   Nothing the student wrote has run before it, so a run that ends
//!   without it is a setup failure (grader fault), never a verdict; so is
//!   `lg-init`'s own setup failure (exit 125 without a results stream).
//! - Results (trusted): the container has only stdout and stderr, so
//!   `lg-init`, once nothing of the job is left, writes its results stream
//!   on stderr after `\n<nonce>\n` (the nonce came in a root-only file the
//!   job never sees); it is cut off the captured stderr and parsed by
//!   [`super::results_stream`] into `RunSpec::results`. Its flags give
//!   `RunOutcome::disk_full`.
//! - Limits: memory = memory+swap (no swap), pids, CPU quota, `fsize` and
//!   `nofile` rlimits on the job's processes (set by `lg-init`), logging
//!   driver `none` (output is streamed, never stored by the engine), label
//!   `labgrader.job=<id>`.
//! - Verdicts: deadline → SIGKILL the container, [`Termination::Timeout`];
//!   `State.OOMKilled` → [`Termination::MemoryLimit`] (only that flag means
//!   memory: an exit code of 137 alone may be a pids-limit casualty or a
//!   plain `kill -9`; on this engine it is set when any process of the
//!   container was OOM-killed, so a `test_all` that survives its child's
//!   kill is still `MemoryLimit`); else the exit code (128+n is reported as
//!   signal n).
//! - Grader faults ([`SandboxError`]): engine unreachable, image missing,
//!   API errors, setup failure. The container is removed on every path:
//!   explicitly at the end, and by a drop guard if the job's future is
//!   dropped (cancel, shutdown).
//!
//! Untrusted input here is the workspace (file names, symlinks, sizes) and
//! everything the container prints; both are streamed with fixed buffers
//! (the results stream is bounded by [`super::results_stream::STREAM_MAX`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use chrono::Utc;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;

use super::output::SharedCapture;
use super::results_stream;
use super::spec::SAFE_PATH;
use super::{
    Contract, ENV_WORKSPACE, RUN_AS_STUDENT, RunOutcome, RunSpec, Runner, SandboxError, Termination,
};
use crate::config::DockerConfig;
use crate::result::Captured;

/// Label carried by every job container; its value is the job id.
pub const JOB_LABEL: &str = "labgrader.job";
/// Label naming the grader that made a container (its spool directory),
/// so that at start a grader removes only its own orphans, never the
/// running jobs of another grader on the same engine.
pub const OWNER_LABEL: &str = "labgrader.owner";
/// Where the workspace is unpacked inside the container.
pub const WORKSPACE_DIR: &str = "/workspace";
/// The harness's tmpfs (trusted): `tests/` (its cwd) and `results/`.
const HARNESS_DIR: &str = "/harness";
/// `lg-init`'s root-only tmpfs: the helper, `bin/run-as-student`, the
/// test-paths file and the results nonce.
const INIT_DIR: &str = "/.labgrader";
const TEST_PATHS_FILE: &str = "/.labgrader/test-paths";
const NONCE_FILE: &str = "/.labgrader/nonce";
/// Largest `/dev/shm` (the engine's default size).
const SHM_MAX: u64 = 64 << 20;
/// Size of [`INIT_DIR`]'s tmpfs (the helper and two small files).
const INIT_TMPFS_SIZE: u64 = 64 << 20;
/// The capabilities the container's root keeps, for `tar` and `lg-init`
/// only: chown and chmod the layout (CHOWN, FOWNER), bind the broker in
/// and read the harness's 0700 home (DAC_OVERRIDE), change identity
/// (SETUID, SETGID), empty the job's bounding set (SETPCAP). Not KILL:
/// `lg-init` kills an identity's processes from a child that became it.
/// Nothing of the job ever holds one.
pub const INIT_CAPS: &[&str] = &[
    "CHOWN",
    "FOWNER",
    "DAC_OVERRIDE",
    "SETUID",
    "SETGID",
    "SETPCAP",
];
/// `lg-init`'s exit status when it could not set the job up (it then
/// sends no results stream, which a `test_all` exiting 125 always gets).
const INIT_SETUP_EXIT: i64 = super::init::EXIT_SETUP as i64;
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
    ids: Identities,
    /// Value of [`OWNER_LABEL`] on this runner's containers.
    owner: String,
}

/// The sandbox identities of `[docker]`, numeric (`lg-init` cannot look
/// names up in an arbitrary image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identities {
    student: (u32, u32),
    harness: (u32, u32),
}

impl Identities {
    fn of(cfg: &DockerConfig) -> Result<Identities, SandboxError> {
        let ids = |key: &'static str, v: &str| {
            crate::config::parse_ids(v).map_err(|m| SandboxError::Setup {
                step: "read [docker] identities",
                message: format!("{key}: {m}"),
            })
        };
        Ok(Identities {
            student: ids("docker.user", &cfg.user)?,
            harness: ids("docker.harness_user", &cfg.harness_user)?,
        })
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
            ids: Identities::of(cfg)?,
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
            ids: Identities::of(cfg)?,
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
        // The harness's home is its own: a home in the workspace would let
        // student code plant start-up files (a Python user site `.pth`,
        // `.profile`, `.gitconfig`) that the harness's tools then run.
        let home = match spec.contract {
            Contract::Stdout => WORKSPACE_DIR,
            Contract::Trusted => HARNESS_DIR,
        };
        let mut env = vec![
            format!("PATH={SAFE_PATH}"),
            format!("HOME={home}"),
            "LANG=C.UTF-8".to_string(),
            format!("{ENV_WORKSPACE}={WORKSPACE_DIR}"),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        // Every mount root-owned: lg-init gives each its owner and mode.
        let writable = |mode: &str| format!("rw,exec,nosuid,nodev,size={},mode={mode}", l.disk);
        let mut tmpfs = HashMap::from([
            (WORKSPACE_DIR.to_string(), writable("0755")),
            ("/tmp".to_string(), writable("1777")),
            (
                INIT_DIR.to_string(),
                format!("rw,exec,nosuid,nodev,size={INIT_TMPFS_SIZE},mode=0755"),
            ),
        ]);
        if spec.contract == Contract::Trusted {
            tmpfs.insert(HARNESS_DIR.to_string(), writable("0700"));
        }
        let cpus = if l.cpus > 0.0 {
            l.cpus.min(self.cfg.cpus)
        } else {
            self.cfg.cpus
        };
        ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                init_script(spec, self.ids, marker),
            ]),
            entrypoint: Some(vec![]),
            // The container's root, with only INIT_CAPS: tar and lg-init.
            user: Some("0:0".into()),
            working_dir: Some("/".into()),
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
                cap_add: Some(INIT_CAPS.iter().map(|c| c.to_string()).collect()),
                security_opt: Some(vec!["no-new-privileges".into()]),
                readonly_rootfs: Some(self.cfg.readonly_rootfs),
                ipc_mode: Some("private".into()),
                // /dev/shm: the engine's 64 MiB, or less when `disk` is.
                shm_size: Some(clamp(l.disk.min(SHM_MAX))),
                tmpfs: Some(tmpfs),
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

/// The container's command: unpack as root, announce, then `lg-init`
/// (layout, identities, broker, results) with its results on fd 3, a copy
/// of stderr. The file-size and open-files limits are `lg-init`'s to set
/// on the job's processes: as container ulimits they would stop `tar`
/// unpacking the helper itself.
fn init_script(spec: &RunSpec, ids: Identities, marker: &str) -> String {
    let l = &spec.limits;
    let argv = super::init::Invocation {
        contract: spec.contract,
        copy_from: None,
        test_paths: TEST_PATHS_FILE,
        student: ids.student,
        harness: ids.harness,
        rlimits: vec![
            ("fsize", l.file_size, l.file_size),
            ("nofile", l.open_files, l.open_files),
        ],
        results_fd: 3,
        nonce_file: Some(NONCE_FILE),
    }
    .argv();
    // Every word is a number, a contract name or one of our fixed paths:
    // nothing to quote.
    format!(
        "tar -xof - -C / && printf '%s\\n' '{marker}' >&2 && exec {} 3>&2",
        argv.join(" ")
    )
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

/// A tree of the host sent under `prefix` (`workspace/`, `harness/tests/`).
struct Tree {
    root: PathBuf,
    prefix: &'static str,
    entries: Vec<Entry>,
}

/// Everything the container's tar carries, all owned by its root (`lg-init`
/// gives the files their owners).
struct Payload {
    /// The test-paths file: NUL-separated paths relative to the workspace.
    test_paths: Vec<u8>,
    /// The results nonce (a root-only file).
    nonce: String,
    trees: Vec<Tree>,
}

/// Write the tar of `payload` into `out`.
fn write_tar(payload: &Payload, out: impl Write) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h
    };
    let init = rel(INIT_DIR);
    let blob = |tar: &mut tar::Builder<_>, path: &str, mode: u32, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        tar.append_data(&mut h, format!("{init}/{path}"), data)
    };
    blob(&mut tar, "lg-init", 0o555, super::init::BINARY)?;
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, format!("{init}/bin"), std::io::empty())?;
    let mut h = header(tar::EntryType::Link, 0o555, 0);
    tar.append_link(
        &mut h,
        format!("{init}/bin/{RUN_AS_STUDENT}"),
        format!("{init}/lg-init"),
    )?;
    blob(
        &mut tar,
        rel_in_init(TEST_PATHS_FILE),
        0o444,
        &payload.test_paths,
    )?;
    blob(
        &mut tar,
        rel_in_init(NONCE_FILE),
        0o400,
        payload.nonce.as_bytes(),
    )?;
    for tree in &payload.trees {
        for e in &tree.entries {
            let name = Path::new(tree.prefix).join(&e.rel);
            match &e.kind {
                EntryKind::Dir => {
                    let mut h = header(tar::EntryType::Directory, 0o755, 0);
                    tar.append_data(&mut h, &name, std::io::empty())?;
                }
                EntryKind::Symlink(target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    tar.append_link(&mut h, &name, target)?;
                }
                EntryKind::File { size } => {
                    let f = std::fs::File::open(tree.root.join(&e.rel))?;
                    let meta = f.metadata()?;
                    // The file may have changed since the walk: send what
                    // the header says, no more.
                    let exec = meta.permissions().mode() & 0o111 != 0;
                    let mode = if exec { 0o755 } else { 0o644 };
                    let mut h = header(tar::EntryType::Regular, mode, *size);
                    tar.append_data(
                        &mut h,
                        &name,
                        std::io::Read::take(f, *size).chain_zeros(*size),
                    )?;
                }
            }
        }
    }
    tar.into_inner()?.flush()
}

/// An absolute container path as a tar member name (extracted at `/`).
fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// A file of [`INIT_DIR`] by its name there.
fn rel_in_init(path: &'static str) -> &'static str {
    path.strip_prefix(INIT_DIR)
        .map(|p| p.trim_start_matches('/'))
        .expect("helper files live in INIT_DIR")
}

/// The test-paths file's contents: NUL-separated relative paths.
fn test_paths_file(paths: &[PathBuf]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for p in paths {
        out.extend_from_slice(p.as_os_str().as_bytes());
        out.push(0);
    }
    out
}

/// A reader padded with zeros to exactly `len` bytes (a file that shrank
/// after the walk must not corrupt the tar stream).
trait ChainZeros: std::io::Read + Sized {
    fn chain_zeros(self, len: u64) -> std::io::Take<std::io::Chain<Self, std::io::Repeat>> {
        std::io::Read::take(std::io::Read::chain(self, std::io::repeat(0)), len)
    }
}
impl<R: std::io::Read> ChainZeros for R {}

/// Splits the container's stderr three ways: setup chatter before the
/// READY marker, the job's stderr (captured, capped), and `lg-init`'s
/// results stream after its nonce.
struct StderrSplit {
    gate: ReadyGate,
    tap: ResultsTap,
}

impl StderrSplit {
    fn new(marker: &str, nonce: &str) -> StderrSplit {
        StderrSplit {
            gate: ReadyGate::new(marker),
            tap: ResultsTap::new(nonce),
        }
    }

    fn push(&mut self, chunk: &[u8], capture: &SharedCapture, limit: u64) {
        let job = self.gate.push(chunk);
        if !job.is_empty() {
            self.tap.push(&job, capture, limit);
        }
    }

    /// The container's stderr ended: what was held back is the job's.
    fn finish(&mut self, capture: &SharedCapture, limit: u64) {
        self.tap.finish(capture, limit);
    }
}

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

    /// Feed a stderr chunk; returns what belongs to the job.
    fn push<'a>(&mut self, chunk: &'a [u8]) -> Cow<'a, [u8]> {
        if self.ready {
            return Cow::Borrowed(chunk);
        }
        self.pending.extend_from_slice(chunk);
        if let Some(pos) = find(&self.pending, &self.marker) {
            self.ready = true;
            let rest = self.pending.split_off(pos + self.marker.len());
            self.pending.truncate(pos);
            self.keep_setup_log();
            return Cow::Owned(rest);
        } else if self.pending.len() > 2 * self.marker.len() {
            // Keep only a tail long enough to hold a split marker.
            let cut = self.pending.len() - self.marker.len();
            let head: Vec<u8> = self.pending.drain(..cut).collect();
            let room = SETUP_LOG_LIMIT.saturating_sub(self.setup_log.len());
            self.setup_log
                .extend_from_slice(&head[..head.len().min(room)]);
        }
        Cow::Borrowed(&[])
    }

    fn keep_setup_log(&mut self) {
        let room = SETUP_LOG_LIMIT.saturating_sub(self.setup_log.len());
        let n = self.pending.len().min(room);
        self.setup_log.extend_from_slice(&self.pending[..n]);
        self.pending.clear();
    }
}

/// Finds `\n<nonce>\n` in the job's stderr: before it is the job's
/// output, after it `lg-init`'s results stream (kept up to
/// [`results_stream::STREAM_MAX`] bytes).
struct ResultsTap {
    needle: Vec<u8>,
    /// A tail of the job's stderr that may hold the start of the needle.
    pending: Vec<u8>,
    stream: Option<Vec<u8>>,
    overflow: bool,
}

impl ResultsTap {
    fn new(nonce: &str) -> ResultsTap {
        ResultsTap {
            needle: format!("\n{nonce}\n").into_bytes(),
            pending: Vec::new(),
            stream: None,
            overflow: false,
        }
    }

    fn push(&mut self, data: &[u8], capture: &SharedCapture, limit: u64) {
        if let Some(stream) = &mut self.stream {
            if stream.len() + data.len() > results_stream::STREAM_MAX {
                self.overflow = true;
            } else {
                stream.extend_from_slice(data);
            }
            return;
        }
        self.pending.extend_from_slice(data);
        if let Some(pos) = find(&self.pending, &self.needle) {
            capture.push(&self.pending[..pos], limit);
            let rest = self.pending.split_off(pos + self.needle.len());
            self.pending = Vec::new();
            self.stream = Some(Vec::new());
            self.push(&rest, capture, limit);
        } else {
            let keep = self.needle.len() - 1;
            if self.pending.len() > keep {
                let cut = self.pending.len() - keep;
                capture.push(&self.pending[..cut], limit);
                self.pending.drain(..cut);
            }
        }
    }

    fn finish(&mut self, capture: &SharedCapture, limit: u64) {
        capture.push(&std::mem::take(&mut self.pending), limit);
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
        let tests = match (spec.contract, &spec.tests) {
            (Contract::Trusted, Some(t)) => Some(t.clone()),
            (Contract::Trusted, None) => {
                return Err(SandboxError::Setup {
                    step: "read run spec",
                    message: "a trusted run needs the tests' directory".into(),
                });
            }
            (Contract::Stdout, _) => None,
        };

        // What is sent must fit where it goes: each tree in its tmpfs
        // (`limits.disk`), all of it in memory, files under fsize.
        let root = spec.workspace.clone();
        let (trees, totals) = tokio::task::spawn_blocking(move || {
            let mut trees = Vec::new();
            let mut totals = (0u64, 0u64, 0u64);
            for (root, prefix) in [(Some(root), "workspace"), (tests, "harness/tests")] {
                let Some(root) = root else { continue };
                let (entries, total, largest) = list_workspace(&root)?;
                totals = (
                    totals.0.saturating_add(total),
                    totals.1.max(total),
                    totals.2.max(largest),
                );
                trees.push(Tree {
                    root,
                    prefix,
                    entries,
                });
            }
            Ok::<_, std::io::Error>((trees, totals))
        })
        .await
        .map_err(|e| SandboxError::Io(std::io::Error::other(e)))??;
        let (total, per_mount, largest) = totals;
        let refused = if total > limits.memory {
            Some((
                Termination::MemoryLimit,
                false,
                format!(
                    "the workspace holds {total} bytes but the memory limit is {} bytes \
                     (files in /workspace live in memory)",
                    limits.memory
                ),
            ))
        } else if per_mount > limits.disk {
            Some((
                Termination::Signaled { signal: SIGXFSZ },
                true,
                format!(
                    "the workspace holds {per_mount} bytes but the disk limit is {} bytes",
                    limits.disk
                ),
            ))
        } else if largest > limits.file_size {
            Some((
                Termination::Signaled { signal: SIGXFSZ },
                false,
                format!(
                    "a workspace file has {largest} bytes but the file-size limit is {} bytes",
                    limits.file_size
                ),
            ))
        } else {
            None
        };
        if let Some((termination, disk_full, why)) = refused {
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
                disk_full,
            });
        }

        let marker = format!("labgrader-ready-{}", ulid::Ulid::generate());
        let payload = Payload {
            test_paths: test_paths_file(&spec.test_paths),
            nonce: format!(
                "labgrader-results-{}",
                hex::encode(rand::random::<[u8; 16]>())
            ),
            trees,
        };
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

        let ran = self.run_container(id, spec, payload, &marker, cancel).await;
        // Removed on every path; a removal failure is the engine's fault.
        let removed = guard.remove().await;
        let mut ran = ran?;
        removed?;

        let state = &ran.state;
        let termination = match ran.ending {
            Ending::Cancelled => return Err(SandboxError::Cancelled),
            Ending::Timeout => Termination::Timeout,
            Ending::Exited if state.oom_killed => Termination::MemoryLimit,
            Ending::Exited if !ran.stderr_split.gate.ready => {
                let chatter = String::from_utf8_lossy(&ran.stderr_split.gate.setup_log)
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
            Ending::Exited
                if state.exit_code == INIT_SETUP_EXIT && ran.stderr_split.tap.stream.is_none() =>
            {
                return Err(SandboxError::Setup {
                    step: "start the job in the container",
                    message: format!(
                        "lg-init could not set the job up: {}",
                        String::from_utf8_lossy(&ran.stderr.snapshot().bytes).trim()
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
        let disk_full = self.take_results(spec, &mut ran, &termination)?;
        Ok(RunOutcome {
            termination,
            stdout: ran.stdout.snapshot(),
            stderr: ran.stderr.snapshot(),
            started_at: ran.started_at,
            ended_at: Utc::now(),
            runner: self.name().into(),
            image: Some(image),
            image_id: ran.state.image_id,
            disk_full,
        })
    }
}

impl DockerRunner {
    /// Parse `lg-init`'s results stream, leave the results files (trusted)
    /// in `spec.results`, and say whether a writable mount was full.
    fn take_results(
        &self,
        spec: &RunSpec,
        ran: &mut Ran,
        termination: &Termination,
    ) -> Result<bool, SandboxError> {
        let tap = &mut ran.stderr_split.tap;
        let Some(bytes) = tap.stream.take() else {
            // Killed (timeout, memory) before lg-init could report.
            if spec.contract == Contract::Trusted
                && matches!(
                    termination,
                    Termination::Exited { .. } | Termination::Signaled { .. }
                )
            {
                tracing::warn!(job_id = %spec.job_id, "lg-init sent no results stream");
            }
            return Ok(false);
        };
        let (parsed, late) = parse_stream(&bytes);
        if !late.is_empty() {
            tracing::warn!(job_id = %spec.job_id, bytes = late.len(), overflow = tap.overflow,
                "job output after the results stream");
            ran.stderr.push(late, spec.limits.output);
        }
        let results = match parsed {
            Ok(r) => r,
            // Cut short by the kill: nothing to keep, and not a fault.
            Err(_) if !matches!(ran.ending, Ending::Exited) => return Ok(false),
            Err(e) => {
                return Err(SandboxError::Setup {
                    step: "read the results stream",
                    message: e.to_string(),
                });
            }
        };
        if spec.contract == Contract::Trusted {
            results_stream::write_into(&spec.results, &results).map_err(|e| {
                SandboxError::Setup {
                    step: "write the results files",
                    message: format!("{}: {e}", spec.results.display()),
                }
            })?;
        }
        Ok(results.disk_full())
    }
}

/// Parse the bytes after the nonce: the stream, and what followed it
/// (output of a job process that outlived `lg-init`'s end kill: the job's
/// stderr, not a fault).
fn parse_stream(
    bytes: &[u8],
) -> (
    Result<results_stream::Results, results_stream::StreamError>,
    &[u8],
) {
    match results_stream::parse(bytes) {
        Err(results_stream::StreamError::Trailing(n)) => {
            let end = bytes.len() - n;
            (results_stream::parse(&bytes[..end]), &bytes[end..])
        }
        r => (r, &[]),
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
    stderr_split: StderrSplit,
    started_at: chrono::DateTime<Utc>,
}

impl DockerRunner {
    /// Attach, start, feed the workspace, collect output until the
    /// container ends (or the deadline / cancel), then read its state.
    async fn run_container(
        &self,
        id: &str,
        spec: &RunSpec,
        payload: Payload,
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
        let nonce = payload.nonce.clone();
        let builder = tokio::task::spawn_blocking(move || {
            let out = ChunkWriter {
                tx,
                buf: Vec::with_capacity(TAR_CHUNK),
            };
            write_tar(&payload, out)
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
        let mut split = StderrSplit::new(marker, &nonce);
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
                    Some(Ok(LogOutput::StdErr { message })) => split.push(&message, &stderr, limit),
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
                        LogOutput::StdErr { message } => split.push(&message, &stderr, limit),
                        LogOutput::StdIn { .. } => {}
                    }
                }
            })
            .await;
        } else if let Some(e) = stream_error {
            return Err(engine("read container output")(e));
        }

        split.finish(&stderr, limit);
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
            stderr_split: split,
            started_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(split: &mut StderrSplit, chunks: &[&[u8]]) -> SharedCapture {
        let cap = SharedCapture::default();
        for c in chunks {
            split.push(c, &cap, 1000);
        }
        split.finish(&cap, 1000);
        cap
    }

    #[test]
    fn ready_gate_strips_marker_split_across_chunks() {
        let mut s = StderrSplit::new("labgrader-ready-X", "N");
        let cap = split_all(
            &mut s,
            &[b"tar: warning\nlabgrader-re", b"ady-X\nstudent err\n"],
        );
        assert!(s.gate.ready);
        assert_eq!(cap.snapshot().bytes, b"student err\n");
        assert_eq!(s.gate.setup_log, b"tar: warning\n");
    }

    #[test]
    fn ready_gate_without_marker_keeps_setup_log_bounded() {
        let cap = SharedCapture::default();
        let mut s = StderrSplit::new("m", "N");
        for _ in 0..10_000 {
            s.push(b"tar: something went wrong\n", &cap, 1000);
        }
        assert!(!s.gate.ready);
        assert!(s.gate.setup_log.len() <= SETUP_LOG_LIMIT);
        assert!(cap.snapshot().bytes.is_empty());
    }

    #[test]
    fn results_stream_is_cut_off_stderr_even_when_split_across_chunks() {
        let stream = results_stream::encode(&[("results.json", b"{}")], 1);
        let mut tail = b"\nlabgrader-results-abc\n".to_vec();
        tail.extend_from_slice(&stream);
        for cut in 0..tail.len() {
            let mut s = StderrSplit::new("R", "labgrader-results-abc");
            let mut first = b"R\nno newline at the end".to_vec();
            first.extend_from_slice(&tail[..cut]);
            let cap = split_all(&mut s, &[&first, &tail[cut..]]);
            assert_eq!(cap.snapshot().bytes, b"no newline at the end", "cut {cut}");
            assert_eq!(s.tap.stream.as_deref(), Some(&stream[..]), "cut {cut}");
        }
        // Without the nonce everything is the job's, held-back tail included.
        let mut s = StderrSplit::new("R", "labgrader-results-abc");
        let cap = split_all(&mut s, &[b"R\nerr\nlabgrader-results-ab"]);
        assert_eq!(cap.snapshot().bytes, b"err\nlabgrader-results-ab");
        assert!(s.tap.stream.is_none());
    }

    #[test]
    fn output_after_the_results_stream_is_the_jobs() {
        let mut bytes = results_stream::encode(&[("results.json", b"{}")], 1);
        let (r, late) = parse_stream(&bytes);
        assert!(r.unwrap().disk_full());
        assert!(late.is_empty());
        bytes.extend_from_slice(b"late bomb\n");
        let (r, late) = parse_stream(&bytes);
        assert_eq!(r.unwrap().files.len(), 1);
        assert_eq!(late, b"late bomb\n");
        assert!(parse_stream(b"\x01\0\0\0").0.is_err());
    }

    #[test]
    fn tar_carries_helper_paths_nonce_and_trees_all_root_owned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("leak")).unwrap();
        let (entries, total, largest) = list_workspace(dir.path()).unwrap();
        assert_eq!((total, largest), (5, 5));
        let payload = Payload {
            test_paths: test_paths_file(&[PathBuf::from("sub"), PathBuf::from("sub/a.txt")]),
            nonce: "n0nce".into(),
            trees: vec![Tree {
                root: dir.path().to_path_buf(),
                prefix: "workspace",
                entries,
            }],
        };
        let mut out = Vec::new();
        write_tar(&payload, &mut out).unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            let link = e.link_name().unwrap().map(|l| l.into_owned());
            let path = e.path().unwrap().into_owned();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            seen.push((path, h.entry_type(), h.mode().unwrap(), link, body));
        }
        let find = |p: &str| {
            seen.iter()
                .find(|s| s.0 == Path::new(p))
                .unwrap_or_else(|| panic!("{p} not in the tar"))
        };
        assert_eq!(find(".labgrader/nonce").2, 0o400);
        assert_eq!(find(".labgrader/nonce").4, b"n0nce");
        assert_eq!(find(".labgrader/test-paths").4, b"sub\0sub/a.txt\0");
        let ras = find(".labgrader/bin/run-as-student");
        assert_eq!(ras.1, tar::EntryType::Link);
        assert_eq!(ras.3.as_deref(), Some(Path::new(".labgrader/lg-init")));
        let leak = find("workspace/leak");
        assert_eq!(leak.1, tar::EntryType::Symlink);
        assert_eq!(leak.3.as_deref(), Some(Path::new("/etc/shadow")));
        assert_eq!(find("workspace/sub/a.txt").4, b"hello");
    }

    #[test]
    fn helper_paths_are_lg_inits() {
        assert_eq!(
            format!("{INIT_DIR}/lg-init"),
            super::super::init::SANDBOX_PATH
        );
        assert_eq!(
            format!("{INIT_DIR}/bin"),
            super::super::init::SANDBOX_BIN_DIR
        );
    }

    #[test]
    fn init_script_names_both_identities_and_the_nonce_file() {
        let ids = Identities {
            student: (65534, 65534),
            harness: (65533, 65533),
        };
        let mut spec = RunSpec::new(
            "j",
            PathBuf::from("/w"),
            vec![],
            crate::result::Limits {
                timeout: Duration::from_secs(1),
                memory: 1 << 20,
                pids: 1,
                output: 1,
                cpus: 1.0,
                file_size: 4096,
                open_files: 64,
                disk: 1 << 20,
            },
        );
        spec.contract = Contract::Trusted;
        let s = init_script(&spec, ids, "M");
        assert!(s.contains("--rlimit fsize=4096 --rlimit nofile=64"), "{s}");
        assert!(s.starts_with("tar -xof - -C / && "), "{s}");
        assert!(
            s.contains("--student 65534:65534 --harness-id 65533:65533"),
            "{s}"
        );
        assert!(s.contains("--contract trusted"), "{s}");
        assert!(
            s.ends_with("--results-fd 3 --results-nonce-file /.labgrader/nonce 3>&2"),
            "{s}"
        );
        assert!(s.contains(NONCE_FILE), "{s}");
        assert!(s.contains("printf '%s\\n' 'M' >&2"), "{s}");
    }
}
