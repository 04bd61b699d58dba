//! Conflicts a person can see: documents replaced twice by changes that had not seen each
//! other (`DocState::has_replacement_conflict`), and their branches.
//!
//! Invariants:
//! - The `CONFLICTS` index (kept by `Replica::put_meta` with every metadata write, emptied by
//!   `forget_document`) holds exactly the documents in conflict, so counting and naming them
//!   opens no sealed row: `sync status` and every `Hello` read it.
//! - Listing branches opens only the documents in conflict and their replacements, and
//!   filters by dossier on the blind index before opening anything.
//! - A resolution (`resolve_conflict`) is a change of the replaced document, decided as a
//!   replacement of it (`Action::Replace`) by the table, traced, and pushed like any change:
//!   it merges (`DocState::resolutions`), so every replica converges to the same kept branch.

use crate::kv::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::Replica;
use super::sync::Act;
use super::tables::*;
use crate::clock::VersionVector;
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, SiteId};
use crate::model::{AccessMode, Actor, Author};
use crate::policy::Action;
use crate::time::Millis;

/// A document in conflict and the replacements that make it one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The document replaced more than once.
    pub doc: DocId,
    /// Each replacement, in id order.
    pub branches: Vec<Branch>,
}

impl Replica {
    /// Records that `actor` keeps `keep`, one of the replacements of `doc` in conflict: decided
    /// as a replacement of `doc` (the table's row for `Replace`), traced, and sent to the host
    /// like any change. Refused when `doc` is not in conflict or `keep` does not replace it.
    pub fn resolve_conflict(&self, actor: &Actor, doc: &DocId, keep: &DocId) -> Result<()> {
        let txn = self.begin_write()?;
        let (snap, generation) = self.snapshot()?;
        let (who, tactor) = self.who(&snap, generation, actor)?;
        let (stored, key, mut meta) = self.load_doc(&snap, generation, doc)?;
        let state = meta.state();
        if !state.has_replacement_conflict() {
            return Err(Error::invalid(format!(
                "document {doc} is not in conflict (carnet conflicts list shows those that are)"
            )));
        }
        if !state.successors.contains_key(keep) {
            return Err(Error::invalid(format!(
                "document {keep} does not replace {doc}: keep one of its branches (carnet conflicts list)"
            )));
        }
        let ctx = self.context(&snap, generation, &stored.dossier, &who)?;
        let (decision, mut entry) = self.decide(
            &ctx,
            &who,
            &tactor,
            Action::Replace,
            AccessMode::Normal,
            None,
            Some(&meta),
            None,
        )?;
        if !decision.allow {
            txn.abort()?;
            return Err(self.deny_with_trace(vec![entry], &decision)?);
        }
        let recorded_at = meta.next_clock(self.config.site_id);
        meta.update(self.config.site_id, |s| {
            s.resolutions.insert(*keep, recorded_at);
        });
        let act = Act {
            actor: actor.clone(),
            action: Action::Replace,
        };
        self.store_new_state(&txn, &stored, &key, &meta, &act)?;
        entry.doc = Some(*doc);
        txn.trace(vec![entry]);
        txn.commit()?;
        Ok(())
    }
}

/// One replacement of a document in conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    /// The replacing document.
    pub doc: DocId,
    /// The version vector of the change that recorded the replacement.
    pub recorded_at: VersionVector,
    /// Who wrote the replacing document, where and when; `None` when this replica does not
    /// hold it (yet).
    pub written: Option<(Author, SiteId, Millis)>,
}

impl Replica {
    /// How many documents carry concurrent replacements (both kept and reported as a
    /// conflict), for `carnet sync status` and each `Hello`: read from the index, nothing
    /// opened.
    pub fn conflicts(&self) -> Result<usize> {
        let txn = self.begin_read()?;
        match txn.open_table(CONFLICTS) {
            Ok(t) => Ok(usize::try_from(t.len()?).unwrap_or(usize::MAX)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// The documents carrying concurrent replacements, in id order: read from the index and
    /// the ids' stored form, nothing opened.
    pub fn conflicted(&self) -> Result<Vec<DocId>> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(CONFLICTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut ids = Vec::new();
        for row in table.iter()? {
            ids.push(self.doc_id(row?.0.value()));
        }
        ids.sort();
        Ok(ids)
    }

    /// The documents in conflict (of the dossier `ins` only, if given), each with its
    /// branches: who wrote each replacement, at which site, when.
    pub fn conflict_branches(&self, ins: Option<&Ins>) -> Result<Vec<Conflict>> {
        let ids = self.conflicted()?;
        let (txn, generation) = self.snapshot()?;
        let only = ins.map(|i| self.blind(i));
        let mut out = Vec::new();
        for id in ids {
            let row = txn
                .open_table(DOCS)?
                .get(&self.stored_id(&id))?
                .map(|r| r.value().to_vec());
            let Some(row) = row else { continue };
            let stored: StoredDoc = postcard::from_bytes(&row)?;
            if only.is_some_and(|bi| bi != stored.dossier) {
                continue;
            }
            let (_, _, meta) = self.load_doc(&txn, generation, &id)?;
            let mut branches = Vec::new();
            for (doc, recorded_at) in meta.state().successors {
                let written = match self.load_doc(&txn, generation, &doc) {
                    Ok((_, _, m)) => {
                        Some((m.facts.author, m.facts.author_site, m.facts.created_at))
                    }
                    Err(Error::NotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                branches.push(Branch {
                    doc,
                    recorded_at,
                    written,
                });
            }
            out.push(Conflict { doc: id, branches });
        }
        Ok(out)
    }
}
