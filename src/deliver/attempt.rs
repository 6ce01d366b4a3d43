//! What one send comes to: the answer a sender gives the worker.
//!
//! Owns [`Attempt`] (delivered, retry, or give up) and how HTTP receivers'
//! answers are read ([`classify_http`], `Retry-After`). The senders
//! ([`super::callback`], [`super::email`], [`super::status`]) decide an
//! attempt; the worker ([`super::worker`]) acts on it. Nothing here sends,
//! sleeps or touches the disk.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The outcome of one attempt, decided by the destination's sender.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The receiver has it. `detail` is kept in the receipt.
    Delivered { detail: String },
    /// Worth trying again (network, 408, 429, 5xx, SMTP 4xx).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Will never succeed as it stands: dead at once.
    Fatal { error: String },
}

impl Attempt {
    pub fn retry(error: impl Into<String>) -> Attempt {
        Attempt::Retry {
            error: error.into(),
            retry_after: None,
        }
    }
    pub fn fatal(error: impl Into<String>) -> Attempt {
        Attempt::Fatal {
            error: error.into(),
        }
    }
}

/// How HTTP receivers' answers are read (callback and GitLab): 2xx done;
/// 408, 429, 5xx retry (with `Retry-After`); anything else is final.
pub fn classify_http(resp: &crate::httpc::Response, what: &str) -> Attempt {
    let status = resp.status;
    if status.is_success() {
        return Attempt::Delivered {
            detail: format!("HTTP {}", status.as_u16()),
        };
    }
    let error = format!("{what} answered {status}: {}", resp.body_snippet());
    if status.is_server_error()
        || status == hyper::StatusCode::TOO_MANY_REQUESTS
        || status == hyper::StatusCode::REQUEST_TIMEOUT
    {
        let retry_after = resp
            .headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        return Attempt::Retry { error, retry_after };
    }
    Attempt::Fatal { error }
}

/// `Retry-After`: delay in seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((when - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
