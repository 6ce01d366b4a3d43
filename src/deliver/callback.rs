//! The callback sender: a signed JSON `POST` of the stored body to a web app.
//!
//! Owns the signature (`X-Labgrader-Signature: sha256=<hex HMAC-SHA256 of
//! the body>`), the request headers and how the receiver's answer is read.
//! The body itself is made once, at enqueue time, by [`super::render`]; this
//! sends it byte for byte. It never puts the secret in the record (it is
//! read from the config at send time) and never changes the body.

use hmac::{KeyInit, Mac};
use hyper::Method;

use super::attempt::{Attempt, classify_http};
use super::record::{CallbackPayload, Record};
use crate::config::Config;
use crate::httpc::{HttpClient, HttpError};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Labgrader-Signature";

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Check a received signature header in constant time (for receivers and tests).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = signature(secret, body);
    expected.as_bytes().ct_eq(header.trim().as_bytes()).into()
}

pub(super) async fn send(
    cfg: &Config,
    http: &HttpClient,
    rec: &Record,
    p: &CallbackPayload,
) -> Attempt {
    let secret = cfg.secrets.callback_secret.as_ref();
    // Staff alerts go to their own URL, read from the config like the other.
    let (url, key) = if rec.destination.is_alert() {
        (&cfg.alerts.callback_url, "alerts.callback_url")
    } else {
        (&cfg.callback.url, "callback.url")
    };
    let cfg = &cfg.callback;
    if url.is_empty() {
        return Attempt::fatal(format!("{key} is no longer configured"));
    }
    let sig = secret.map(|s| signature(s.expose().as_bytes(), p.body.as_bytes()));
    let attempt = rec.attempts.to_string();
    let user_agent = concat!("labgrader/", env!("CARGO_PKG_VERSION"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("User-Agent", user_agent),
        ("Idempotency-Key", rec.key.as_str()),
        ("X-Labgrader-Attempt", attempt.as_str()),
    ];
    if let Some(sig) = &sig {
        headers.push((SIGNATURE_HEADER, sig.as_str()));
    }
    match http
        .request(
            Method::POST,
            url,
            &headers,
            Some(p.body.clone().into_bytes()),
            cfg.timeout.get(),
        )
        .await
    {
        Ok(resp) => classify_http(&resp, "the callback receiver"),
        Err(e @ (HttpError::Url { .. } | HttpError::Header { .. })) => {
            Attempt::fatal(format!("{key}: {e}"))
        }
        Err(e) => Attempt::retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
    }
}
