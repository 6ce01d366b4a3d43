//! The outside services some tests need (a Docker engine with the test
//! images, a Slurm cluster, python3 with aiosmtpd) and the one rule for
//! them: a missing service FAILS the test loudly, saying how to provide it,
//! unless the developer opted out with `LABGRADER_SKIP_DOCKER=1` or
//! `LABGRADER_SKIP_SLURM=1` (then the test returns early, with a line on
//! stderr). It never starts, stops or changes a service.

use std::path::PathBuf;
use std::time::Duration;

use labgrader::config::{Config, DockerConfig, Seconds};
use labgrader::sandbox::docker::DockerRunner;

/// The busybox test image `scripts/test` builds.
pub const BUSYBOX_IMAGE: &str = "labgrader/test-busybox:latest";
/// The course image (debootstrap) `scripts/test` builds.
pub const COURSE_IMAGE: &str = "labgrader/grader:latest";

/// True when the developer opted out of the docker tests
/// (`LABGRADER_SKIP_DOCKER=1`); says so on stderr.
pub fn docker_skipped() -> bool {
    let skip = std::env::var("LABGRADER_SKIP_DOCKER").as_deref() == Ok("1");
    if skip {
        eprintln!("LABGRADER_SKIP_DOCKER=1: docker test skipped");
    }
    skip
}

/// A runner on the test engine for `image`, or `None` when the developer
/// opted out. Panics, saying what to do, when the engine does not answer.
pub async fn docker_runner(image: &str) -> Option<DockerRunner> {
    if docker_skipped() {
        return None;
    }
    Some(docker_connect(image).await)
}

/// A runner on the test engine for `image`; panics, saying what to do, when
/// the engine does not answer (callers have checked [`docker_skipped`]).
pub async fn docker_connect(image: &str) -> DockerRunner {
    let cfg = DockerConfig {
        image: image.into(),
        ..DockerConfig::default()
    };
    DockerRunner::connect(&cfg).await.unwrap_or_else(|e| {
        panic!(
            "docker tests need a running engine and the image {image}: {e}\n\
             run scripts/test (it starts dockerd and builds the images), or set \
             LABGRADER_SKIP_DOCKER=1 to skip them"
        )
    })
}

/// The id of the local image `image` (`docker image inspect`); panics,
/// saying what to do, when the engine or the image is missing.
pub fn docker_image_id(image: &str) -> String {
    let probe =
        std::process::Command::new(std::env::var("DOCKER").unwrap_or_else(|_| "docker".into()))
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .output();
    match probe {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        other => panic!(
            "this test needs a running Docker engine with {image} ({other:?}); run scripts/test \
             or set LABGRADER_SKIP_DOCKER=1"
        ),
    }
}

/// A config whose `[slurm]` section points at the test cluster that
/// `scripts/setup/slurm.sh` starts (named by `LABGRADER_TEST_SLURM` and
/// friends), or `None` when the developer opted out with
/// `LABGRADER_SKIP_SLURM=1`. Panics, saying what to do, otherwise.
pub fn slurm_config() -> Option<Config> {
    if std::env::var_os("LABGRADER_TEST_SLURM").is_none() {
        if std::env::var("LABGRADER_SKIP_SLURM").as_deref() == Ok("1") {
            eprintln!("skipping: LABGRADER_SKIP_SLURM=1");
            return None;
        }
        panic!(
            "no Slurm cluster: run the tests through scripts/test (it starts a one-node \
             cluster and sets LABGRADER_TEST_SLURM), or set LABGRADER_SKIP_SLURM=1"
        );
    }
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let mut cfg = Config::default();
    cfg.slurm.url = env("LABGRADER_SLURM_URL");
    cfg.slurm.token_file = PathBuf::from(env("LABGRADER_SLURM_TOKEN_FILE"));
    cfg.slurm.shared_dir = PathBuf::from(env("LABGRADER_SLURM_SHARED_DIR"));
    cfg.slurm.user = std::env::var("LABGRADER_SLURM_USER").unwrap_or_else(|_| "labgrader".into());
    cfg.slurm.labgrader_bin = PathBuf::from(env!("CARGO_BIN_EXE_labgrader"));
    cfg.slurm.poll_interval = Seconds(Duration::from_millis(200));
    Some(cfg)
}

/// The python3 that runs the SMTP sink and pytest (`LABGRADER_TEST_PYTHON`,
/// else `/usr/bin/python3`; `scripts/setup/smtp.sh` and `pytest.sh`
/// install aiosmtpd and pytest for it).
pub fn python() -> String {
    std::env::var("LABGRADER_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}
