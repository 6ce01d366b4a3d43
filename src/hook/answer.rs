//! One HTTP answer (status, body, content kind), as the intake and the
//! router build it. It never decides anything.

use bytes::Bytes;
use hyper::StatusCode;

/// One answer: status and body.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
    pub(super) json: bool,
}

impl Answer {
    pub(super) fn text(status: StatusCode, msg: impl Into<String>) -> Answer {
        let mut s: String = msg.into();
        s.push('\n');
        Answer {
            status,
            body: Bytes::from(s),
            json: false,
        }
    }
}
