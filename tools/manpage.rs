//! Writes labgrader's man pages, generated from the clap definitions in
//! `src/cli.rs` (`labgrader.1` and one page per subcommand,
//! `labgrader-hook.1`, ...), into the directory given as the argument.
//! `scripts/package` runs it and the Debian package ships the pages.
//!
//!     cargo run --example manpage -- target/debian-staging/man

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .expect("usage: manpage OUTPUT-DIRECTORY");
    std::fs::create_dir_all(&dir)?;
    clap_mangen::generate_to(labgrader::cli::Cli::command(), &dir)
}
