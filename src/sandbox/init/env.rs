//! The job's environment as `lg-init` hands it on: the variables it sets
//! (workspace, results, broker), the harness's environment and the
//! student's clean one, as C strings for `execve`. It never starts a
//! process nor changes an identity.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::args::Args;

/// The broker's socket, in the harness's 0700 home.
pub(crate) const BROKER: &str = ".broker";
/// Variable naming the broker's socket in the harness's environment.
pub(crate) const ENV_BROKER: &str = "LABGRADER_BROKER";
pub(crate) const ENV_WORKSPACE: &str = "LABGRADER_WORKSPACE";
pub(crate) const ENV_RESULTS: &str = "LABGRADER_RESULTS";

pub(crate) fn cstr(b: impl Into<Vec<u8>>) -> CString {
    // Callers pass bytes that hold no NUL (checked paths, env entries).
    CString::new(b).unwrap_or_default()
}

pub(crate) fn env_entry(k: &OsStr, v: &OsStr) -> CString {
    let mut e = k.as_bytes().to_vec();
    e.push(b'=');
    e.extend_from_slice(v.as_bytes());
    cstr(e)
}

/// The job environment lg-init was given, with `extra` set over it.
pub(crate) fn job_env(a: &Args, extra: &[(&str, OsString)]) -> Vec<CString> {
    let mut env: Vec<(OsString, OsString)> = a
        .env
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(x, _)| OsStr::new(x) == k))
        .cloned()
        .collect();
    env.extend(extra.iter().map(|(k, v)| (OsString::from(k), v.clone())));
    env.sort();
    env.iter().map(|(k, v)| env_entry(k, v)).collect()
}

/// The student's environment: clean, only the documented variables.
pub(crate) fn student_env(a: &Args) -> Vec<CString> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let bin = a.bin_dir.as_os_str().as_bytes().to_vec();
    let path = a.system_path();
    // Only the system's PATH, never the harness's helpers.
    let path: Vec<&[u8]> = path
        .as_bytes()
        .split(|b| *b == b':')
        .filter(|p| *p != bin.as_slice())
        .collect();
    env.push(("PATH".into(), OsString::from_vec(path.join(&b':'))));
    env.push(("HOME".into(), a.workspace.clone().into_os_string()));
    env.push((
        "LANG".into(),
        a.var("LANG")
            .unwrap_or(OsStr::new("C.UTF-8"))
            .to_os_string(),
    ));
    env.push((ENV_WORKSPACE.into(), a.workspace.clone().into_os_string()));
    for (k, v) in a.env.iter().cloned() {
        let kb = k.as_bytes();
        if kb.starts_with(b"LABGRADER_")
            && k != ENV_WORKSPACE
            && k != ENV_RESULTS
            && k != ENV_BROKER
        {
            env.push((k, v));
        }
    }
    env.iter().map(|(k, v)| env_entry(k, v)).collect()
}
