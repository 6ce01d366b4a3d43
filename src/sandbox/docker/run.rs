//! One container's run on the engine: attach before start, start, feed
//! the payload into stdin, collect the output until the container ends,
//! the deadline passes or the run is cancelled (then kill it), and read
//! its final state; the guard that removes it on every path. It never
//! judges the run (`runner` does) nor builds its spec.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, KillContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use chrono::Utc;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::engine::{DockerRunner, engine};
use super::payload::{ChunkWriter, Payload, TAR_CHUNK, TAR_CHUNKS_IN_FLIGHT, write_tar};
use super::stderr_split::StderrSplit;
use crate::sandbox::output::SharedCapture;
use crate::sandbox::spec::{RunSpec, SandboxError};

/// How long engine calls made after the run (kill, wait, inspect, remove)
/// may take before the engine is declared at fault.
const ENGINE_GRACE: Duration = Duration::from_secs(30);
/// After the container exited, how long the output stream may take to end.
const OUTPUT_LINGER: Duration = Duration::from_secs(2);

/// Removes the container if the job's future is dropped before it could.
pub(super) struct ContainerGuard {
    pub(super) runner: DockerRunner,
    pub(super) id: String,
    pub(super) armed: bool,
}

impl ContainerGuard {
    pub(super) async fn remove(mut self) -> Result<(), SandboxError> {
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

/// How the wait for the container ended.
pub(super) enum Ending {
    Exited,
    Timeout,
    Cancelled,
}

/// What the container's final state says.
#[derive(Debug, Default)]
pub(super) struct FinalState {
    pub(super) oom_killed: bool,
    pub(super) exit_code: i64,
    pub(super) image_id: Option<String>,
}

/// A container run, before it is judged.
pub(super) struct Ran {
    pub(super) ending: Ending,
    pub(super) state: FinalState,
    pub(super) stdout: SharedCapture,
    pub(super) stderr: SharedCapture,
    pub(super) stderr_split: StderrSplit,
    pub(super) started_at: chrono::DateTime<Utc>,
}

impl DockerRunner {
    /// Attach, start, feed the workspace, collect output until the
    /// container ends (or the deadline / cancel), then read its state.
    pub(super) async fn run_container(
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
