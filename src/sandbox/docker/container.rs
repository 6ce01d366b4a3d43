//! The container's specification: where things live inside it, its
//! labels, mounts, limits, capabilities and environment, and the command
//! that unpacks the job and starts `lg-init`. Pure data from a
//! [`RunSpec`]: it never talks to the engine.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};

use super::engine::{DockerRunner, Identities};
use crate::config::Contract;
use crate::sandbox::init;
use crate::sandbox::spec::{ENV_WORKSPACE, RunSpec, SAFE_PATH};

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
pub(super) const INIT_DIR: &str = "/.labgrader";
pub(super) const TEST_PATHS_FILE: &str = "/.labgrader/test-paths";
pub(super) const NONCE_FILE: &str = "/.labgrader/nonce";
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

impl DockerRunner {
    pub(super) fn container_body(
        &self,
        spec: &RunSpec,
        image: &str,
        marker: &str,
    ) -> ContainerCreateBody {
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
    let argv = init::Invocation {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    #[test]
    fn helper_paths_are_lg_inits() {
        assert_eq!(format!("{INIT_DIR}/lg-init"), init::SANDBOX_PATH);
        assert_eq!(format!("{INIT_DIR}/bin"), init::SANDBOX_BIN_DIR);
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
