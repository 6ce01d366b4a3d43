//! The grader daemon (issue #3): to be built.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::spool::Spool;

/// Grade jobs from `spool` until `shutdown` fires.
pub async fn run(
    _cfg: Arc<Config>,
    _spool: Arc<Spool>,
    _shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("the grader daemon is not built yet")
}
