//! The hook server (issue #2): to be built.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::spool::Spool;

/// Serve GitLab webhooks on `listener` until `shutdown` fires.
pub async fn serve(
    _cfg: Arc<Config>,
    _spool: Arc<Spool>,
    _listener: tokio::net::TcpListener,
    _shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("the hook server is not built yet")
}
