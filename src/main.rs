//! The `labgrader` binary: parse arguments, hand over to the library.

fn main() -> std::process::ExitCode {
    labgrader::cli::main()
}
