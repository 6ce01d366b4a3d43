//! A setup failure of `lg-init`: the step, the call and what the kernel
//! said. `main` prints it and exits 125; nothing here decides anything.

/// A setup failure: the step, the call and what the kernel said.
pub(crate) struct Fail {
    pub(crate) step: &'static str,
    pub(crate) detail: String,
}

pub(crate) fn fail(step: &'static str, call: &str, e: impl std::fmt::Display) -> Fail {
    Fail {
        step,
        detail: format!("{call}: {e}"),
    }
}
