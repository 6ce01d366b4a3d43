//! The accept loop: at most [`MAX_CONNECTIONS`] connections at once, each
//! served by hyper with header timeouts, all drained (within a grace) at
//! shutdown. It never reads a request itself: [`Hook::route`] does.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::state::{Hook, prune_markers};
use crate::config::Config;
use crate::spool::Spool;

/// Connections served at once (with `max_body` this bounds the memory held
/// by bodies in flight); more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// Time allowed to send the request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// In-flight connections get this long to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where GitLab posts its hooks.
pub const HOOK_PATH: &str = "/hooks/gitlab";

/// Serve GitLab webhooks on `listener` until `shutdown` fires.
pub async fn serve(
    cfg: Arc<Config>,
    spool: Arc<Spool>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The web view (off without `[web] public_url`) answers its own paths.
    let web = crate::web::Web::start(cfg.clone(), spool.clone());
    let hook = Arc::new(Hook::start(cfg, spool)?);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, path = HOOK_PATH, test_repos = hook.repos.method(), "hook server listening");
    tokio::spawn(prune_markers(hook.clone(), shutdown.clone()));
    tokio::spawn(super::held::watch_held(hook.clone(), shutdown.clone()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let hook = hook.clone();
        let web = web.clone();
        let stop = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let hook = hook.clone();
                let web = web
                    .clone()
                    .filter(|_| crate::web::handles(req.uri().path()));
                async move {
                    match web {
                        Some(web) => Ok::<_, Infallible>(web.route(req).await),
                        None => Ok::<_, Infallible>(hook.route(req).await),
                    }
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        while conns.try_join_next().is_some() {}
    }
    tracing::info!("hook server stopping; finishing requests in flight");
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!("connections still open after the shutdown grace; closing them");
    }
    Ok(())
}
