//! Files the tests lay out by hand: scripts and plain files, parent
//! directories created. Only writes below the paths it is given.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Write `text` to `p` with mode `mode`, creating the parent directories.
pub fn write_mode(p: &Path, text: &str, mode: u32) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Write an executable (0755) file, creating the parent directories.
pub fn write_exec(p: &Path, text: &str) {
    write_mode(p, text, 0o755)
}

/// Write a plain file, creating the parent directories.
pub fn write_file(p: &Path, text: &str) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, text).unwrap();
}

/// An executable `#!/bin/sh` script with `body`.
pub fn write_sh(p: &Path, body: &str) {
    write_exec(p, &format!("#!/bin/sh\n{body}"))
}

/// The repository's root (the crate's manifest directory): where
/// `systemd/`, `scripts/` and `examples/` are read from.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
