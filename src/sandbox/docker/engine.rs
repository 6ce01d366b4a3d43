//! The docker runner's connection to its engine: the [`DockerRunner`]
//! itself (the engine client, `[docker]`, the sandbox identities, the
//! owner label's value), the availability probe, the image check and the
//! few container calls shared by the run and the orphan sweep (list,
//! remove). It never builds a container's spec nor runs one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use tokio::sync::OnceCell;

use crate::config::DockerConfig;
use crate::sandbox::spec::SandboxError;

/// Runs jobs in containers on one Docker engine.
#[derive(Debug, Clone)]
pub struct DockerRunner {
    /// Made on first use in the runtime that runs the jobs (a client made
    /// in another runtime would hold connections bound to it).
    client: Arc<OnceCell<Docker>>,
    pub(super) cfg: DockerConfig,
    pub(super) ids: Identities,
    /// Value of [`super::OWNER_LABEL`] on this runner's containers.
    pub(super) owner: String,
}

/// The sandbox identities of `[docker]`, numeric (`lg-init` cannot look
/// names up in an arbitrary image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identities {
    pub(super) student: (u32, u32),
    pub(super) harness: (u32, u32),
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

pub(super) fn engine(step: &'static str) -> impl FnOnce(BollardError) -> SandboxError {
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
    /// directory): see [`super::OWNER_LABEL`].
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

    pub(super) async fn docker(&self) -> Result<&Docker, SandboxError> {
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

    /// Containers in any state matching a `label` filter (`key` or `key=value`).
    pub(super) async fn list_labelled(
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

    pub(super) async fn remove(&self, id: &str) -> Result<(), SandboxError> {
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
}
