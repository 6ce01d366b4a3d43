//! The email sender: the stored message, mailed to the pusher and to
//! every verified co-author.
//!
//! Owns the recipient lookup (the event's email, else the public address
//! on GitLab's user record, else `email.address_template`; GitLab's
//! private `email` is never used), one message per recipient (never Cc: a
//! recipient never sees another's address; the record remembers who has
//! theirs, so a retry sends only the missing ones), the MIME message (a
//! UTF-8 text/plain body in quoted-printable, which keeps every line as
//! printed; a stable Message-ID per recipient derived from the stored one)
//! and the transports (SMTP with opportunistic or required STARTTLS,
//! SMTPS, AUTH, or the local sendmail). The subject and text are made at
//! enqueue time by [`super::render`]. It never writes the SMTP password to
//! disk, and never puts stored text anywhere but the subject and the
//! encoded body.

use std::time::Duration;

use super::attempt::Attempt;
use super::record::{EmailPayload, Record};
use super::render::{fill, usable};
use crate::config::{Config, StartTls};
use crate::gitlab::GitlabApi;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{
    Address, AsyncSendmailTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("email.url `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("email.url `{url}`: cannot set up TLS: {message}")]
    Tls { url: String, message: String },
}

/// The Message-ID of the copy for co-author number `n` (from 1): the
/// pusher's id with `.n` added to its left part, stable across attempts.
fn co_author_message_id(base: &str, n: usize) -> String {
    match base.split_once('@') {
        Some((left, right)) => format!("{left}.{n}@{right}"),
        None => format!("{base}.{n}"),
    }
}

/// Build the MIME message to one recipient.
pub fn build_message(
    from: &Mailbox,
    to: Mailbox,
    p: &EmailPayload,
    message_id: &str,
) -> Result<Message, String> {
    let text = Body::new_with_encoding(p.text.clone(), ContentTransferEncoding::QuotedPrintable)
        .map_err(|_| "cannot encode the message body".to_string())?;
    let text_part = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(text);
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(p.subject.clone())
        .date(p.date.into())
        .message_id(Some(message_id.to_string()))
        .user_agent(concat!("labgrader/", env!("CARGO_PKG_VERSION")).to_string());
    let built = match &p.raw_stdout_hex {
        None => builder.singlepart(text_part),
        Some(h) => {
            let raw = hex::decode(h).map_err(|e| format!("corrupt raw stdout in record: {e}"))?;
            let attachment = Attachment::new("stdout.txt".to_string()).body(
                raw,
                ContentType::parse("application/octet-stream").expect("static content type"),
            );
            builder.multipart(
                MultiPart::mixed()
                    .singlepart(text_part)
                    .singlepart(attachment),
            )
        }
    };
    built.map_err(|e| format!("cannot build the message: {e}"))
}

/// The configured way to send mail.
pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Sendmail(AsyncSendmailTransport<Tokio1Executor>),
}

/// `host` and `port` of `smtp://host[:port]` (IPv6 in brackets).
fn host_port(rest: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return None;
    }
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((rest.to_string(), default_port)),
    }
}

impl Mailer {
    /// `None` when `email.url` is empty (no email).
    pub fn from_config(cfg: &Config) -> Result<Option<Mailer>, EmailError> {
        let e = &cfg.email;
        let url = e.url.trim();
        if url.is_empty() {
            return Ok(None);
        }
        if url == "sendmail" {
            return Ok(Some(Mailer::Sendmail(AsyncSendmailTransport::<
                Tokio1Executor,
            >::new())));
        }
        let bad = |message: &str| EmailError::Url {
            url: url.to_string(),
            message: message.to_string(),
        };
        let (wrapper, rest, default_port) = if let Some(r) = url.strip_prefix("smtps://") {
            (true, r, 465)
        } else if let Some(r) = url.strip_prefix("smtp://") {
            (false, r, 25)
        } else {
            return Err(bad(
                "must be smtp://HOST[:PORT], smtps://HOST[:PORT] or sendmail",
            ));
        };
        let (host, port) = host_port(rest, default_port)
            .ok_or_else(|| bad("expected HOST or HOST:PORT after the scheme"))?;
        let params = TlsParameters::new(host.clone()).map_err(|err| EmailError::Tls {
            url: url.to_string(),
            message: err.to_string(),
        })?;
        let tls = match (wrapper, e.starttls) {
            (true, _) => Tls::Wrapper(params),
            (false, StartTls::Required) => Tls::Required(params),
            (false, StartTls::Opportunistic) => Tls::Opportunistic(params),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(e.timeout.get()));
        if !e.username.is_empty() {
            let password = cfg
                .secrets
                .smtp_password
                .as_ref()
                .map(|s| s.expose().to_string())
                .unwrap_or_default();
            b = b.credentials(Credentials::new(e.username.clone(), password));
        }
        Ok(Some(Mailer::Smtp(b.build())))
    }

