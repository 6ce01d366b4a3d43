//! The docker runner's [`Runner::run`]: one job from its [`RunSpec`] to
//! a [`RunOutcome`]. It refuses a workspace that cannot fit, creates the
//! container, runs it, removes it, judges how it ended (a verdict or a
//! grader fault) and keeps the results `lg-init` sent. The engine calls,
//! the container's spec, the payload and the stderr split are the other
//! files'.

use bollard::errors::Error as BollardError;
use bollard::query_parameters::CreateContainerOptions;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::engine::{DockerRunner, engine};
use super::payload::{Payload, Tree, list_workspace};
use super::run::{ContainerGuard, Ending, Ran};
use crate::config::Contract;
use crate::result::{Captured, Termination};
use crate::sandbox::init;
use crate::sandbox::results_stream;
use crate::sandbox::spec::{RunOutcome, RunSpec, Runner, SandboxError};

/// `lg-init`'s exit status when it could not set the job up (it then
/// sends no results stream, which a `test_all` exiting 125 always gets).
const INIT_SETUP_EXIT: i64 = init::EXIT_SETUP as i64;
/// SIGXFSZ: what the kernel sends a process writing past RLIMIT_FSIZE.
const SIGXFSZ: i32 = 25;

#[async_trait::async_trait]
impl Runner for DockerRunner {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn remove_orphans(&self) -> Result<usize, SandboxError> {
        DockerRunner::remove_orphans(self).await
    }

    async fn sweep(
        &self,
        running: &std::collections::HashSet<String>,
    ) -> Result<usize, SandboxError> {
        DockerRunner::sweep(self, running).await
    }

    async fn remove_job(&self, job_id: &str) -> Result<usize, SandboxError> {
        DockerRunner::remove_job(self, job_id).await
    }

    async fn answers(&self) -> bool {
        DockerRunner::answers(self).await
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
            test_paths: init::test_paths_file(&spec.test_paths),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
