//! The spool: one directory tree whose subdirectories are job states.
//!
//! Owns the on-disk protocol every other part relies on: a file is written
//! in `tmp/`, fsynced, renamed into its state directory, and the directory
//! fsynced (the Maildir/Postfix way). After that it only ever moves by
//! `rename(2)` under its stable name. Nothing reads `tmp/`. The spool never
//! interprets job contents beyond what recovery needs, and never deletes an
//! accepted job: unreadable files go to `corrupt/`. A job's moves between
//! states are typed operations here ([`Spool::claim`], [`Spool::requeue`],
//! [`Spool::fail`], [`Spool::finish`], [`Spool::hold`], [`Spool::release`]);
//! no other module renames or removes a job's files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// A job's state is the directory its file lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being written; swept at start.
    Tmp,
    /// Accepted, waiting for a grader.
    Incoming,
    /// Claimed by a grader.
    Active,
    /// Finished: a directory per job with event, result, stdout, stderr.
    Done,
    /// Never retried automatically; carries a reason.
    Failed,
    /// Deliveries waiting, each with its attempt count and next try.
    Outbox,
    /// Deliveries given up on, with the reason.
    Dead,
    /// Files that could not be parsed; kept for staff, never deleted.
    Corrupt,
    /// Accepted pushes waiting for their test repository to exist
    /// (`[gitlab] student_namespaces`, `[spool] hold_for`).
    Held,
}

impl State {
    pub const ALL: [State; 9] = [
        State::Tmp,
        State::Incoming,
        State::Active,
        State::Done,
        State::Failed,
        State::Outbox,
        State::Dead,
        State::Corrupt,
        State::Held,
    ];

    pub fn dir_name(self) -> &'static str {
        match self {
            State::Tmp => "tmp",
            State::Incoming => "incoming",
            State::Active => "active",
            State::Done => "done",
            State::Failed => "failed",
            State::Outbox => "outbox",
            State::Dead => "dead",
            State::Corrupt => "corrupt",
            State::Held => "held",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create spool directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot move {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} already exists")]
    Exists { path: PathBuf },
}

impl SpoolError {
    /// The underlying I/O error, e.g. to tell "not found" (someone else
    /// claimed it) from a real fault.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            SpoolError::Create { source, .. }
            | SpoolError::Write { source, .. }
            | SpoolError::Rename { source, .. }
            | SpoolError::Read { source, .. } => Some(source.kind()),
            SpoolError::Exists { .. } => Some(io::ErrorKind::AlreadyExists),
        }
    }
}

/// A file written in `tmp/` by [`Spool::stage`], not yet durable nor
/// visible in any state.
#[derive(Debug)]
pub struct Staged {
    pub file: File,
    pub tmp: PathBuf,
    /// The name it will have in its state directory.
    pub name: String,
}

/// What `recover` found and did at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub tmp_swept: usize,
    /// Job names moved from `active/` back to `incoming/`.
    pub requeued: Vec<String>,
}

/// Handle on a spool root. Cheap to clone paths from; holds no open files.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
}

static JOB_IDS: Mutex<Option<ulid::Generator>> = Mutex::new(None);

/// A new time-sortable unique job id (a monotonic ULID: 26 characters,
/// lexicographic order = creation order within this process).
pub fn new_job_id() -> String {
    let mut guard = JOB_IDS.lock().unwrap_or_else(|p| p.into_inner());
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    match generator.generate() {
        Ok(id) => id.to_string(),
        // Overflow of the random part within one millisecond: fall back to a
        // fresh ULID, still unique, ordering within that millisecond lost.
        Err(_) => ulid::Ulid::generate().to_string(),
    }
}

