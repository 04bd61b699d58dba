//! The quarantine: documents this site wrote that the host will not take (their dossier was
//! closed meanwhile, or is not held by the host), kept apart and never dropped (DOMAIN §5).
//!
//! Invariants: a document is copied into the quarantine, sealed under the quarantine key
//! (derived from the registry key, so it survives the dossier's purge), before anything that
//! could destroy it: a purge first quarantines every document of the dossier still waiting in
//! the outbox, and drops those outbox entries only then, in the same transaction.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{Generation, Replica};
use crate::crypto::aad;
use crate::error::{Error, Result};
use crate::ids::DocId;
use crate::merge::DocumentMeta;
use crate::time::Millis;

/// A quarantined document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Its metadata.
    pub meta: DocumentMeta,
    /// Its body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Why it is here.
    pub reason: String,
    /// Since when.
    pub at: Millis,
}

impl Replica {
    fn quarantine_key(&self) -> crate::crypto::Key {
        quarantine_key(&self.keys.registry)
    }

    /// Copies a document into the quarantine inside `txn`, reading it from `snap` (taken under
    /// the same write lock).
    pub(super) fn quarantine_in(
        &self,
        txn: &WriteTransaction,
        snap: &ReadTransaction,
        generation: Generation,
        id: &DocId,
        reason: &str,
    ) -> Result<()> {
        let (_, key, meta) = self.load_doc(snap, generation, id)?;
        let body = self
            .get_body(&snap.open_table(BODIES)?, &key, &meta)
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let record = Quarantined {
            meta,
            body,
            reason: reason.to_string(),
            at: self.now(),
        };
        let sealed = self.quarantine_key().seal(
            &aad(&[b"quarantine", &id.0]),
            &postcard::to_stdvec(&record)?,
        )?;
        self.digested(txn, QUARANTINE)?
            .insert(&self.stored_id(id), sealed.as_slice())?;
        Ok(())
    }

    /// Site: quarantines documents the host returned (those already kept, or no longer held
    /// here, are skipped: the call is idempotent).
    pub fn quarantine_returned(&self, ids: &[DocId], reason: &str) -> Result<()> {
        let txn = self.begin_write()?;
        let (snap, generation) = self.snapshot()?;
        for id in ids {
            let stored = self.stored_id(id);
            let kept = txn.open_table(QUARANTINE)?.get(&stored)?.is_some();
            let held = snap.open_table(DOCS)?.get(&stored)?.is_some();
            if !kept && held {
                self.quarantine_in(&txn, &snap, generation, id, reason)?;
            }
        }
        txn.commit()
    }

    /// Documents of the dossier `bi` still waiting in the outbox go to the quarantine and leave
    /// the outbox (before a purge destroys them), inside `txn`.
    pub(super) fn quarantine_pending(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
    ) -> Result<usize> {
        let (snap, generation) = self.snapshot()?;
        let mut pending = Vec::new();
        for row in snap.open_table(OUTBOX)?.iter()? {
            let (k, v) = row?;
            if let OutboxItem::Document(stored) | OutboxItem::DocumentAct { id: stored, .. } =
                postcard::from_bytes(v.value())?
            {
                let in_dossier = snap
                    .open_table(DOCS)?
                    .get(&stored)?
                    .map(|row| postcard::from_bytes::<StoredDoc>(row.value()))
                    .transpose()?
                    .is_some_and(|stored| &stored.dossier == bi);
                if in_dossier {
                    pending.push((k.value(), self.doc_id(&stored)));
                }
            }
        }
        for (_, id) in &pending {
            self.quarantine_in(
                txn,
                &snap,
                generation,
                id,
                "the dossier was closed before the host received it",
            )?;
        }
        let mut outbox = txn.open_table(OUTBOX)?;
        for (seq, _) in &pending {
            outbox.remove(*seq)?;
        }
        Ok(pending.len())
    }

    /// The quarantined documents, in id order.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>> {
        let (txn, _) = self.snapshot()?;
        let key = self.quarantine_key();
        let mut out: Vec<Quarantined> = Vec::new();
        for row in txn.open_table(QUARANTINE)?.iter()? {
            let (k, v) = row?;
            let id = self.doc_id(k.value());
            let plain = key
                .open(&aad(&[b"quarantine", &id.0]), v.value())
                .map_err(|_| Error::integrity("a quarantined document was altered"))?;
            out.push(postcard::from_bytes(&plain)?);
        }
        out.sort_unstable_by_key(|q| q.meta.facts.id);
        Ok(out)
    }
}

/// The key quarantined documents are sealed with, derived from the registry key.
pub(super) fn quarantine_key(registry: &crate::crypto::Key) -> crate::crypto::Key {
    registry.derive("carnet 2026-11 quarantine")
}
