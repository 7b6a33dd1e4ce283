//! The opaque handle C holds, and the one place a handle pointer becomes a reference.
//!
//! Ownership: `prfl_create` returns a `Box<PrflRuntime>` turned into a raw pointer, which the
//! host owns; `prfl_destroy` turns it back into the box and drops it. Every other entry point
//! only borrows it (shared references: the session synchronises internally). Dropping the box
//! drops the only [`Session`] handle, which stops the background trainer first.

use super::status::FfiError;
use crate::session::Session;

/// The opaque handle C holds. Dropping it (`prfl_destroy`) stops the background trainer first.
/// It is a Box the host owns (from `prfl_create` to `prfl_destroy`), holding the Session.
pub struct PrflRuntime {
    pub(crate) session: Session,
}

impl PrflRuntime {
    /// A new handle, owned by the caller (see the module docs).
    pub fn into_raw(session: Session) -> *mut PrflRuntime {
        Box::into_raw(Box::new(PrflRuntime { session }))
    }
}

/// The session behind a handle.
///
/// # Safety
/// `rt` is null or a handle from `prfl_create` not yet destroyed.
pub unsafe fn session<'a>(rt: *const PrflRuntime) -> Result<&'a Session, FfiError> {
    // SAFETY: per the contract, a non-null `rt` points to a live handle; only shared
    // references are ever made (the session synchronises internally).
    unsafe { rt.as_ref() }
        .map(|h| &h.session)
        .ok_or_else(|| FfiError::null("rt"))
}
