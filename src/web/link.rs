//! Result links: the token that opens one job's page (an HMAC-SHA256 of
//! the job id under the web secret) and the URL every delivery carries.
//!
//! The one owner of the token: deliveries make links with
//! [`result_url`], the pages check them with [`token_ok`]. A token opens
//! exactly one job's page; it cannot be derived from the job id without
//! the secret, and it is compared in constant time. Nothing here reads a
//! request or the disk.

use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::config::Config;

/// Hex characters of the HMAC kept in a link (128 bits).
pub const TOKEN_HEX: usize = 32;
/// What the MAC covers besides the job id, so a token is never the MAC
/// of something else signed with the same key.
const DOMAIN: &[u8] = b"labgrader web result page v1\0";

/// The token of `job_id`'s page under `secret`.
pub fn token(secret: &[u8], job_id: &str) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac takes keys of any length");
    mac.update(DOMAIN);
    mac.update(job_id.as_bytes());
    let mut hex = hex::encode(mac.finalize().into_bytes());
    hex.truncate(TOKEN_HEX);
    hex
}

/// Whether `given` is the token of `job_id` (constant time in its bytes).
pub fn token_ok(secret: &[u8], job_id: &str, given: &str) -> bool {
    let expected = token(secret, job_id);
    // Length is not secret (every token has TOKEN_HEX characters).
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// `<public_url>/jobs/<job_id>?t=<token>` when the web view is on (and
/// has its secret), else `None`: deliveries then carry no link.
pub fn result_url(cfg: &Config, job_id: &str) -> Option<String> {
    if !cfg.web.enabled() {
        return None;
    }
    let secret = cfg.secrets.web_secret.as_ref()?;
    Some(format!(
        "{}/jobs/{job_id}?t={}",
        cfg.web.base(),
        token(secret.expose().as_bytes(), job_id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_job_only() {
        let t = token(b"0123456789abcdef", "01JOB");
        assert_eq!(t.len(), TOKEN_HEX);
        assert!(token_ok(b"0123456789abcdef", "01JOB", &t));
        assert!(!token_ok(b"0123456789abcdef", "01JOC", &t));
        assert!(!token_ok(b"another secret!!", "01JOB", &t));
        assert!(!token_ok(b"0123456789abcdef", "01JOB", &t[..TOKEN_HEX - 1]));
        assert!(!token_ok(b"0123456789abcdef", "01JOB", ""));
        let mut flipped = t.clone().into_bytes();
        flipped[5] = if flipped[5] == b'0' { b'1' } else { b'0' };
        assert!(!token_ok(
            b"0123456789abcdef",
            "01JOB",
            std::str::from_utf8(&flipped).unwrap()
        ));
        assert!(!token_ok(b"0123456789abcdef", "01JOB", &t.to_uppercase()));
    }

    #[test]
    fn no_link_while_the_web_view_is_off() {
        let mut cfg = Config::default();
        assert_eq!(result_url(&cfg, "J"), None);
        cfg.web.public_url = "https://g.example.edu/".into();
        cfg.secrets.web_secret = Some(crate::config::Secret::new("0123456789abcdef"));
        let url = result_url(&cfg, "J").unwrap();
        assert!(url.starts_with("https://g.example.edu/jobs/J?t="), "{url}");
    }
}