/// True when `name` is something this spool could have produced: no path
/// separators, no leading dot, printable ASCII. Everything taking a job id
/// from a user (CLI, HTTP) checks this before building a path.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Spool {
    /// Open (and create, if needed) the spool at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Spool, SpoolError> {
        let root = root.into();
        for s in State::ALL {
            let p = root.join(s.dir_name());
            fs::create_dir_all(&p).map_err(|source| SpoolError::Create { path: p, source })?;
        }
        Ok(Spool { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, state: State) -> PathBuf {
        self.root.join(state.dir_name())
    }

    pub fn path(&self, state: State, name: &str) -> PathBuf {
        self.dir(state).join(name)
    }

    /// Durably publish `bytes` as `state/name`: write to `tmp/`, fsync,
    /// rename, fsync the directory. Fails if `state/name` exists. On any
    /// error nothing is left behind in `tmp/` or in `state/`.
    pub fn publish(&self, state: State, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        let dest = self.publish_unsynced(state, name, bytes)?;
        if let Err(source) = fsync_dir(&self.dir(state)) {
            let _ = fs::remove_file(&dest);
            return Err(SpoolError::Write { path: dest, source });
        }
        Ok(dest)
    }

    /// [`Spool::publish`] without the final directory fsync: the file's
    /// contents are durable, its name in `state/` is not until the caller
    /// fsyncs `self.dir(state)`. For callers that fsync the directory once
    /// for a group of files (the hook's group commit) and answer no one
    /// before that fsync returned. Fails if `state/name` exists; on error
    /// nothing is left behind.
    pub fn publish_unsynced(
        &self,
        state: State,
        name: &str,
        bytes: &[u8],
    ) -> Result<PathBuf, SpoolError> {
        let tmp = self.write_tmp(name, bytes)?;
        let dest = self.path(state, name);
        // link(2) + unlink instead of rename(2): it refuses to replace an
        // existing file, so a racing duplicate cannot overwrite a job.
        if let Err(e) = fs::hard_link(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                SpoolError::Exists { path: dest }
            } else {
                SpoolError::Rename {
                    from: tmp,
                    to: dest,
                    source: e,
                }
            });
        }
        let _ = fs::remove_file(&tmp);
        Ok(dest)
    }

    /// Step one of a group publish: write `bytes` to a new file in `tmp/`
    /// *without* fsync. The caller (one thread serving many writers) then
    /// fsyncs [`Staged::file`], links it with [`Spool::link_staged`] and
    /// fsyncs the state directory, in that order, before telling anyone the
    /// file is stored. On error nothing is left behind.
    pub fn stage(&self, name: &str, bytes: &[u8]) -> Result<Staged, SpoolError> {
        let tmp =
            self.dir(State::Tmp)
                .join(format!("{name}.{}.{}", std::process::id(), new_job_id()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            Ok(f)
        })();
        match result {
            Ok(file) => Ok(Staged {
                file,
                tmp,
                name: name.to_string(),
            }),
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                Err(SpoolError::Write { path: tmp, source })
            }
        }
    }

    /// Step two of a group publish: link a staged file, already fsynced,
    /// to `state/<name>` (refusing to replace an existing file) and drop its
    /// tmp name. Durable once `state`'s directory is fsynced. On error the
    /// staged file is removed.
    pub fn link_staged(&self, staged: &Staged, state: State) -> Result<PathBuf, SpoolError> {
        let dest = self.path(state, &staged.name);
        let linked = fs::hard_link(&staged.tmp, &dest);
        let _ = fs::remove_file(&staged.tmp);
        match linked {
            Ok(()) => Ok(dest),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(SpoolError::Exists { path: dest })
            }
            Err(source) => Err(SpoolError::Rename {
                from: staged.tmp.clone(),
                to: dest,
                source,
            }),
        }
    }

    /// Drop a staged file that will not be published.
    pub fn discard(&self, staged: Staged) {
        let _ = fs::remove_file(&staged.tmp);
    }

    /// Durably replace `state/name` with `bytes` (write tmp, fsync, rename
    /// over, fsync dir). Used for records that change in place (outbox
    /// attempt counts, requeued jobs).
    pub fn replace(&self, state: State, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        let tmp = self.write_tmp(name, bytes)?;
        let dest = self.path(state, name);
        if let Err(source) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::Rename {
                from: tmp,
                to: dest,
                source,
            });
        }
        fsync_dir(&self.dir(state)).map_err(|source| SpoolError::Write {
            path: dest.clone(),
            source,
        })?;
        Ok(dest)
    }

    fn write_tmp(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
        let tmp =
            self.dir(State::Tmp)
                .join(format!("{name}.{}.{}", std::process::id(), new_job_id()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if let Err(source) = result {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::Write { path: tmp, source });
        }
        Ok(tmp)
    }

    /// A fresh directory under `tmp/` to build a multi-file record in,
    /// later published with [`Spool::publish_dir`].
    pub fn tmp_dir(&self, name: &str) -> Result<PathBuf, SpoolError> {
        let p =
            self.dir(State::Tmp)
                .join(format!("{name}.{}.{}", std::process::id(), new_job_id()));
        fs::create_dir(&p).map_err(|source| SpoolError::Create {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    }

    /// Fsync every file in `built` (made by [`Spool::tmp_dir`]) and rename
    /// it to `state/name`.
    pub fn publish_dir(
        &self,
        built: &Path,
        state: State,
        name: &str,
    ) -> Result<PathBuf, SpoolError> {
        let sync = || -> io::Result<()> {
            for entry in fs::read_dir(built)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    File::open(entry.path())?.sync_all()?;
                }
            }
            fsync_dir(built)
        };
        sync().map_err(|source| SpoolError::Write {
            path: built.to_path_buf(),
            source,
        })?;
        self.publish_built(built, state, name)
    }

    /// The second half of [`Spool::publish_dir`], for a `built` whose
    /// files and directory are fsynced already: rename it to
    /// `state/name`, then fsync `state/`.
    fn publish_built(&self, built: &Path, state: State, name: &str) -> Result<PathBuf, SpoolError> {
        let dest = self.path(state, name);
        if dest.exists() {
            return Err(SpoolError::Exists { path: dest });
        }
        self.rename_path(built, &dest)?;
        fsync_dir(&self.dir(state)).map_err(|source| SpoolError::Write {
            path: dest.clone(),
            source,
        })?;
        Ok(dest)
    }

    /// Move `name` from one state to another by rename, then fsync both
    /// directories. `NotFound` means another worker moved it first.
    pub fn transition(&self, name: &str, from: State, to: State) -> Result<PathBuf, SpoolError> {
        let src = self.path(from, name);
        let dest = self.path(to, name);
        self.rename_path(&src, &dest)?;
        for s in [to, from] {
            fsync_dir(&self.dir(s)).map_err(|source| SpoolError::Write {
                path: self.dir(s),
                source,
            })?;
        }
        Ok(dest)
    }

    fn rename_path(&self, src: &Path, dest: &Path) -> Result<(), SpoolError> {
        fs::rename(src, dest).map_err(|source| SpoolError::Rename {
            from: src.to_path_buf(),
            to: dest.to_path_buf(),
            source,
        })
    }

    /// Names in `state`, sorted (job ids are time-sortable: oldest first).
    /// Hidden files are skipped.
    pub fn list(&self, state: State) -> Result<Vec<String>, SpoolError> {
        let dir = self.dir(state);
        let rd = fs::read_dir(&dir).map_err(|source| SpoolError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn count(&self, state: State) -> usize {
        fs::read_dir(self.dir(state))
            .map(|rd| rd.filter_map(|e| e.ok()).count())
            .unwrap_or(0)
    }

    pub fn read(&self, state: State, name: &str) -> Result<Vec<u8>, SpoolError> {
        let p = self.path(state, name);
        fs::read(&p).map_err(|source| SpoolError::Read { path: p, source })
    }

    /// Keep an unparseable file for staff: move it to `corrupt/`, never
    /// delete it. A name clash gets a suffix rather than an overwrite.
    pub fn quarantine(&self, name: &str, from: State) -> Result<PathBuf, SpoolError> {
        let mut dest_name = name.to_string();
        if self.path(State::Corrupt, &dest_name).exists() {
            dest_name = format!("{name}.{}", new_job_id());
        }
        let src = self.path(from, name);
        let dest = self.path(State::Corrupt, &dest_name);
        self.rename_path(&src, &dest)?;
        let _ = fsync_dir(&self.dir(State::Corrupt));
        let _ = fsync_dir(&self.dir(from));
        Ok(dest)
    }

    /// Remove the files in `tmp/` left by processes that died while
    /// writing them (tmp file names carry the writer's pid), and nothing
    /// else: safe to run while another live process (a separate grader)
    /// writes its own tmp files. Returns how many were removed.
    pub fn sweep_dead_tmp(&self) -> Result<usize, SpoolError> {
        let mut swept = 0;
        for name in self.list(State::Tmp)? {
            let p = self.path(State::Tmp, &name);
            let dead = match tmp_owner(&name) {
                Some(pid) => pid != std::process::id() && !process_alive(pid),
                // Not a name we write: keep it a while, then it is junk.
                None => fs::symlink_metadata(&p)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_UNOWNED_TMP),
            };
            if !dead {
                continue;
            }
            let removed = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            if removed.is_ok() {
                swept += 1;
            }
        }
        if swept > 0 {
            let _ = fsync_dir(&self.dir(State::Tmp));
        }
        Ok(swept)
    }

    /// Start-up recovery: sweep what dead writers left in `tmp/` (nothing in
    /// it was ever accepted) and
    /// move every file in `active/` back to `incoming/`. `rewrite` may
    /// update a requeued job's contents (e.g. raise its attempt count); it
    /// gets the old bytes and returns the new ones, or `None` to keep them.
    pub fn recover(
        &self,
        mut rewrite: impl FnMut(&str, &[u8]) -> Option<Vec<u8>>,
    ) -> Result<Recovery, SpoolError> {
        // Only what dead writers left: in `serve`, and with separate hook
        // and grader units, a live process may be writing there right now.
        let mut rec = Recovery {
            tmp_swept: self.sweep_dead_tmp()?,
            ..Recovery::default()
        };
        for name in self.list(State::Active)? {
            let src = self.path(State::Active, &name);
            if src.is_dir() {
                continue;
            }
            let bytes = self.read(State::Active, &name)?;
            match rewrite(&name, &bytes) {
                Some(new) => {
                    self.replace(State::Incoming, &name, &new)?;
                    fs::remove_file(&src).map_err(|source| SpoolError::Write {
                        path: src.clone(),
                        source,
                    })?;
                    let _ = fsync_dir(&self.dir(State::Active));
                }
                None => {
                    self.transition(&name, State::Active, State::Incoming)?;
                }
            }
            rec.requeued.push(name);
        }
        Ok(rec)
    }
}

// ---------------------------------------------------------------------------
// A job's moves between states: the only ones the grader makes. Each names
// the job by its file name in `incoming/` or `active/` (`<job id>.json`).

/// A job's finished record being built in `tmp/` (`event.json`,
/// `result.json`, `stdout`, `stderr`), published by [`Spool::finish`].
#[derive(Debug)]
pub struct DoneRecord {
    dir: PathBuf,
    job_id: String,
    /// Set by [`Spool::sync_draft`]: its files and directory are durable,
    /// so [`Spool::finish`] only renames it and fsyncs `done/`.
    synced: std::sync::atomic::AtomicBool,
}

impl Spool {
    /// Claim a waiting job: move `incoming/<name>` to `active/<name>`.
    /// `Ok(false)` when it is gone (another worker claimed it).
    pub fn claim(&self, name: &str) -> Result<bool, SpoolError> {
        // A plain rename, no directory fsync: whichever of incoming/ or
        // active/ a crash leaves the job in, start-up puts it back in
        // incoming/, so the claim need not be durable.
        match fs::rename(
            self.path(State::Incoming, name),
            self.path(State::Active, name),
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(SpoolError::Rename {
                from: self.path(State::Incoming, name),
                to: self.path(State::Active, name),
                source,
            }),
        }
    }

    /// Put a claimed job back to wait: `active/<name>` returns to
    /// `incoming/`, durably. With `event`, the claimed file first gets
    /// those bytes (a raised attempt or crash count, a `not_before`);
    /// without, it moves as it is (a job cancelled by shutdown). Never two
    /// copies at once: a grader may claim the job the moment it is back in
    /// `incoming/`, so nothing of the claim may be removed after that.
    pub fn requeue(&self, name: &str, event: Option<&[u8]>) -> Result<(), SpoolError> {
        if let Some(bytes) = event {
            self.replace(State::Active, name, bytes)?;
        }
        self.transition(name, State::Active, State::Incoming)
            .map(drop)
    }

    /// Give up on a job for good: publish `failed/<job_id>/` (`event.json`,
    /// `reason` = `reason` and a newline), then remove `from/<name>`. A
    /// `failed/<job_id>/` already there is kept as it is.
    pub fn fail(
        &self,
        from: State,
        name: &str,
        job_id: &str,
        event: &[u8],
        reason: &str,
    ) -> Result<(), SpoolError> {
        let tmp = self.tmp_dir(job_id)?;
        let reason = format!("{reason}\n");
        for (file, bytes) in [("event.json", event), ("reason", reason.as_bytes())] {
            let p = tmp.join(file);
            fs::write(&p, bytes).map_err(|source| SpoolError::Write { path: p, source })?;
        }
        match self.publish_dir(&tmp, State::Failed, job_id) {
            Ok(_) | Err(SpoolError::Exists { .. }) => {}
            Err(e) => return Err(e),
        }
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_file(self.path(from, name));
        let _ = fsync_dir(&self.dir(from));
        Ok(())
    }

    /// Bring a job given up on back: publish `event` as `incoming/<job>.json`,
    /// then remove `failed/<job_id>/`. A job already waiting is refused
    /// ([`SpoolError::Exists`]).
    pub fn revive(&self, job_id: &str, event: &[u8]) -> Result<(), SpoolError> {
        let name = format!("{job_id}.json");
        self.publish(State::Incoming, &name, event)?;
        let failed = self.path(State::Failed, job_id);
        fs::remove_dir_all(&failed).map_err(|source| SpoolError::Write {
            path: failed,
            source,
        })?;
        let _ = fsync_dir(&self.dir(State::Failed));
        Ok(())
    }

    /// Hold an accepted push until its test repository exists: publish
    /// `event` as `held/<name>` durably (write, fsync, link, fsync the
    /// directory). Fails if it is there already.
    pub fn hold(&self, name: &str, event: &[u8]) -> Result<PathBuf, SpoolError> {
        self.publish(State::Held, name, event)
    }

    /// A held job's test repository exists: move `held/<name>` to
    /// `incoming/` by one rename, both directories fsynced. `Ok(false)`
    /// when it is gone (released or expired by someone else).
    pub fn release(&self, name: &str) -> Result<bool, SpoolError> {
        match self.transition(name, State::Held, State::Incoming) {
            Ok(_) => Ok(true),
            Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Step one of finishing a job: write its record (`files`: name and
    /// contents) into a fresh directory under `tmp/`, not yet visible.
    pub fn draft_done(
        &self,
        job_id: &str,
        files: &[(&str, &[u8])],
    ) -> Result<DoneRecord, SpoolError> {
        let dir = self.tmp_dir(job_id)?;
        for (file, bytes) in files {
            let p = dir.join(file);
            fs::write(&p, bytes).map_err(|source| SpoolError::Write { path: p, source })?;
        }
        Ok(DoneRecord {
            dir,
            job_id: job_id.to_string(),
            synced: Default::default(),
        })
    }

    /// Make the draft `record` durable where it is (its files, its
    /// directory, and its entry in `tmp/`), before anything promised from
    /// it (the deliveries) is queued: a crash then leaves a draft that
    /// start-up recovery can still publish.
    pub fn sync_draft(&self, record: &DoneRecord) -> Result<(), SpoolError> {
        let sync = || -> io::Result<()> {
            for entry in fs::read_dir(&record.dir)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    File::open(entry.path())?.sync_all()?;
                }
            }
            fsync_dir(&record.dir)?;
            fsync_dir(&self.dir(State::Tmp))
        };
        sync().map_err(|source| SpoolError::Write {
            path: record.dir.clone(),
            source,
        })?;
        record
            .synced
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Step two: publish `record` as `done/<job id>/` (a record already
    /// there wins; this one is dropped) and drop the claim `active/<name>`.
    pub fn finish(&self, record: DoneRecord, name: &str) -> Result<(), SpoolError> {
        let published = if record.synced.load(std::sync::atomic::Ordering::Relaxed) {
            // Its files are durable already (`sync_draft`): fsyncing them
            // again would cost five fsyncs a job for nothing.
            self.publish_built(&record.dir, State::Done, &record.job_id)
        } else {
            self.publish_dir(&record.dir, State::Done, &record.job_id)
        };
        match published {
            Ok(_) => {}
            Err(SpoolError::Exists { .. }) => {
                let _ = fs::remove_dir_all(&record.dir);
            }
            Err(e) => return Err(e),
        }
        let active = self.path(State::Active, name);
        if let Err(source) = fs::remove_file(&active)
            && source.kind() != io::ErrorKind::NotFound
        {
            return Err(SpoolError::Write {
                path: active,
                source,
            });
        }
        // No fsync of active/: a claim a crash brings back is dropped at
        // start-up, its job being in done/ (`drop_if_done`).
        Ok(())
    }

    /// True when job `job_id` is already in `done/`: then `from/<name>` is
    /// a leftover (a claim, or a job put back by recovery) and is removed.
    pub fn drop_if_done(&self, from: State, name: &str, job_id: &str) -> bool {
        if !self.path(State::Done, job_id).exists() {
            return false;
        }
        let _ = fs::remove_file(self.path(from, name));
        true
    }
}

/// The pid in a tmp file name made by `write_tmp`: `<name>.<pid>.<ulid>`.
/// `tmp/` entries whose name names no writer are removed after this long.
const STALE_UNOWNED_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

fn tmp_owner(tmp_name: &str) -> Option<u32> {
    let mut parts = tmp_name.rsplitn(3, '.');
    let ulid = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    (ulid.len() == 26).then_some(())?;
    pid.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0: existence check. EPERM means it exists under another user.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// True while job `job` waits in `incoming/` or runs in `active/` under
/// the spool at `root`. Incoming is looked at again after active: a job
/// moving between the two (claimed, or put back by recovery or a retry)
/// is seen in one of the three looks.
pub fn job_waiting_or_running(root: &Path, job: &str) -> bool {
    let at = |s: State| root.join(s.dir_name()).join(format!("{job}.json")).exists();
    at(State::Incoming) || at(State::Active) || at(State::Incoming)
}

/// How often the daemons prune `keys/` and `sent/` (see [`prune_older_than`]).
pub const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Remove the entries of `dir` (files or symlinks, never followed) last
/// modified more than `age` ago, except those `keep` names. Returns how
/// many were removed; a missing `dir` is empty. For the small bookkeeping
/// directories (`keys/`, `sent/`) that would otherwise grow forever.
pub fn prune_older_than(
    dir: &Path,
    age: std::time::Duration,
    keep: impl Fn(&str) -> bool,
) -> io::Result<usize> {
    let cutoff = std::time::SystemTime::now()
        .checked_sub(age)
        .unwrap_or(std::time::UNIX_EPOCH);
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in rd {
        let entry = entry?;
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let old = meta.modified().is_ok_and(|t| t < cutoff);
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !old || meta.is_dir() || keep(name) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// fsync a directory so a rename or create in it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Test helper: back-date `path`'s mtime (not following a symlink) by `secs`.
#[cfg(test)]
pub(crate) fn backdate(path: &Path, secs: i64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = TimeSpec::new(now - secs, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_transition_then_recover() {
        let t = tempfile::tempdir().unwrap();
        let s = Spool::open(t.path()).unwrap();
        s.publish(State::Incoming, "a.json", b"{}").unwrap();
        assert!(matches!(
            s.publish(State::Incoming, "a.json", b"{}"),
            Err(SpoolError::Exists { .. })
        ));
        assert_eq!(s.list(State::Tmp).unwrap(), Vec::<String>::new());
        s.transition("a.json", State::Incoming, State::Active)
            .unwrap();
        // A dead writer's leftover goes; a live writer's file (ours) stays.
        let dead = format!("b.json.4194304.{}", new_job_id());
        fs::write(s.dir(State::Tmp).join(&dead), b"x").unwrap();
        let live = format!("c.json.{}.{}", std::process::id(), new_job_id());
        fs::write(s.dir(State::Tmp).join(&live), b"x").unwrap();
        let rec = s.recover(|_, b| Some([b, b"!"].concat())).unwrap();
        assert_eq!(rec.tmp_swept, 1);
        assert_eq!(s.list(State::Tmp).unwrap(), vec![live]);
        assert_eq!(rec.requeued, vec!["a.json".to_string()]);
        assert_eq!(s.read(State::Incoming, "a.json").unwrap(), b"{}!");
        assert!(s.list(State::Active).unwrap().is_empty());
    }

    #[test]
    fn job_moves_claim_requeue_fail_and_finish() {
        let t = tempfile::tempdir().unwrap();
        let s = Spool::open(t.path()).unwrap();
        s.publish(State::Incoming, "j.json", b"v1").unwrap();
        assert!(s.claim("j.json").unwrap());
        assert!(!s.claim("j.json").unwrap(), "already claimed");
        s.requeue("j.json", Some(b"v2")).unwrap();
        assert_eq!(s.read(State::Incoming, "j.json").unwrap(), b"v2");
        assert!(s.list(State::Active).unwrap().is_empty());
        assert!(s.claim("j.json").unwrap());
        s.requeue("j.json", None).unwrap();
        assert_eq!(s.read(State::Incoming, "j.json").unwrap(), b"v2");
        s.fail(State::Incoming, "j.json", "j", b"ev", "why")
            .unwrap();
        assert!(s.list(State::Incoming).unwrap().is_empty());
        assert_eq!(
            fs::read(s.path(State::Failed, "j").join("reason")).unwrap(),
            b"why\n"
        );

        s.publish(State::Incoming, "k.json", b"k").unwrap();
        assert!(s.claim("k.json").unwrap());
        let draft = s
            .draft_done("k", &[("event.json", b"k"), ("stdout", b"out")])
            .unwrap();
        s.finish(draft, "k.json").unwrap();
        assert_eq!(
            fs::read(s.path(State::Done, "k").join("stdout")).unwrap(),
            b"out"
        );
        assert!(s.list(State::Active).unwrap().is_empty());
        assert!(s.list(State::Tmp).unwrap().is_empty());
        s.publish(State::Incoming, "k.json", b"k").unwrap();
        assert!(s.drop_if_done(State::Incoming, "k.json", "k"));
        assert!(!s.drop_if_done(State::Incoming, "j.json", "j"));
        assert!(s.list(State::Incoming).unwrap().is_empty());
    }

    #[test]
    fn held_jobs_are_published_once_released_once_and_expire_to_failed() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.hold("J1.json", b"{1}").unwrap();
        assert!(matches!(
            s.hold("J1.json", b"{other}"),
            Err(SpoolError::Exists { .. })
        ));
        assert_eq!(s.read(State::Held, "J1.json").unwrap(), b"{1}");
        assert!(s.release("J1.json").unwrap());
        assert!(!s.release("J1.json").unwrap(), "already released");
        assert_eq!(s.list(State::Incoming).unwrap(), ["J1.json"]);
        assert!(s.list(State::Held).unwrap().is_empty());
        s.hold("J2.json", b"{2}").unwrap();
        s.fail(State::Held, "J2.json", "J2", b"{2}", "held: too long")
            .unwrap();
        assert!(s.list(State::Held).unwrap().is_empty());
        let reason = std::fs::read_to_string(s.path(State::Failed, "J2").join("reason")).unwrap();
        assert_eq!(reason, "held: too long\n");
    }

    #[test]
    fn sweep_dead_tmp_keeps_live_writers_files() {
        let t = tempfile::tempdir().unwrap();
        let s = Spool::open(t.path()).unwrap();
        let id = new_job_id();
        // pid 0x7fff_fff0 does not exist; our own pid does.
        let dead = format!("a.json.{}.{id}", 0x7fff_fff0u32);
        let live = format!("b.json.{}.{id}", std::process::id());
        let live_dir = format!("c.{id}.d");
        fs::write(s.path(State::Tmp, &dead), b"x").unwrap();
        fs::write(s.path(State::Tmp, &live), b"x").unwrap();
        fs::create_dir(s.path(State::Tmp, &live_dir)).unwrap();
        assert_eq!(s.sweep_dead_tmp().unwrap(), 1);
        assert_eq!(s.list(State::Tmp).unwrap(), vec![live, live_dir]);
    }

    #[test]
    fn prune_removes_only_old_unkept_entries_and_never_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("keys");
        fs::create_dir(&dir).unwrap();
        let outside = t.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        backdate(&outside, 10_000);
        for name in ["old", "kept", "new"] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        std::os::unix::fs::symlink(&outside, dir.join("old-link")).unwrap();
        for name in ["old", "kept", "old-link"] {
            backdate(&dir.join(name), 7200);
        }
        let n =
            prune_older_than(&dir, std::time::Duration::from_secs(3600), |n| n == "kept").unwrap();
        assert_eq!(n, 2);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["kept", "new"]);
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        assert_eq!(
            prune_older_than(&t.path().join("none"), std::time::Duration::ZERO, |_| false).unwrap(),
            0
        );
    }

    #[test]
    fn staged_files_link_once_and_leave_no_tmp() {
        let t = tempfile::tempdir().unwrap();
        let s = Spool::open(t.path()).unwrap();
        let a = s.stage("j.json", b"{}").unwrap();
        a.file.sync_all().unwrap();
        s.link_staged(&a, State::Incoming).unwrap();
        let b = s.stage("j.json", b"{2}").unwrap();
        assert!(matches!(
            s.link_staged(&b, State::Incoming),
            Err(SpoolError::Exists { .. })
        ));
        let c = s.stage("k.json", b"x").unwrap();
        s.discard(c);
        assert!(s.list(State::Tmp).unwrap().is_empty());
        assert_eq!(s.read(State::Incoming, "j.json").unwrap(), b"{}");
    }

    #[test]
    fn job_ids_sort_by_creation() {
        let ids: Vec<String> = (0..1000).map(|_| new_job_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids.iter().all(|i| is_valid_name(i)));
    }

    #[test]
    fn names_with_paths_are_invalid() {
        for bad in ["", "../x", "a/b", ".hidden", "a b", "x\0"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn quarantine_never_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let s = Spool::open(t.path()).unwrap();
        s.publish(State::Incoming, "x", b"1").unwrap();
        s.quarantine("x", State::Incoming).unwrap();
        s.publish(State::Incoming, "x", b"2").unwrap();
        s.quarantine("x", State::Incoming).unwrap();
        assert_eq!(s.list(State::Corrupt).unwrap().len(), 2);
    }
}
