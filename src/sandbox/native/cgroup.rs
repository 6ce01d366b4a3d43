//! Per-job control groups of the native runner: memory (no swap), pids and
//! CPU limits, the OOM-kill count that turns a run into `memory_limit`,
//! and the kill of every process of the job.
//!
//! cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists): jobs live under
//! `/sys/fs/cgroup/labgrader/`, whose controllers this module enables.
//! cgroup v1 (as on hybrid hosts): one directory per controller, nested
//! under the daemon's own cgroup of that controller (so a systemd unit's
//! limits still cover its jobs). It only ever creates, writes, renames and
//! removes directories named `labgrader-<job>-<ulid>` (a job's, while it
//! runs) or `labgrader-idle-<ulid>` (kept by a [`Pool`] for the next job
//! with the same limits), and the v2 parent; it never moves or limits a
//! process other than the job's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::result::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// Where job cgroups are created, found once per runner.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    V2 {
        parent: PathBuf,
    },
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
}

impl Hierarchy {
    /// Find a usable hierarchy and prove we may create cgroups in it.
    /// `Err` says why not (the runner then falls back to rlimits).
    pub fn detect() -> Result<Hierarchy, String> {
        let h = if Path::new(ROOT).join("cgroup.controllers").exists() {
            let parent = Path::new(ROOT).join("labgrader");
            v2_prepare(&parent).map_err(|e| format!("cgroup v2 at {}: {e}", parent.display()))?;
            Hierarchy::V2 { parent }
        } else {
            let own = |ctl: &str| -> Result<PathBuf, String> {
                let mount = Path::new(ROOT).join(ctl);
                if !mount.join("cgroup.procs").exists() {
                    return Err(format!(
                        "no cgroup v1 `{ctl}` controller at {}",
                        mount.display()
                    ));
                }
                let rel = own_v1_path(ctl).unwrap_or_else(|| "/".into());
                Ok(mount.join(rel.trim_start_matches('/')))
            };
            let memory = own("memory")?;
            let pids = own("pids")?;
            let cpu = own("cpu")
                .ok()
                .filter(|p| p.join("cpu.cfs_quota_us").exists());
            Hierarchy::V1 { memory, pids, cpu }
        };
        h.sweep();
        // Probe: can we create (and remove) a job cgroup here?
        let probe = JobCgroup::create(&h, "probe", None).map_err(|e| e.to_string())?;
        probe.remove();
        Ok(h)
    }

    /// Remove job cgroups a crashed daemon left behind: empty
    /// `labgrader-*` directories older than an hour (a live job's cgroup is
    /// never empty that long, and rmdir refuses one with processes).
    fn sweep(&self) {
        let bases: Vec<&PathBuf> = match self {
            Hierarchy::V2 { parent } => vec![parent],
            Hierarchy::V1 { memory, pids, cpu } => {
                let mut b = vec![memory, pids];
                b.extend(cpu.iter());
                b
            }
        };
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        for base in bases {
            let Ok(entries) = fs::read_dir(base) else {
                continue;
            };
            for e in entries.flatten() {
                let stale = e.file_name().to_string_lossy().starts_with("labgrader-")
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t < old);
                if stale && fs::remove_dir(e.path()).is_ok() {
                    tracing::info!(cgroup = %e.path().display(), "removed a stale job cgroup");
                }
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { parent } => format!("cgroup v2 under {}", parent.display()),
            Hierarchy::V1 { memory, pids, .. } => {
                format!(
                    "cgroup v1 under {} and {}",
                    memory.display(),
                    pids.display()
                )
            }
        }
    }
}

/// OOM kills counted so far in this process's own memory cgroup and in
/// each ancestor that limits memory (a Slurm job's cgroup sits above the
/// step's): compare before and after a run to learn whether the limit
/// killed something of it. 0 when there is no memory cgroup to read.
pub fn own_oom_kills() -> u64 {
    let (base, rel, v2) = if Path::new(ROOT).join("cgroup.controllers").exists() {
        let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let rel = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .to_string();
        (PathBuf::from(ROOT), rel, true)
    } else {
        let Some(rel) = own_v1_path("memory") else {
            return 0;
        };
        (Path::new(ROOT).join("memory"), rel, false)
    };
    let mut dir = base.join(rel.trim_start_matches('/'));
    let mut total = 0;
    let mut leaf = true;
    while dir.starts_with(&base) && dir != base {
        let limited = if v2 {
            fs::read_to_string(dir.join("memory.max")).is_ok_and(|t| t.trim() != "max")
        } else {
            fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .is_some_and(|v| v < 1 << 62)
        };
        if !leaf && !limited {
            break;
        }
        let file = dir.join(if v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        });
        total += fs::read_to_string(file)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            })
            .unwrap_or(0);
        leaf = false;
        if !dir.pop() {
            break;
        }
    }
    total
}

/// The daemon's own cgroup path for a v1 controller (from /proc/self/cgroup).
fn own_v1_path(ctl: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctls.split(',').any(|c| c == ctl).then(|| path.to_string())
    })
}

