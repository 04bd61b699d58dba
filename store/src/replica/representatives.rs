//! Host: the legal representatives recorded in a dossier's signed head (DOMAIN §1, §4 row 10).
//!
//! Invariants: only the host records or removes a representative, by signing a new head;
//! ids are `R1`, `R2`, … in the order recorded, and never reused within a dossier — a removed
//! representative stays in the head, marked ended, so every trace entry naming an id keeps
//! naming the same person; an adult's head records none.

use serde::{Deserialize, Serialize};

use super::Replica;
use crate::authority::AuthorityRecord;
use crate::error::{Error, Result};
use crate::ids::{Ins, RepresentativeId};
use crate::model::{AGE_OF_MAJORITY, DossierHead, DossierStatus, HolderKind, Representative};
use crate::time::Millis;

/// Longest name or relationship kept, in characters.
const TEXT_CHARS_MAX: usize = 200;

/// What recording a representative needs; the host assigns the id and the time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRepresentative {
    /// Name.
    pub name: String,
    /// Relationship to the holder (e.g. mother, guardian).
    pub relationship: String,
}

impl NewRepresentative {
    /// The relationship recorded when none is given.
    pub const DEFAULT_RELATIONSHIP: &'static str = "legal representative";
}

fn checked_text(text: &str, what: &str) -> Result<String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(Error::invalid(format!(
            "a legal representative needs a {what}"
        )));
    }
    if t.chars().count() > TEXT_CHARS_MAX || t.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "a representative's {what} is at most {TEXT_CHARS_MAX} characters, with no control characters"
        )));
    }
    Ok(t.to_string())
}

/// Appends `new` to `head`'s representatives with the next ids, recorded at `now`. Refused
/// for an adult holder, and for a minor already of age at `now`.
pub(super) fn record(head: &mut DossierHead, new: &[NewRepresentative], now: Millis) -> Result<()> {
    if new.is_empty() {
        return Ok(());
    }
    match head.holder {
        HolderKind::Adult => {
            return Err(Error::invalid(
                "an adult holder has no legal representatives: use --holder minor or protected-adult",
            ));
        }
        HolderKind::Minor if head.holder_at(now) != HolderKind::Minor => {
            return Err(Error::invalid(format!(
                "the holder is {AGE_OF_MAJORITY} or over by their birth date: a minor's representatives would have no access"
            )));
        }
        _ => {}
    }
    for n in new {
        let next = u16::try_from(head.representatives.len() + 1)
            .map_err(|_| Error::invalid("this dossier has recorded too many representatives"))?;
        head.representatives.push(Representative {
            id: RepresentativeId(next),
            name: checked_text(&n.name, "name")?,
            relationship: checked_text(&n.relationship, "relationship")?,
            since: now,
            ended: None,
        });
    }
    Ok(())
}

impl Replica {
    /// Host: records a legal representative of the holder of `ins`, in a new signed head.
    /// Returns the head with their id.
    pub(crate) fn add_representative(
        &self,
        ins: &Ins,
        new: NewRepresentative,
    ) -> Result<DossierHead> {
        let mut head = self.active_head_for_representatives(ins)?;
        record(&mut head, std::slice::from_ref(&new), self.now())?;
        let id = head.representatives.last().map(|r| r.id.to_string());
        self.issue(
            AuthorityRecord::Dossier(head.clone()),
            "representative-add",
            id.as_deref(),
        )?;
        Ok(head)
    }

    /// Host: ends representative `id` of the holder of `ins`, in a new signed head: from the
    /// moment a replica holds it, that id has no access there (row 12).
    pub(crate) fn remove_representative(
        &self,
        ins: &Ins,
        id: RepresentativeId,
    ) -> Result<DossierHead> {
        let mut head = self.active_head_for_representatives(ins)?;
        let now = self.now();
        let rep = head
            .representatives
            .iter_mut()
            .find(|r| r.id == id && r.ended.is_none())
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no current legal representative {id} in this dossier (see `carnet dossier show`)"
                ))
            })?;
        rep.ended = Some(now);
        self.issue(
            AuthorityRecord::Dossier(head.clone()),
            "representative-remove",
            Some(&id.to_string()),
        )?;
        Ok(head)
    }

    fn active_head_for_representatives(&self, ins: &Ins) -> Result<DossierHead> {
        self.signing_key()?;
        let (head, _) = self.head(ins)?;
        if head.status != DossierStatus::Active {
            return Err(Error::invalid(
                "the dossier is closed: its representatives cannot change",
            ));
        }
        Ok(head)
    }
}
