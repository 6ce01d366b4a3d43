//! `lg-init` run for real, as root on the host (no namespace: the runners'
//! own tests cover that), with unusual ids so that its `kill(-1)` as the
//! student or the harness can reach nothing but this test's processes.
//! Covers: the layout of both contracts, the broker (`run-as-student`
//! status, fds, environment, cleanup), and the results stream.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};

use common::files::write_sh;
use labgrader::sandbox::init;
use labgrader::sandbox::results_stream;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

struct Box_ {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

fn sandbox() -> Box_ {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lg = init::install(&dir.path().join("lg")).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::hard_link(&lg, bin.join("run-as-student")).unwrap();
    for d in ["in/workspace/data", "in/tests", "ws", "harness"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    Box_ { dir, bin: lg }
}

#[allow(non_snake_case)]
fn run(
    b: &Box_,
    contract: &str,
    (STUDENT, HARNESS): (u32, u32),
) -> (std::process::Output, Vec<u8>) {
    let d = b.dir.path();
    let (rd, wr) = nix::unistd::pipe().unwrap();
    use std::os::fd::{AsRawFd, IntoRawFd};
    let wr_fd = wr.as_raw_fd();
    let mut cmd = Command::new(&b.bin);
    cmd.args(["--contract", contract])
        .arg("--workspace")
        .arg(d.join("ws"))
        .arg("--harness")
        .arg(d.join("harness"))
        .arg("--bin-dir")
        .arg(d.join("bin"))
        .arg("--copy-from")
        .arg(d.join("in"))
        .arg("--test-paths")
        .arg(d.join("test-paths"))
        .args(["--student", &format!("{STUDENT}:{STUDENT}")])
        .args(["--harness-id", &format!("{HARNESS}:{HARNESS}")])
        .args(["--results-fd", &wr_fd.to_string()])
        .args(["--rlimit", "nproc=64"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LABGRADER_JOB_ID", "j1")
        .env("SECRET_OF_HARNESS", "x")
        .stdin(Stdio::null());
    // The fd must survive exec: clear its close-on-exec flag.
    nix::fcntl::fcntl(
        &wr,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // The binary was just written; a fork in another test thread may still
    // hold its write descriptor for a moment (ETXTBSY).
    let child = (0..50)
        .find_map(|_| match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            }
            r => Some(r.unwrap()),
        })
        .expect("lg-init stayed busy (ETXTBSY)");
    drop(wr);
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut f = std::fs::File::from(rd);
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    });
    let out = child.wait_with_output().unwrap();
    let _ = wr_fd.into_raw_fd();
    (out, reader.join().unwrap())
}

#[test]
#[allow(non_snake_case)]
fn lg_init_stdout_contract_lays_out_and_runs_as_the_student() {
    let (STUDENT, HARNESS) = (61234, 61233);
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let b = sandbox();
    let d = b.dir.path();
    write_sh(
        &d.join("in/workspace/test_all"),
        "id -u\necho swapped > data/expected.txt 2>/dev/null && echo swap: yes || echo swap: no\n\
         mv data/expected.txt data/x 2>/dev/null && echo rename: yes || echo rename: no\n\
         echo built > student.o && echo build: yes\n\
         echo $LABGRADER_WORKSPACE\nexit 3\n",
    );
    std::fs::write(d.join("in/workspace/data/expected.txt"), "42\n").unwrap();
    std::fs::write(d.join("in/workspace/main.c"), "int main;\n").unwrap();
    std::fs::write(d.join("test-paths"), "test_all\0data\0data/expected.txt\0").unwrap();
    let (out, stream) = run(&b, "stdout", (STUDENT, HARNESS));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!(
            "{STUDENT}\nswap: no\nrename: no\nbuild: yes\n{}\n",
            d.join("ws").display()
        )
    );
    let ws = d.join("ws");
    let m = |p: &str| std::fs::symlink_metadata(ws.join(p)).unwrap();
    assert_eq!((m("").uid(), m("").mode() & 0o7777), (HARNESS, 0o1777));
    assert_eq!(
        (m("data").uid(), m("data").mode() & 0o7777),
        (HARNESS, 0o1777)
    );
    assert_eq!(m("data/expected.txt").mode() & 0o222, 0);
    assert_eq!(m("main.c").uid(), STUDENT);
    // The staged input was copied, not moved.
    assert!(d.join("in/workspace/main.c").exists());
    let r = results_stream::parse(&stream).unwrap();
    assert!(r.files.is_empty());
}

#[test]
#[allow(non_snake_case)]
fn lg_init_trusted_contract_brokers_run_as_student_and_sends_results() {
    let (STUDENT, HARNESS) = (61236, 61235);
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let b = sandbox();
    let d = b.dir.path();
    // The student leaves a background writer behind and tries the results.
    write_sh(
        &d.join("in/workspace/student.sh"),
        "id -u\necho \"env: $(env | grep -c SECRET_OF_HARNESS) $HOME\"\n\
         echo forged > \"$1\"/results.json 2>/dev/null && echo wrote: yes || echo wrote: no\n\
         (sleep 30 &)\nexit 3\n",
    );
    write_sh(
        &d.join("in/tests/test_all"),
        "id -u\numask\nrun-as-student ./student.sh \"$LABGRADER_RESULTS\"; echo status=$?\n\
         run-as-student sh -c 'kill -9 $$'; echo status=$?\n\
         run-as-student nonexistent-cmd 2>/dev/null; echo status=$?\n\
         echo '{\"score\": 1}' > \"$LABGRADER_RESULTS/results.json\"\n\
         ln -s /etc/passwd \"$LABGRADER_RESULTS/link\"\n",
    );
    std::fs::write(d.join("test-paths"), "").unwrap();
    let (out, stream) = run(&b, "trusted", (STUDENT, HARNESS));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        format!(
            "{HARNESS}\n0077\n{STUDENT}\nenv: 0 {}\nwrote: no\nstatus=3\nstatus=137\nstatus=127\n",
            d.join("ws").display()
        )
    );
    let r = results_stream::parse(&stream).unwrap();
    assert_eq!(
        r.files,
        vec![("results.json".into(), b"{\"score\": 1}\n".to_vec())]
    );
    let h = std::fs::symlink_metadata(d.join("harness")).unwrap();
    assert_eq!((h.uid(), h.mode() & 0o777), (HARNESS, 0o700));
    let t = std::fs::symlink_metadata(d.join("harness/tests/test_all")).unwrap();
    assert_eq!((t.uid(), t.mode() & 0o777), (0, 0o555));
    // Nothing of the student survived its call.
    let ps = Command::new("pgrep")
        .args(["-u", &STUDENT.to_string()])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
