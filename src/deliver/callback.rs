//! The callback destination: a signed JSON `POST` of the result to a web app.
//!
//! Owns the documented body (README, "Delivery"), its signature
//! (`X-Labgrader-Signature: sha256=<hex HMAC-SHA256 of the body>`) and how
//! the receiver's answer is read. The body is built once, when the result is
//! queued, and stored as text so every attempt sends the same bytes. It
//! never puts the secret in the record, never sends the stderr unless
//! `callback.include_stderr`, nor the hidden keys unless
//! `callback.include_hidden`.

use hmac::{KeyInit, Mac};
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Attempt, Ctx, Destination, Payload, Record};
use crate::config::Config;
use crate::event::Event;
use crate::httpc::HttpError;
use crate::result::Captured;
use crate::result::JobResult;

/// Schema number of the callback body (`"schema"` in it).
pub const BODY_SCHEMA: u32 = 1;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Labgrader-Signature";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackPayload {
    /// The JSON body, exactly as sent and signed.
    pub body: String,
}

/// Text of a captured stream as JSON can carry it: invalid UTF-8 becomes
/// U+FFFD; the truncation mark is included when output was cut.
fn text(c: &Captured) -> String {
    String::from_utf8_lossy(&c.display_bytes()).into_owned()
}

/// The callback body of a finished job (field by field in the README).
pub fn body(cfg: &Config, event: &Event, result: &JobResult) -> serde_json::Value {
    let mut b = json!({
        "schema": BODY_SCHEMA,
        "job_id": result.job_id,
        "idempotency_key": super::idempotency_key(&result.job_id, Destination::Callback),
        "project": result.project,
        "project_id": event.project.id,
        "ref": result.git_ref,
        "pusher": {
            "id": event.pusher.id,
            "username": event.pusher.username,
            "name": event.pusher.name,
            "email": event.pusher.email,
        },
        "student_sha": result.student_sha,
        "tests_sha": result.tests_sha,
        "status": result.status.as_str(),
        "reason": result.reason,
        "grade_total": result.grade_total,
        "summary": result.summary,
        "received_at": result.received_at,
        "started_at": result.started_at,
        "ended_at": result.ended_at,
        "runner": result.runner,
        "stdout": text(&result.stdout),
        "stdout_truncated": result.stdout.truncated,
        "stdout_utf8": std::str::from_utf8(&result.stdout.bytes).is_ok(),
    });
    let m = b.as_object_mut().expect("object");
    if cfg.callback.include_hidden {
        m.insert("hidden".into(), json!(result.hidden));
    }
    if cfg.callback.include_stderr {
        m.insert("stderr".into(), json!(text(&result.stderr)));
        m.insert("stderr_truncated".into(), json!(result.stderr.truncated));
    }
    b
}

pub(crate) fn record(cfg: &Config, event: &Event, result: &JobResult) -> Record {
    let body = serde_json::to_string(&body(cfg, event, result)).expect("json serializes");
    Record::new(
        &result.job_id,
        Destination::Callback,
        &result.project,
        &result.student_sha,
        Payload::Callback(CallbackPayload { body }),
    )
}

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

pub(crate) async fn send(ctx: &Ctx, rec: &Record, p: &CallbackPayload) -> Attempt {
    let cfg = &ctx.cfg.callback;
    if cfg.url.is_empty() {
        return Attempt::fatal("callback.url is no longer configured");
    }
    let sig = ctx
        .cfg
        .secrets
        .callback_secret
        .as_ref()
        .map(|s| signature(s.expose().as_bytes(), p.body.as_bytes()));
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
    match ctx
        .http
        .request(
            Method::POST,
            &cfg.url,
            &headers,
            Some(p.body.clone().into_bytes()),
            cfg.timeout.get(),
        )
        .await
    {
        Ok(resp) => super::classify_http(&resp, "the callback receiver"),
        Err(e @ (HttpError::Url { .. } | HttpError::Header { .. })) => {
            Attempt::fatal(format!("callback.url: {e}"))
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
