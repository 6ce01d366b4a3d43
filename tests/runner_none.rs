//! The `none` runner against the cases of the hostile table that do not
//! need isolation: it must still cap output and enforce the timeout.

mod common;

use labgrader::sandbox::none::NoneRunner;

#[tokio::test]
async fn none_runner_caps_stdout_flood() {
    common::hostile::run_case(&NoneRunner, "stdout_flood").await;
}

#[tokio::test]
async fn none_runner_kills_infinite_loop_at_timeout() {
    common::hostile::run_case(&NoneRunner, "infinite_loop").await;
}
