//! Staff alerts out: each due batch of `spool/alerts/` (see
//! [`crate::alert`]) becomes one email record (to every `[alerts] email`
//! address, each a message of their own) and one callback record (to
//! `[alerts] callback_url`), queued in the outbox like any delivery, so
//! they are retried from disk and sent at least once; and the spool's
//! free space is watched here for its crossing of `[spool] min_free`.
//! Called by the worker's loop on the blocking pool. It never sends
//! anything itself and renders nothing a student sees.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::error::DeliverError;
use super::outbox::enqueue;
use super::record::{CallbackPayload, Destination, EmailPayload, Payload, Record};
use super::render::message_domain;
use crate::alert::{Alert, AlertKind, Batch, LISTED};
use crate::config::Config;
use crate::spool::Spool;

/// Check the free space, then queue the due batch, if any. Returns how
/// many alerts the batch queued held.
pub fn tick(cfg: &Config, spool: &Spool, now: DateTime<Utc>) -> Result<usize, DeliverError> {
    if !cfg.alerts.enabled() {
        return Ok(0);
    }
    watch_space(cfg, spool);
    let root = spool.root();
    let Some(batch) = crate::alert::next_batch(&cfg.alerts, root, now)? else {
        return Ok(0);
    };
    if batch.alerts.is_empty() {
        // Its members vanished or were unreadable: nothing to say.
        crate::alert::close_batch(root, &batch, now)?;
        return Ok(0);
    }
    for rec in records(cfg, &batch) {
        enqueue(spool, &rec)?;
    }
    tracing::warn!(batch = %batch.id, alerts = batch.alerts.len(), "staff alert queued: {}", subject(&batch.alerts));
    crate::alert::close_batch(root, &batch, now)?;
    Ok(batch.alerts.len())
}

/// A low-space alert when the spool's free space just went under
/// `[spool] min_free` (once per crossing, across restarts).
fn watch_space(cfg: &Config, spool: &Spool) {
    let reserve = crate::reserve::Reserve::new(spool.root(), cfg.spool.min_free.0);
    let low = reserve.check().err();
    if crate::alert::low_space_crossed(spool.root(), low.is_some())
        && let Some(low) = low
    {
        crate::alert::raise(
            &cfg.alerts,
            spool.root(),
            Alert::new(AlertKind::LowSpace, None, None, low.to_string()),
        );
    }
}

/// Counts per kind, most frequent first, as a subject.
fn subject(alerts: &[Alert]) -> String {
    let mut counts: BTreeMap<AlertKind, usize> = BTreeMap::new();
    for a in alerts {
        *counts.entry(a.kind).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| k.counted(*n)).collect();
    format!("[labgrader] {}", parts.join(", "))
}

/// The message: the counts, then each alert on its own lines (the first
/// [`LISTED`]), then what staff can do.
fn text(alerts: &[Alert]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} since the last alert message:\n",
        subject(alerts).trim_start_matches("[labgrader] ")
    );
    for a in alerts.iter().take(LISTED) {
        let _ = writeln!(
            t,
            "- {} {} job {} {}\n    {}",
            a.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            a.kind.as_str(),
            a.job_id.as_deref().unwrap_or("-"),
            a.project.as_deref().unwrap_or(""),
            crate::text::one_line(&a.detail, 400),
        );
    }
    if alerts.len() > LISTED {
        let _ = writeln!(t, "... and {} more (see the log)", alerts.len() - LISTED);
    }
    t.push_str(
        "\n`labgrader queue` shows what waits and what was given up on; \
         `labgrader retry JOB` tries a job again.\n\
         Alerts are batched: at most one message per [alerts] window.\n",
    );
    t
}

fn records(cfg: &Config, batch: &Batch) -> Vec<Record> {
    let a = &cfg.alerts;
    let mut out = Vec::new();
    if let Some((first, rest)) = a.email.split_first() {
        let payload = EmailPayload {
            event_email: Some(first.clone()),
            pusher_id: None,
            username: None,
            display_name: None,
            subject: subject(&batch.alerts),
            text: text(&batch.alerts),
            raw_stdout_hex: None,
            message_id: format!("<{}@{}>", batch.id, message_domain(&cfg.email.from)),
            date: Utc::now(),
            co_authors: rest.to_vec(),
            delivered_to: Vec::new(),
        };
        out.push(Record::new(
            &batch.id,
            Destination::AlertEmail,
            "",
            "",
            Payload::Email(payload),
        ));
    }
    if !a.callback_url.is_empty() {
        let body = serde_json::json!({
            "kind": "alerts",
            "batch": batch.id,
            "summary": subject(&batch.alerts),
            "alerts": batch.alerts,
        });
        let payload = CallbackPayload {
            body: body.to_string(),
        };
        out.push(Record::new(
            &batch.id,
            Destination::AlertCallback,
            "",
            "",
            Payload::Callback(payload),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_subject_counts_each_kind() {
        let a = |k| Alert::new(k, Some("J"), Some("ns/lab"), "why");
        let s = subject(&[
            a(AlertKind::InfraError),
            a(AlertKind::InfraError),
            a(AlertKind::DeliveryDead),
        ]);
        assert_eq!(
            s,
            "[labgrader] 2 jobs ended infra_error, 1 delivery given up"
        );
        let many: Vec<Alert> = (0..LISTED + 3).map(|_| a(AlertKind::InfraError)).collect();
        assert!(text(&many).contains("and 3 more"));
    }
}
