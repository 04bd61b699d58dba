//! Outbox entries a site cannot read, held back so that they never stop its sync.
//!
//! An outbox entry is read again each time it is sent (`Replica::outbox`). One that no longer
//! reads — a value an earlier build stored that this build's parsing types refuse, a seal that
//! does not open — would fail every later round of the site, and the site would never sync
//! again. Instead it is held back: the entry is kept in `OUTBOX_HELD` with why, its place in
//! the outbox is taken by `OutboxItem::Withheld` (sent as `Change::Withheld`, which the host
//! applies as nothing, so sequence numbers stay contiguous), and the site traces it.
//!
//! Invariants:
//! - an entry is held back in one transaction with its trace entry, and only when reading it
//!   failed other than on storage (a disk error is retried, never taken for a bad value);
//! - a held entry is never dropped: `OUTBOX_HELD` keeps it as it was, whatever acknowledges
//!   the `Withheld` that replaced it;
//! - the reason names the field that failed, never its value (errors of `ids` and `text` do
//!   not repeat what they refuse, apart from an RPPS or FINESS, which are not patient data).

use crate::kv::ReadableTable;
use serde::{Deserialize, Serialize};

use super::Replica;
use super::tables::*;
use crate::error::{Error, Result};
use crate::time::Millis;

/// An outbox entry held back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldChange {
    /// When it was held back.
    pub at: Millis,
    /// Why it could not be read.
    pub reason: String,
    /// The entry as it was in the outbox (`OutboxItem`, postcard, with its own seals).
    #[serde(with = "serde_bytes")]
    pub entry: Vec<u8>,
}

/// The outbox entries that name a document: their sequence and the document's stored id. An
/// entry that does not decode is skipped: it is held back when its turn to be sent comes.
pub(super) fn queued_documents(
    outbox: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Vec<(u64, [u8; 16])>> {
    let mut out = Vec::new();
    for row in outbox.iter()? {
        let (k, v) = row?;
        if let Ok(OutboxItem::Document(id) | OutboxItem::DocumentAct { id, .. }) =
            postcard::from_bytes(v.value())
        {
            out.push((k.value(), id));
        }
    }
    Ok(out)
}

impl Replica {
    /// Holds back the outbox entry at `seq`, which could not be read (`why`).
    pub(super) fn withhold(&self, seq: u64, why: Error) -> Result<()> {
        if matches!(why, Error::Storage(_)) {
            return Err(why);
        }
        let txn = self.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let Some(entry) = outbox.get(seq)?.map(|v| v.value().to_vec()) else {
                return Ok(());
            };
            let reason = why.to_string();
            let held = HeldChange {
                at: self.now(),
                reason: reason.clone(),
                entry,
            };
            txn.open_table(OUTBOX_HELD)?
                .insert(seq, postcard::to_stdvec(&held)?.as_slice())?;
            outbox.insert(seq, postcard::to_stdvec(&OutboxItem::Withheld)?.as_slice())?;
            txn.trace(vec![self.admin_entry(
                "outbox-entry-held",
                None,
                Some(&format!(
                    "change {seq} could not be read and is held back, not sent: {reason}"
                )),
            )]);
        }
        txn.commit()?;
        Ok(())
    }

    /// The outbox entries held back, by sequence.
    pub fn withheld(&self) -> Result<Vec<(u64, HeldChange)>> {
        let txn = self.begin_read()?;
        let table = match txn.open_table(OUTBOX_HELD) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        table
            .iter()?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value(), postcard::from_bytes(v.value())?))
            })
            .collect()
    }
}
