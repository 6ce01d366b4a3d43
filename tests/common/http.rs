//! A real HTTP server on loopback for the tests that need a peer to talk
//! to (callback receivers, GitLab's API as its docs describe it): it
//! records every request and answers from a script the test gives. It
//! never decides an answer itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One request the test server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The query string, without `?` (empty when there is none).
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// The request target: the path and, when there is one, `?query`.
    pub fn target(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The answer to one request: status, headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, String);
pub type Responder = Arc<dyn Fn(&Seen, usize) -> Answer + Send + Sync>;
/// A responder that builds the whole response itself (any header names).
pub type Handler = Arc<dyn Fn(&Seen, usize) -> hyper::Response<Full<Bytes>> + Send + Sync>;

/// A real HTTP server on loopback that records every request and answers
/// with `responder(request, index)`. It serves until [`TestServer::shutdown`]
/// or the end of the test's runtime (dropping it does not stop it).
pub struct TestServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Most requests handled at the same time.
    pub max_concurrent: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(responder: Responder) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, responder)
    }

    /// Like [`TestServer::start`], each answer held back by `delay`.
    pub async fn start_slow(responder: Responder, delay: Duration) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, answering(responder), delay)
    }

    /// Like [`TestServer::start`], with a [`Handler`] that builds each
    /// response.
    pub async fn start_with(handler: Handler) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler, Duration::ZERO)
    }

    /// Serve on `listener` (e.g. bound again to a port a test chose earlier).
    pub fn on(listener: TcpListener, responder: Responder) -> TestServer {
        Self::serve(listener, answering(responder), Duration::ZERO)
    }

    fn serve(listener: TcpListener, responder: Handler, delay: Duration) -> TestServer {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let now_concurrent = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (s, st) = (seen.clone(), stop.clone());
        let (maxc, nowc) = (max_concurrent.clone(), now_concurrent.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = st.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let (seen, responder) = (s.clone(), responder.clone());
                let (maxc, nowc) = (maxc.clone(), nowc.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, responder) = (seen.clone(), responder.clone());
                        let (maxc, nowc) = (maxc.clone(), nowc.clone());
                        async move {
                            let n = nowc.fetch_add(1, Ordering::SeqCst) + 1;
                            maxc.fetch_max(n, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            nowc.fetch_sub(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes().to_vec();
                            let req = Seen {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().unwrap_or("").to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                body,
                            };
                            let index = {
                                let mut g = seen.lock().unwrap();
                                g.push(req.clone());
                                g.len() - 1
                            };
                            Ok::<_, hyper::Error>(responder(&req, index))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            seen,
            max_concurrent,
            stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The [`Handler`] that answers with `responder`'s [`Answer`].
fn answering(responder: Responder) -> Handler {
    Arc::new(move |req, index| {
        let (status, headers, body) = responder(req, index);
        let mut resp = hyper::Response::builder().status(status);
        for (k, v) in headers {
            resp = resp.header(k, v);
        }
        resp.body(Full::new(Bytes::from(body))).unwrap()
    })
}
