//! What the HTTP benchmarks (`intake_bench`, `web_bench`) share: the
//! webhook token, the client that posts numbered pushes to the hook, the
//! figures of one run (requests, wall time, latencies) and the one line
//! they print for it. Included with `#[path]`; not a bench target itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The webhook token both benchmarks configure and send.
pub const TOKEN: &str = "bench-token";

/// One connection posting push number `next` (shared by every client)
/// until `end`, each built by `body`; the latency of each answer, every one
/// of which must be 202.
pub async fn post_pushes(
    addr: std::net::SocketAddr,
    next: Arc<AtomicUsize>,
    end: usize,
    body: fn(usize) -> Vec<u8>,
) -> Vec<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut lat = Vec::new();
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= end {
            return lat;
        }
        let req = hyper::Request::post("/hooks/gitlab")
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("x-gitlab-event", "Push Hook")
            .header("x-gitlab-token", TOKEN)
            .header("idempotency-key", format!("bench-{n}"))
            .body(Full::new(Bytes::from(body(n))))
            .unwrap();
        let t = Instant::now();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        lat.push(t.elapsed());
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&b));
    }
}

/// `n` requests answered in `secs`, each with its latency.
pub struct Figures {
    pub n: usize,
    pub secs: f64,
    pub lat: Vec<Duration>,
}

impl Figures {
    pub fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }

    /// The `p` quantile of the latencies (0.99 = p99), in milliseconds.
    pub fn pct(&self, p: f64) -> f64 {
        let mut l = self.lat.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1000.0
    }

    /// `what`, the rate, p50 and p99, in columns `width` wide for `what`.
    pub fn line(&self, what: &str, width: usize) -> String {
        format!(
            "{what:<width$} {:>8.0} /s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} in {:.2} s)",
            self.rate(),
            self.pct(0.50),
            self.pct(0.99),
            self.n,
            self.secs
        )
    }
}
