//! A small HTTP(S) client for the outside services labgrader calls
//! (GitLab's REST API, callbacks, slurmrestd).
//!
//! Owns connection setup (rustls with the webpki roots, plain HTTP for
//! local test servers), a per-request timeout and a cap on response bodies.
//! It never retries: callers decide (deliveries retry from the outbox, not
//! from here) and never logs headers (they carry tokens).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Responses larger than this are cut off with an error (no service we
/// call answers with more).
pub const MAX_RESPONSE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid url `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("invalid header `{name}`")]
    Header { name: String },
    #[error("request to {url} timed out after {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("request to {url} failed: {message}")]
    Connect { url: String, message: String },
    #[error("response from {url} unreadable or over {MAX_RESPONSE} bytes: {message}")]
    Body { url: String, message: String },
}

/// A response read whole into memory.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as text for error messages, shortened.
    pub fn body_snippet(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let s = s.trim();
        if s.len() > 300 {
            let mut end = 300;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &s[..end])
        } else {
            s.to_string()
        }
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Cheap to clone; share one per process part.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        // Requests are small and answered at once: Nagle's algorithm would
        // hold a request's last segment for the server's delayed ACK (up
        // to 40 ms on a kept-alive connection), as reqwest and curl know.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(tls),
        }
    }

    /// Send one request and read the whole response, within `timeout`.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let uri: hyper::Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| HttpError::Url {
                    url: url.to_string(),
                    message: e.to_string(),
                })?;
        let mut req = hyper::Request::builder().method(method).uri(uri);
        let h = req.headers_mut().expect("fresh builder");
        for (name, value) in headers {
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| HttpError::Header {
                name: name.to_string(),
            })?;
            let v = HeaderValue::from_str(value).map_err(|_| HttpError::Header {
                name: name.to_string(),
            })?;
            h.insert(n, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| HttpError::Url {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        let work = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| HttpError::Connect {
                    url: url.to_string(),
                    message: error_chain(&e),
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| HttpError::Body {
                    url: url.to_string(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.to_string(),
                secs: timeout.as_secs(),
            })?
    }
}

/// hyper's errors hide their cause; show the whole chain on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
