//! Course policy: what an `[assignments.NAME]` section means for one push.
//!
//! Owns the pure decisions: which assignment a project belongs to and its
//! effective settings ([`ResolvedPolicy`]), whether a push is a submission
//! (trigger, tag pattern, deletions), whether it is late (deadline, grace,
//! late policy; the submission time is always the hook's receipt time,
//! never a commit date, which students control). A job's limits are the
//! grader's (`grader::limits`).
//! The rules live in [`rules`], admission of a job in [`mod@admit`], the quota
//! ledger in [`quota`] (and who pushed to which project in [`pushers`]) and the selection of rows for grade exports in
//! [`export`]; this module only declares and re-exports. Nothing here touches the
//! spool, the network or the sandbox; callers hand in the facts and act on
//! the answer.

pub mod admit;
pub mod export;
pub mod pushers;
pub mod quota;
pub mod rules;

pub use admit::{AdmitError, Admitted, Refusal, admit};
pub use quota::{QuotaDecision, QuotaError, QuotaLedger};
pub use rules::*;