fn v2_prepare(parent: &Path) -> io::Result<()> {
    let root_ctl = Path::new(ROOT).join("cgroup.subtree_control");
    let have = fs::read_to_string(&root_ctl)?;
    for c in ["memory", "pids"] {
        if !have.split_whitespace().any(|x| x == c) {
            fs::write(&root_ctl, format!("+{c}"))?;
        }
    }
    match fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let avail = fs::read_to_string(parent.join("cgroup.controllers"))?;
    let want: Vec<&str> = ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| avail.split_whitespace().any(|x| x == *c))
        .collect();
    let ctl = parent.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&ctl)?;
    for c in want {
        if !enabled.split_whitespace().any(|x| x == c) {
            fs::write(&ctl, format!("+{c}"))?;
        }
    }
    Ok(())
}

/// One job's cgroup(s). Removed by [`JobCgroup::remove`], or kept for the
/// next job with the same limits by a [`Pool`].
#[derive(Debug)]
pub struct JobCgroup {
    v2: bool,
    /// v2: one dir. v1: memory, pids, then cpu if any.
    dirs: Vec<PathBuf>,
    /// The limits it was made with (`None`: a probe, never reused).
    limits: Option<LimitsKey>,
}

/// The limits a job cgroup enforces, as a pool compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LimitsKey {
    memory: u64,
    pids: u64,
    cpus: u64,
}

impl LimitsKey {
    fn of(l: &Limits) -> LimitsKey {
        LimitsKey {
            memory: l.memory,
            pids: l.pids,
            cpus: l.cpus.to_bits(),
        }
    }
}

fn name_for(job_id: &str) -> String {
    let clean: String = job_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect();
    format!("labgrader-{clean}-{}", crate::spool::new_job_id())
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", dir.join(file).display())))
}

