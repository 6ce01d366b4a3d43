//! Command line: parses arguments, loads and validates the config, sets up
//! logging and signals, then calls the library. No business logic lives
//! here; each subcommand is a few lines handing typed values to its part.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::daemon::{Parts, QueueReport, existing_spool};

mod regrade;

#[derive(Debug, Parser)]
#[command(
    name = "labgrader",
    version,
    about = "Grades students' code pushed to GitLab",
    long_about = "Grades students' code pushed to GitLab: a webhook intake writes each push \
                  durably to a spool; a grader runs the course's test_all in a sandbox and \
                  delivers the grade.\n\nConfig: --config FILE, else $LABGRADER_CONFIG, else \
                  built-in defaults (see docs/reference.md)."
)]
pub struct Cli {
    /// Config file (TOML). Default: $LABGRADER_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log filter, e.g. `info` or `labgrader=debug` (also $LABGRADER_LOG).
    #[arg(long, global = true, env = "LABGRADER_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hook server and the grader daemon in one process.
    Serve,
    /// Run only the hook server (network-facing; no Docker access needed).
    Hook,
    /// Run only the grader daemon.
    Grader,
    /// Grade a local student directory with a local tests directory, once.
    Grade(GradeArgs),
    /// Show the spool: counts per state, waiting and active jobs.
    Queue {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Queue finished jobs again: by id, every job of a project, or an
    /// assignment's submissions by policy (a batch, in the low-priority lane).
    Regrade(regrade::RegradeArgs),
    /// Run a finished job again on its recorded inputs and compare grades
    /// (`--all --assignment NAME`: every current job of an assignment).
    Replay(regrade::ReplayArgs),
    /// Cancel waiting jobs: each goes to failed/ with the reason
    /// "cancelled by staff" (no spool file is ever deleted by hand).
    Cancel {
        /// Job ids (from `labgrader queue`).
        #[arg(required = true)]
        jobs: Vec<String>,
        /// Email the pusher that the push was not graded, and why.
        #[arg(long)]
        notify: bool,
    },
    /// Make jobs due now: a job waiting for a later try, or one in failed/.
    Retry {
        /// Job ids (from `labgrader queue`, or failed/).
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// Deliver each student's latest result of an assignment again with
    /// its `after_due_date` tests shown (the daemon does this by itself
    /// when the deadline passes; at most once per job).
    Release {
        /// The assignment (`[assignments.NAME]` key, the student repository's name).
        assignment: String,
    },
    /// Gradebook commands.
    #[command(subcommand)]
    Gradebook(GradebookCommand),
    /// GitLab setup commands.
    #[command(subcommand)]
    Gitlab(GitlabCommand),
    /// Print the effective config (secrets redacted) or the error.
    CheckConfig,
    /// Run one prepared job in the native sandbox (what a Slurm node runs).
    Sandbox(SandboxArgs),
}

#[derive(Debug, clap::Args)]
pub struct GradeArgs {
    /// The student's tree.
    #[arg(long)]
    pub student: PathBuf,
    /// The course's test tree (holds test_all).
    #[arg(long)]
    pub tests: PathBuf,
    /// Runner to use (default: the config's).
    #[arg(long)]
    pub runner: Option<String>,
    /// Wall-clock timeout, e.g. 30s (default: the config's).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Grading contract: `stdout` or `trusted` (default: the config's
    /// `[grader] contract`).
    #[arg(long, value_parser = str::parse::<crate::config::Contract>)]
    pub contract: Option<crate::config::Contract>,
    /// Docker image to run in (default: the config's `[docker] image`).
    #[arg(long)]
    pub image: Option<String>,
    /// Print only the result JSON on stdout (for `jq`); `test_all`'s
    /// stdout and stderr go to stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GradebookCommand {
    /// Export grades.
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// Only this project (namespace/name).
    #[arg(long)]
    pub project: Option<String>,
    /// Only this assignment (student repository name).
    #[arg(long)]
    pub assignment: Option<String>,
    /// Deprecated: `--policy latest` (a note on stderr says so).
    #[arg(long, hide = true, conflicts_with_all = ["best", "policy"])]
    pub latest: bool,
    /// Deprecated: `--policy best` (a note on stderr says so).
    #[arg(long, hide = true, conflicts_with = "policy")]
    pub best: bool,
    /// One row per student and assignment: best, latest or latest-on-time
    /// (without it: every job). Jobs that ended infra_error, or whose
    /// commit was never found, never count.
    #[arg(long)]
    pub policy: Option<String>,
    /// One row per test of each job selected (results.json / junit.xml).
    #[arg(long)]
    pub tests: bool,
    /// Count each regraded submission only by its newest grading (the
    /// rows a regrade superseded are left out before `--policy` chooses).
    #[arg(long, requires = "policy")]
    pub prefer_regrades: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum GitlabCommand {
    /// Register (or update) the system hook pointing at URL: push and
    /// tag-push events, the webhook token. Needs an administrator's token.
    InstallSystemHook {
        /// Where GitLab reaches the hook server, e.g. `https://grader.example.edu/hooks/gitlab`.
        #[arg(long)]
        url: String,
        /// Only system events (project_create, ...), no pushes: for setups
        /// that grade through project hooks.
        #[arg(long)]
        no_push_events: bool,
    },
    /// Add (or update) project hooks on existing projects: those the
    /// token's user maintains, or those in --namespace and its subgroups.
    AddProjectHooks {
        /// A group (with subgroups) or a user's namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Hook URL (default: gitlab.project_hook_url).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// Directory prepared by the grader (job.json, workspace/).
    #[arg(long, required_unless_present = "serve")]
    pub job_dir: Option<PathBuf>,
    /// Serve as a Slurm pilot: take jobs from this shared directory's queue,
    /// each as its own step (`$SLURM_JOB_ID` names the pilot).
    #[arg(long, conflicts_with = "job_dir")]
    pub serve: Option<PathBuf>,
    /// (pilot) Jobs at once.
    #[arg(long, default_value_t = 8)]
    pub slots: usize,
    /// (pilot) Seconds without work before the pilot ends.
    #[arg(long, default_value_t = 60)]
    pub idle: u64,
    /// (pilot) Seconds until the allocation's time limit.
    #[arg(long, default_value_t = 3600)]
    pub lifetime: u64,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labgrader: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes unless a person watches: under systemd stderr is the
    // journal, which would store them verbatim.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::CheckConfig = cli.command {
        return Ok(check_config(cli.config.as_deref()));
    }
    if matches!(
        cli.command,
        Command::Serve
            | Command::Grader
            | Command::Grade(_)
            | Command::Replay(_)
            | Command::Sandbox(_)
    ) {
        // The native runner's spawner, forked before the configuration
        // (and its secrets) is read and before any thread exists, by every
        // command that may run a native job; ended in `daemon` if no
        // native runner is configured (the others' ends with them).
        crate::sandbox::native::spawner::prefork();
    }
    let cfg = Arc::new(Config::load(cli.config.as_deref())?);
    match cli.command {
        Command::CheckConfig => unreachable!("handled above"),
        Command::Queue { json } => queue(&cfg, json),
        Command::Serve => daemon(
            cfg,
            Parts {
                hook: true,
                grader: true,
            },
        ),
        Command::Hook => daemon(
            cfg,
            Parts {
                hook: true,
                grader: false,
            },
        ),
        Command::Grader => daemon(
            cfg,
            Parts {
                hook: false,
                grader: true,
            },
        ),
        Command::Gitlab(cmd) => gitlab(&cfg, cmd),
        // grader (issue #3): staff commands.
        Command::Grade(args) => grade(&cfg, args),
        Command::Regrade(args) => regrade::regrade(&cfg, args),
        Command::Replay(args) => regrade::replay(cfg, args),
        Command::Release { assignment } => release(&cfg, &assignment),
        Command::Cancel { jobs, notify } => {
            let spool = existing_spool(&cfg)?;
            for (job, _) in crate::grader::cancel(&cfg, &spool, &jobs, notify)? {
                println!("{job}: cancelled (failed/, reason \"cancelled by staff\")");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { jobs } => {
            let spool = existing_spool(&cfg)?;
            for (job, _) in crate::grader::retry(&spool, &jobs)? {
                println!("{job}: due now");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gradebook(GradebookCommand::Export(args)) => gradebook_export(&cfg, args),
        Command::Sandbox(args) => match (&args.serve, &args.job_dir) {
            (Some(shared), _) => pilot(&args, shared),
            (None, Some(dir)) => sandbox(&cfg, dir),
            (None, None) => anyhow::bail!("sandbox needs --job-dir DIR or --serve DIR"),
        },
    }
}

fn check_config(path: Option<&std::path::Path>) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            let source = cfg
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            println!("# effective configuration (from {source}); secrets redacted");
            print!("{}", cfg.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("labgrader: config error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn daemon(cfg: Arc<Config>, parts: Parts) -> Result<ExitCode> {
    let native = crate::config::RunnerKind::Native;
    if !(parts.grader
        && (cfg.grader.runner == native
            || cfg.assignments.values().any(|a| a.runner == Some(native))))
    {
        // Forked in `run` before the configuration was read: not needed.
        crate::sandbox::native::spawner::release_prefork();
    }
    runtime()?.block_on(async move {
        let shutdown = crate::daemon::shutdown_on_signals()?;
        crate::daemon::run(cfg, parts, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `labgrader sandbox --job-dir DIR`: exit 0 once `DIR/outcome.json` is
/// written (whatever test_all did); an error is a grader fault.
fn sandbox(cfg: &Config, dir: &std::path::Path) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let shutdown = crate::daemon::shutdown_on_signals()?;
        let out = crate::sandbox::native::job::run_job_dir(&cfg.native, dir, &shutdown)
            .await
            .with_context(|| format!("sandbox job {}", dir.display()))?;
        println!("{}", serde_json::to_string(&out.termination)?);
        Ok(ExitCode::SUCCESS)
    })
}

/// `labgrader sandbox --serve DIR`: a Slurm pilot
/// ([`crate::sandbox::slurm::pilot`]), inside the allocation it names.
fn pilot(args: &SandboxArgs, shared: &std::path::Path) -> Result<ExitCode> {
    let pilot_id = std::env::var("SLURM_JOB_ID")
        .ok()
        .and_then(|s| s.parse().ok())
        .context("--serve runs as a Slurm job's script ($SLURM_JOB_ID)")?;
    let a = crate::sandbox::slurm::pilot::PilotArgs {
        shared_dir: shared.into(),
        pilot_id,
        slots: args.slots.max(1),
        idle: std::time::Duration::from_secs(args.idle),
        lifetime: std::time::Duration::from_secs(args.lifetime),
        bin: std::env::current_exe().context("cannot find the labgrader binary")?,
    };
    runtime()?.block_on(async {
        let shutdown = crate::daemon::shutdown_on_signals()?;
        crate::sandbox::slurm::pilot::serve(a, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn gitlab(cfg: &Config, cmd: GitlabCommand) -> Result<ExitCode> {
    use crate::gitlab::hooks::{self, Change, ProjectScope};
    runtime()?.block_on(async {
        let (api, token) = hooks::setup_context(cfg, crate::httpc::HttpClient::new())?;
        match cmd {
            GitlabCommand::InstallSystemHook {
                url,
                no_push_events,
            } => {
                let mut spec = hooks::HookSpec::pushes(&url, &token)?;
                if no_push_events {
                    spec.push_events = false;
                    spec.tag_push_events = false;
                }
                let outcome = hooks::ensure_system_hook(&api, &spec).await?;
                println!("system hook {}: {outcome}", spec.url);
                Ok(ExitCode::SUCCESS)
            }
            GitlabCommand::AddProjectHooks { namespace, url } => {
                let url = hooks::project_hook_url(cfg, url.as_deref())?;
                let spec = hooks::HookSpec::pushes(&url, &token)?;
                let scope = match namespace {
                    Some(ns) => ProjectScope::Namespace(ns),
                    None => ProjectScope::Membership,
                };
                let results = hooks::add_project_hooks(&api, &scope, &spec).await?;
                let (mut created, mut updated, mut failed) = (0, 0, 0);
                for r in &results {
                    match &r.outcome {
                        Ok(o) => {
                            if o.change == Change::Created {
                                created += 1;
                            } else {
                                updated += 1;
                            }
                            println!("{}: {o}", r.project);
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("labgrader: {}: {e}", r.project);
                        }
                    }
                }
                println!(
                    "{} projects: {created} hooks created, {updated} updated, {failed} failed",
                    results.len()
                );
                Ok(if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
        }
    })
}

fn queue(cfg: &Config, json: bool) -> Result<ExitCode> {
    let report = QueueReport::build(cfg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("spool {}", report.spool.display());
    for (s, n) in &report.counts {
        println!("  {:<9} {n}", s.dir_name());
    }
    if report.alerts_waiting > 0 {
        println!(
            "staff alerts waiting: {} (sent in one message, at most one per [alerts] window)",
            report.alerts_waiting
        );
    }
    if !report.held.is_empty() {
        println!("held until their test repository exists (oldest first):");
        for j in &report.held {
            println!(
                "  {}  {}  waits for {}  until {}",
                j.job_id,
                j.project,
                j.waits_for.as_deref().unwrap_or("?"),
                j.held_until.map(|t| t.to_rfc3339()).unwrap_or_default()
            );
        }
    }
    for (title, jobs) in [("waiting", &report.waiting), ("active", &report.active)] {
        if !jobs.is_empty() {
            println!("{title} (oldest first):");
            for j in jobs {
                let mut line = format!("  {}  {}", j.job_id, j.project);
                if j.attempt > 1 {
                    line.push_str(&format!("  attempt {}/{}", j.attempt, j.attempts_max));
                }
                if let Some(t) = j.next_try.filter(|t| *t > chrono::Utc::now()) {
                    line.push_str(&format!("  next try {}", t.to_rfc3339()));
                }
                if j.crashes > 0 {
                    line.push_str(&format!("  crashes {}", j.crashes));
                }
                if let Some(s) = &j.slurm {
                    line.push_str(&format!("  {s}"));
                }
                if let Some(e) = &j.last_error {
                    line.push_str(&format!("  last error: {e}"));
                }
                println!("{line}");
            }
        }
    }
    for b in &report.regrades {
        let state = if b.finished() { "finished" } else { "running" };
        println!(
            "regrade {} ({}): {}/{} done, {} failed, {state}",
            b.batch, b.assignment, b.done, b.total, b.failed
        );
    }
    if !report.deliveries_waiting.is_empty() {
        println!(
            "deliveries waiting (oldest first, at most {}):",
            QueueReport::DELIVERY_LIMIT
        );
        for d in &report.deliveries_waiting {
            let next = d.next_try_at.map(|t| t.to_rfc3339()).unwrap_or_default();
            match &d.reason {
                Some(r) => println!(
                    "  {}  attempts {}  next {next}  last error: {r}",
                    d.key, d.attempts
                ),
                None => println!("  {}  attempts {}  next {next}", d.key, d.attempts),
            }
        }
    }
    if !report.deliveries_dead.is_empty() {
        println!(
            "deliveries given up (dead/, at most {}):",
            QueueReport::DELIVERY_LIMIT
        );
        for d in &report.deliveries_dead {
            println!(
                "  {}  attempts {}  {}",
                d.key,
                d.attempts,
                d.reason.as_deref().unwrap_or("(no reason recorded)")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---- grader (issue #3): grade, regrade, replay, gradebook export ----

fn grade(cfg: &Config, args: GradeArgs) -> Result<ExitCode> {
    use std::io::Write;
    let runner = args
        .runner
        .as_deref()
        .map(str::parse::<crate::config::RunnerKind>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--runner: {e}"))?;
    let timeout = args
        .timeout
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let mut cfg = cfg.clone();
    if let Some(image) = args.image {
        cfg.docker.image = image;
    }
    let result = runtime()?.block_on(crate::grader::grade_local(
        &cfg,
        &args.student,
        &args.tests,
        runner,
        timeout,
        args.contract,
    ))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        std::io::stderr().write_all(&result.stdout.display_bytes())?;
    } else {
        out.write_all(&result.stdout.display_bytes())?;
    }
    writeln!(out, "{}", serde_json::to_string_pretty(&result)?)?;
    if !result.stderr.bytes.is_empty() {
        eprint!(
            "{}",
            String::from_utf8_lossy(&result.stderr.display_bytes())
        );
    }
    Ok(if result.grade_total.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn release(cfg: &Config, assignment: &str) -> Result<ExitCode> {
    let spool = existing_spool(cfg)?;
    let gb = crate::gradebook::Gradebook::open(&crate::gradebook::path_in(&cfg.spool.dir))?;
    let r = crate::grader::release::release(cfg, &spool, &gb, assignment, None)?;
    println!(
        "{assignment}: {} latest results with after_due_date tests; {} deliveries queued \
         (the others were released before)",
        r.jobs, r.queued
    );
    Ok(ExitCode::SUCCESS)
}

fn export_format(f: ExportFormat) -> crate::gradebook::Format {
    match f {
        ExportFormat::Csv => crate::gradebook::Format::Csv,
        ExportFormat::Json => crate::gradebook::Format::Json,
    }
}

fn gradebook_export(cfg: &Config, args: ExportArgs) -> Result<ExitCode> {
    use crate::gradebook::{Filter, Gradebook, Select};
    let path = crate::gradebook::path_in(&cfg.spool.dir);
    if !path.exists() {
        anyhow::bail!(
            "no gradebook at {} (nothing graded yet, or a different [spool] dir)",
            path.display()
        );
    }
    let gb = Gradebook::open(&path)?;
    let mut args = args;
    // `--latest` and `--best` overlapped `--policy`: now its aliases.
    for (old, on, policy) in [
        ("--latest", args.latest, "latest"),
        ("--best", args.best, "best"),
    ] {
        if on {
            eprintln!(
                "note: {old} is deprecated and means --policy {policy} (one row per student and assignment)"
            );
            args.policy = Some(policy.to_string());
        }
    }
    if let Some(policy) = &args.policy {
        use crate::policy::export::{
            ExportPolicy, rows_from_results, select_rows, write_csv, write_json,
        };
        let policy: ExportPolicy = policy.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let filter = Filter {
            project: args.project,
            assignment: args.assignment,
        };
        let results = if args.prefer_regrades {
            gb.select_current(Select::All, &filter)?
        } else {
            gb.select(Select::All, &filter)?
        };
        let rows = select_rows(&rows_from_results(&results), policy);
        if args.tests {
            // Each chosen row's job, its tests under the row's student.
            let by_id: std::collections::HashMap<&str, &crate::result::JobResult> =
                results.iter().map(|r| (r.job_id.as_str(), r)).collect();
            let mut tests = Vec::new();
            for row in &rows {
                let Some(job) = by_id.get(row.job.as_str()) else {
                    continue;
                };
                for mut t in gb.tests_of(std::slice::from_ref(*job))? {
                    t.student = row.username.clone();
                    tests.push(t);
                }
            }
            crate::gradebook::write_tests(
                &tests,
                export_format(args.format),
                &mut std::io::stdout().lock(),
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        let out = std::io::stdout().lock();
        // Staff exports: hidden keys included.
        match args.format {
            ExportFormat::Csv => write_csv(out, &rows, true)?,
            ExportFormat::Json => write_json(out, &rows, true)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let select = Select::All;
    let format = export_format(args.format);
    let filter = Filter {
        project: args.project,
        assignment: args.assignment,
    };
    let mut out = std::io::stdout().lock();
    if args.tests {
        gb.export_tests(select, &filter, format, &mut out)?;
    } else {
        gb.export(select, &filter, format, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}
