//! Builds `lg-init` (src/sandbox/init/), the helper every sandbox runs as
//! its first process, as a separate static executable with the same
//! `rustc` cargo uses, and leaves it in `$OUT_DIR/lg-init` for
//! `sandbox::init::BINARY` to embed. std only: no crates to build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let src = PathBuf::from("src/sandbox/init");
    for f in [
        "main.rs",
        "args.rs",
        "broker.rs",
        "env.rs",
        "fail.rs",
        "layout.rs",
        "processes.rs",
        "results.rs",
        "symlinks.rs",
        "sys.rs",
    ] {
        println!("cargo:rerun-if-changed={}", src.join(f).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    let status = Command::new(&rustc)
        .args([
            "--edition",
            "2024",
            "--crate-name",
            "lg_init",
            "--crate-type",
            "bin",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-C", "codegen-units=1"])
        .arg("-o")
        .arg(out.join("lg-init"))
        .arg(src.join("main.rs"))
        .status()
        .expect("run rustc for lg-init");
    assert!(
        status.success(),
        "rustc failed to build lg-init (src/sandbox/init)"
    );
}