impl JobCgroup {
    /// Create the job's cgroup(s) and apply `limits` (none for a probe).
    pub fn create(h: &Hierarchy, job_id: &str, limits: Option<&Limits>) -> io::Result<JobCgroup> {
        let name = name_for(job_id);
        let (v2, bases): (bool, Vec<&PathBuf>) = match h {
            Hierarchy::V2 { parent } => (true, vec![parent]),
            Hierarchy::V1 { memory, pids, cpu } => {
                let mut b = vec![memory, pids];
                b.extend(cpu.iter());
                (false, b)
            }
        };
        let mut cg = JobCgroup {
            v2,
            dirs: Vec::new(),
            limits: limits.map(LimitsKey::of),
        };
        for base in bases {
            let dir = base.join(&name);
            if let Err(e) = fs::create_dir(&dir) {
                // Never leave the controllers already made behind: an
                // outer manager (Slurm) cannot remove its cgroup around them.
                cg.remove();
                return Err(io::Error::new(
                    e.kind(),
                    format!("mkdir {}: {e}", dir.display()),
                ));
            }
            cg.dirs.push(dir);
        }
        if let Some(l) = limits {
            if let Err(e) = cg.apply(l) {
                cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    fn apply(&self, l: &Limits) -> io::Result<()> {
        let mem = l.memory.to_string();
        let pids = l.pids.to_string();
        let quota = (l.cpus > 0.0).then(|| (l.cpus * 100_000.0).round().max(1000.0) as u64);
        if self.v2 {
            let d = &self.dirs[0];
            write(d, "memory.max", &mem)?;
            if d.join("memory.swap.max").exists() {
                write(d, "memory.swap.max", "0")?;
            }
            write(d, "pids.max", &pids)?;
            if let (Some(q), true) = (quota, d.join("cpu.max").exists()) {
                write(d, "cpu.max", &format!("{q} 100000"))?;
            }
        } else {
            let m = &self.dirs[0];
            write(m, "memory.limit_in_bytes", &mem)?;
            if m.join("memory.memsw.limit_in_bytes").exists() {
                write(m, "memory.memsw.limit_in_bytes", &mem)?;
            }
            write(&self.dirs[1], "pids.max", &pids)?;
            if let (Some(q), Some(c)) = (quota, self.dirs.get(2)) {
                write(c, "cpu.cfs_period_us", "100000")?;
                write(c, "cpu.cfs_quota_us", &q.to_string())?;
            }
        }
        Ok(())
    }

    /// v1: the `tasks` files the sandbox's init writes `0` to, moving
    /// itself in. A thread moving itself skips the global threadgroup lock
    /// (and its RCU grace period, ~10-20 ms), which `cgroup.procs` takes.
    /// v2 (`None`): the parent writes the pid to `cgroup.procs` instead.
    pub fn self_attach_files(&self) -> Option<Vec<PathBuf>> {
        (!self.v2).then(|| self.dirs.iter().map(|d| d.join("tasks")).collect())
    }

    /// Put a process (host pid) in every controller of the job.
    pub fn add(&self, pid: i32) -> io::Result<()> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer killed in this job.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            self.dirs[0].join("memory.events")
        } else {
            self.dirs[0].join("memory.oom_control")
        };
        fs::read_to_string(file)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            })
            .unwrap_or(0)
    }

    fn procs(&self) -> Vec<i32> {
        let d = if self.v2 {
            &self.dirs[0]
        } else {
            &self.dirs[1]
        };
        fs::read_to_string(d.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL everything in the job (the namespace's death normally did
    /// it already; this is the belt to its braces).
    pub fn kill_all(&self) {
        if self.v2 && self.dirs[0].join("cgroup.kill").exists() {
            let _ = fs::write(self.dirs[0].join("cgroup.kill"), "1");
            return;
        }
        for _ in 0..20 {
            let procs = self.procs();
            if procs.is_empty() {
                return;
            }
            for p in procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Memory still charged to the job (page cache it read), in bytes.
    fn charged(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        fs::read_to_string(self.dirs[0].join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the next job may have this cgroup: nothing of this job is
    /// in any controller, no OOM kill was ever counted in it (the count
    /// cannot be reset, and the next verdict reads it), and almost no
    /// memory is still charged to it (the next job starts with its whole
    /// limit free).
    fn reusable(&self) -> bool {
        let empty = |d: &PathBuf| {
            fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|t| t.trim().is_empty())
        };
        self.limits.is_some()
            && self.dirs.iter().all(empty)
            && self.oom_kills() == 0
            && self.charged().is_some_and(|b| b <= MAX_LEFT_CHARGED)
    }

    /// The same cgroup(s) under `name` (each controller's directory
    /// renamed in place), so it reads as the new job's. cgroup v2 cannot
    /// rename a cgroup (EPERM): there it keeps its name.
    fn rename(&mut self, name: &str) -> io::Result<()> {
        if self.v2 {
            return Ok(());
        }
        for d in self.dirs.iter_mut() {
            let to = d.with_file_name(name);
            fs::rename(&*d, &to).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("rename {} to {}: {e}", d.display(), to.display()),
                )
            })?;
            *d = to;
        }
        Ok(())
    }

    /// Remove the job's directories (retrying briefly while the kernel
    /// finishes tearing the processes down). Blocking; errors are logged.
    pub fn remove(&self) {
        for d in self.dirs.iter().rev() {
            let mut last = None;
            for _ in 0..100 {
                match fs::remove_dir(d) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(e) = last {
                tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove job cgroup");
            }
        }
    }
}

/// Most idle job cgroups a pool keeps.
const MAX_IDLE: usize = 16;
/// Most memory still charged to a cgroup that is reused (page cache of the
/// files the last job read, reclaimable but counted against the limit).
const MAX_LEFT_CHARGED: u64 = 4 << 20;

/// Job cgroups kept between jobs. Creating and removing a job's memory,
/// pids and cpu cgroups (and the kernel's work to free them) was about a
/// twelfth of a native run's CPU. A job's cgroup is kept only when the
/// job left nothing in it ([`JobCgroup::reusable`]) and is given only to a
/// job with the same limits, renamed for it; anything else gets a new one.
#[derive(Debug, Default)]
pub struct Pool {
    idle: std::sync::Mutex<Vec<JobCgroup>>,
    given_back: std::sync::atomic::AtomicU64,
}

impl Pool {
    /// A cgroup for `job_id` enforcing `limits`: an idle one made for the
    /// same limits, or a new one.
    pub fn take(&self, h: &Hierarchy, job_id: &str, limits: &Limits) -> io::Result<JobCgroup> {
        let key = LimitsKey::of(limits);
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.iter()
                .position(|c| c.limits == Some(key))
                .map(|i| idle.swap_remove(i))
        };
        if let Some(mut cg) = idle {
            match cg.rename(&name_for(job_id)) {
                Ok(()) => return Ok(cg),
                // Swept meanwhile, or half renamed: start afresh.
                Err(_) => cg.remove(),
            }
        }
        JobCgroup::create(h, job_id, Some(limits))
    }

    /// The job is over (its init reaped): end anything left of it, then
    /// keep its cgroup for the next job if it may have it, else remove it.
    pub fn give_back(&self, cg: JobCgroup) {
        cg.kill_all();
        let left = if cg.reusable() {
            self.keep(cg)
        } else {
            Some(cg)
        };
        if let Some(cg) = left {
            cg.remove();
        }
        self.given_back
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Keep `cg` idle under a name of no job (a job's name is seen only
    /// while it runs), or hand it back when the pool is full or the
    /// rename fails.
    fn keep(&self, mut cg: JobCgroup) -> Option<JobCgroup> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= MAX_IDLE
            || cg
                .rename(&format!("labgrader-idle-{}", crate::spool::new_job_id()))
                .is_err()
        {
            return Some(cg);
        }
        idle.push(cg);
        None
    }

    /// Cgroups given back so far, and how many wait idle.
    pub fn counts(&self) -> (u64, usize) {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
        (
            self.given_back.load(std::sync::atomic::Ordering::SeqCst),
            idle,
        )
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(|p| p.into_inner());
        for cg in idle.drain(..) {
            cg.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_are_sanitized_and_unique() {
        let a = name_for("../../etc/x y");
        let b = name_for("../../etc/x y");
        assert!(a.starts_with("labgrader-etcxy-"), "{a}");
        assert_ne!(a, b);
        assert!(!a.contains('/'));
    }
}