    async fn send(&self, msg: Message, timeout: Duration) -> Attempt {
        match self {
            Mailer::Smtp(t) => match t.send(msg).await {
                Ok(resp) => Attempt::Delivered {
                    detail: format!(
                        "SMTP {} {}",
                        resp.code(),
                        resp.message().collect::<Vec<_>>().join(" ")
                    ),
                },
                Err(e) => classify_smtp(&e),
            },
            Mailer::Sendmail(t) => match tokio::time::timeout(timeout, t.send(msg)).await {
                Ok(Ok(())) => Attempt::Delivered {
                    detail: "handed to sendmail".into(),
                },
                Ok(Err(e)) => Attempt::retry(format!("sendmail failed: {e}")),
                Err(_) => Attempt::retry(format!(
                    "sendmail did not finish within {} s",
                    timeout.as_secs()
                )),
            },
        }
    }
}

/// SMTP 5xx refusals are final, except authentication trouble (ours to fix
/// in the config, then the retries go through); everything else is retried.
fn classify_smtp(e: &lettre::transport::smtp::Error) -> Attempt {
    let code = e.status().map(|c| c.to_string());
    let auth_trouble = matches!(code.as_deref(), Some("530" | "534" | "535" | "538"));
    if e.is_permanent() && !auth_trouble {
        Attempt::fatal(format!("the SMTP server refused the message: {e}"))
    } else {
        Attempt::retry(format!("SMTP: {e}"))
    }
}

/// The pusher's address: the event's email, else the public address on
/// GitLab's user record (never the private one), else the address
/// template. `Err` is the attempt's outcome (retry or dead).
async fn recipient(
    cfg: &Config,
    gitlab: Option<&GitlabApi>,
    p: &EmailPayload,
) -> Result<Address, Attempt> {
    if let Some(a) = usable(p.event_email.as_deref()) {
        return Ok(a);
    }
    let mut looked_up = "no GitLab token to look the user up";
    if let (Some(api), Some(id)) = (gitlab, p.pusher_id) {
        match api.user(id).await {
            Ok(Some(u)) => {
                if let Some(a) = usable(u.public_address()) {
                    return Ok(a);
                }
                looked_up = "GitLab's user record shows no public email";
            }
            Ok(None) => looked_up = "GitLab knows no such user",
            Err(e) if e.is_transient() => {
                return Err(Attempt::retry(format!(
                    "cannot look up GitLab user {id}: {e}"
                )));
            }
            Err(e) => {
                tracing::warn!(user_id = id, error = %e, "GitLab user lookup failed; trying the address template");
                looked_up = "the GitLab user lookup failed";
            }
        }
    } else if gitlab.is_some() {
        looked_up = "the event has no user id to look up";
    }
    let template = &cfg.email.address_template;
    if let Some(user) = p.username.as_deref().filter(|u| !u.is_empty())
        && !template.is_empty()
    {
        let filled = fill(template, &[("username", user)]);
        return filled.parse().map_err(|e| {
            Attempt::fatal(format!(
                "email.address_template gives `{filled}` for {user}, not an address: {e}"
            ))
        });
    }
    Err(Attempt::fatal(format!(
        "no email address for pusher {}: the event has none, {looked_up}, and {}",
        p.username.as_deref().unwrap_or("(unknown)"),
        if template.is_empty() {
            "email.address_template is empty"
        } else {
            "the event has no username for email.address_template"
        }
    )))
}

