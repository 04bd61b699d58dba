//! What a replica answers when asked for an operation of the other role, in one place: the
//! store's own checks and the local API's (which holds the role types, `roles`) give the same
//! words, so a clinic's IT staff read the same refusal whichever path the request took.
//!
//! Invariant: each is `Error::Invalid` (exit 2), but `not_quarantined` (`Error::NotFound`): a
//! refusal changes nothing.

use crate::error::Error;
use crate::ids::DocId;

/// A decision of the national host (a signed record) asked of a site.
pub fn authority() -> Error {
    Error::invalid(
        "only the national host decides this: run it on the host replica, and bring the result here with `carnet authority import`",
    )
}

/// A dossier created at a site without saying who opens it.
pub fn create_at_site() -> Error {
    Error::invalid(
        "at a site, a dossier is opened by someone: add --as RPPS (a professional registered here) or --as holder; the host adopts it at the next sync",
    )
}

/// A dossier opened "by someone" at the host, which creates dossiers itself.
pub fn open_here_at_host() -> Error {
    Error::invalid("the host creates dossiers directly (dossier create without --as)")
}

/// An identity qualified where the dossier was not opened.
pub fn not_opened_here() -> Error {
    Error::invalid(
        "this site did not open that dossier, or the host has answered for it: the host qualifies its identity",
    )
}

/// A consent given in person recorded at the host.
pub fn pending_grant_at_host() -> Error {
    Error::invalid("a pending grant is recorded at a site; the host grants directly (grant add)")
}

/// An emergency fetch asked of the host.
pub fn fetch_at_host() -> Error {
    Error::invalid("an emergency fetch is asked by a site; the host holds every dossier")
}

/// Something only the host decides about sites (`what` names it), asked of a site.
pub fn decided_by_host(what: &str) -> Error {
    Error::invalid(format!("{what} is decided by the national host"))
}

/// The emergency review asked of a site.
pub fn emergencies_at_site() -> Error {
    Error::invalid("emergencies are reviewed at the host: run this there")
}

/// The patients' notifications asked of a site.
pub fn notifications_at_site() -> Error {
    Error::invalid("notifications are made and kept at the host: run this there")
}

/// A quarantined document this replica does not hold (the host holds none).
pub fn not_quarantined(id: &DocId) -> Error {
    Error::NotFound(format!("no quarantined document {id}"))
}