/// Send one message to the pusher and one to each co-author, skipping
/// those `p.delivered_to` already lists (and adding each one accepted now).
/// Delivered once everyone has theirs; otherwise the first retryable
/// failure (so the rest are tried again), else the first final one.
pub(super) async fn send(
    cfg: &Config,
    mailer: Option<&Mailer>,
    gitlab: Option<&GitlabApi>,
    rec: &Record,
    p: &mut EmailPayload,
) -> Attempt {
    let Some(mailer) = mailer else {
        return Attempt::fatal("email.url is no longer configured");
    };
    let from: Mailbox = match cfg.email.from.parse() {
        Ok(m) => m,
        // The config is wrong for every message: keep retrying until fixed.
        Err(e) => {
            return Attempt::retry(format!(
                "email.from `{}` is not an address: {e}",
                cfg.email.from
            ));
        }
    };
    let mut failures: Vec<Attempt> = Vec::new();
    let mut targets: Vec<(Mailbox, String)> = Vec::new();
    match recipient(cfg, gitlab, p).await {
        Ok(a) => targets.push((
            Mailbox::new(p.display_name.clone().filter(|n| !n.is_empty()), a),
            p.message_id.clone(),
        )),
        Err(outcome) => failures.push(outcome),
    }
    for (i, addr) in p.co_authors.iter().enumerate() {
        // Parsed again: the record is read back from disk.
        if let Some(a) = usable(Some(addr))
            && !targets.iter().any(|(m, _)| m.email == a)
        {
            targets.push((
                Mailbox::new(None, a),
                co_author_message_id(&p.message_id, i + 1),
            ));
        }
    }
    let mut details = Vec::new();
    for (to, message_id) in targets {
        let addr = to.email.to_string();
        if p.delivered_to.contains(&addr) {
            continue;
        }
        tracing::debug!(job_id = %rec.job_id, to = %to, "sending email");
        let msg = match build_message(&from, to, p, &message_id) {
            Ok(m) => m,
            Err(e) => {
                failures.push(Attempt::fatal(e));
                continue;
            }
        };
        match mailer.send(msg, cfg.email.timeout.get()).await {
            Attempt::Delivered { detail } => {
                p.delivered_to.push(addr);
                details.push(detail);
            }
            failed => failures.push(failed),
        }
    }
    if let Some(i) = failures
        .iter()
        .position(|f| matches!(f, Attempt::Retry { .. }))
    {
        return failures.swap_remove(i);
    }
    if let Some(f) = failures.into_iter().next() {
        return f;
    }
    Attempt::Delivered {
        detail: if details.is_empty() {
            "every recipient had it already".into()
        } else {
            details.join("; ")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls() {
        assert_eq!(
            host_port("mail.example.edu", 25),
            Some(("mail.example.edu".into(), 25))
        );
        assert_eq!(
            host_port("127.0.0.1:2525/", 25),
            Some(("127.0.0.1".into(), 2525))
        );
        assert_eq!(host_port("[::1]:26", 25), Some(("::1".into(), 26)));
        assert_eq!(host_port("[::1]", 465), Some(("::1".into(), 465)));
        assert_eq!(host_port("u:p@host", 25), None);
        assert_eq!(host_port("host:port", 25), None);
        assert_eq!(host_port("", 25), None);
    }

    #[test]
    fn co_author_message_ids_are_distinct_and_stable() {
        assert_eq!(
            co_author_message_id("<01J.email@example.edu>", 2),
            "<01J.email.2@example.edu>"
        );
    }

    #[test]
    fn long_lines_survive_quoted_printable() {
        let line = format!("{}  \tend", "x".repeat(200));
        let p = EmailPayload {
            event_email: None,
            pusher_id: None,
            username: None,
            display_name: None,
            subject: "s".into(),
            text: format!("{line}\nnext\n"),
            raw_stdout_hex: None,
            message_id: "<a.email@example.edu>".into(),
            date: chrono::Utc::now(),
            co_authors: vec!["bob@example.edu".into()],
            delivered_to: Vec::new(),
        };
        let from: Mailbox = "g <g@example.edu>".parse().unwrap();
        let to: Mailbox = "s@example.edu".parse().unwrap();
        let raw = String::from_utf8(
            build_message(&from, to, &p, "<a.email@example.edu>")
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(raw.contains("Content-Transfer-Encoding: quoted-printable"));
        // Co-authors get their own message: never named in this one.
        assert!(!raw.contains("bob@example.edu"), "{raw}");
        assert!(!raw.contains("\r\nCc:"), "{raw}");
        // Soft breaks only: undoing them gives the line back as printed.
        let body = raw.split("\r\n\r\n").nth(1).unwrap();
        let decoded = body
            .replace("=\r\n", "")
            .replace("=09", "\t")
            .replace("=20", " ");
        assert!(decoded.contains(&line), "{body}");
        assert!(raw.lines().all(|l| l.len() <= 78), "{raw}");
    }
}
