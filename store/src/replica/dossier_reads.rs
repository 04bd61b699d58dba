//! Reading a dossier as a person: its head and grants (`dossier show`, `dossier list`, `grant
//! list`) and its
//! trace (`audit show`), DOMAIN §6: the holder, the médecin traitant and the actor read the
//! trace.
//!
//! Invariants: a read by a person is decided by `policy::decide` (`Action::ShowDossier`,
//! `Action::ReadTrace`) and traced, allowed or denied, before anything is returned. The
//! médecin traitant, those with the same rights (row 4), the holder (9) and representatives
//! (10) see the whole (`policy::opens_whole_dossier`); a professional with an active grant
//! (6) sees the head and their own grant, not the others'; any professional not blocked (6,
//! 11) reads the trace entries where they are the actor, and no other. The holder and
//! representatives never get a trace entry about a document hidden from them. Without a person
//! only the host's operator reads, traced as `TraceActor::System` (an `operator-…` admin
//! entry); a site refuses it: there every reader is a person (`--as`).

use super::authority_ops::DossierInfo;
use super::{Replica, Role};
use crate::audit::{ChainedEntry, TraceActor};
use crate::error::{Error, Result};
use crate::ids::Ins;
use crate::model::{AccessMode, Actor, Grant};
use crate::policy::{self, Action, Decision, Who};

/// Who reads: a person the decision judges, or the host's operator.
#[derive(Debug, Clone, Copy)]
pub enum Reader<'a> {
    /// A professional, the holder or a representative (`--as`).
    Person(&'a Actor),
    /// The host's operator (no `--as`, at the host only).
    Operator,
}

impl Replica {
    /// The operator reads at the host only; the read is traced.
    pub(super) fn operator_reads(&self, command: &str, ins: Option<&Ins>) -> Result<()> {
        if self.config.role != Role::Host {
            return Err(Error::invalid(format!(
                "at a site, `{command}` is done as a person: add --as RPPS, --as holder or --as representative"
            )));
        }
        self.trace_durably(self.admin_entry(
            &format!("operator-{}", command.replace(' ', "-")),
            ins,
            None,
        ))
    }

    /// Decides `action` on dossier `ins` for `actor` and traces it; answers the decision and
    /// who the actor is.
    fn decide_dossier_read(
        &self,
        actor: &Actor,
        ins: &Ins,
        action: Action,
    ) -> Result<(Decision, Who, std::collections::HashSet<crate::ids::DocId>)> {
        let (txn, generation) = self.snapshot()?;
        let (who, tactor) = self.who(&txn, generation, actor)?;
        let bi = self.blind(ins);
        let ctx = self.context(&txn, generation, &bi, &who)?;
        let (decision, entry) = self.decide(
            &ctx,
            &who,
            &tactor,
            action,
            AccessMode::Normal,
            None,
            None,
            None,
        )?;
        self.trace_durably(entry)?;
        let hidden = if decision.allow && action == Action::ReadTrace {
            self.hidden_from(&txn, generation, &bi, &who)?
        } else {
            Default::default()
        };
        Ok((decision, who, hidden))
    }

    /// What `who`, allowed by `decision`, sees of `info`.
    fn as_seen(info: &mut DossierInfo, decision: &Decision, who: &Who) {
        if policy::opens_whole_dossier(decision) {
            return;
        }
        info.grants
            .retain(|g| matches!(who, Who::Professional { rpps, .. } if *rpps == g.rpps));
        info.purge_receipts.clear();
    }

    /// A dossier's head, grants and preferences, as `reader` may see them.
    pub fn show_dossier(&self, reader: Reader<'_>, ins: &Ins) -> Result<DossierInfo> {
        self.read_dossier(reader, ins, "dossier show")
    }

    /// A dossier's grants, revocations and blocks, as `reader` may see them (`grant list`).
    pub fn list_grants(&self, reader: Reader<'_>, ins: &Ins) -> Result<Vec<Grant>> {
        Ok(self.read_dossier(reader, ins, "grant list")?.grants)
    }

    /// Dossier `ins` as `reader` may see it, read for `command` (what the operator's trace
    /// entry names).
    fn read_dossier(&self, reader: Reader<'_>, ins: &Ins, command: &str) -> Result<DossierInfo> {
        match reader {
            Reader::Operator => {
                self.operator_reads(command, Some(ins))?;
                self.dossier(ins)
            }
            Reader::Person(actor) => {
                let (decision, who, _) =
                    self.decide_dossier_read(actor, ins, Action::ShowDossier)?;
                if !decision.allow {
                    return Err(Self::denied(&decision));
                }
                let mut info = self.dossier(ins)?;
                Self::as_seen(&mut info, &decision, &who);
                Ok(info)
            }
        }
    }

    /// The dossiers held here that `reader` may see, each as they may see it. For a person,
    /// each dossier is decided and traced.
    pub fn list_dossiers(&self, reader: Reader<'_>) -> Result<Vec<DossierInfo>> {
        match reader {
            Reader::Operator => {
                self.operator_reads("dossier list", None)?;
                self.dossiers()
            }
            Reader::Person(actor) => {
                let mut seen = Vec::new();
                for mut info in self.dossiers()? {
                    let (decision, who, _) =
                        self.decide_dossier_read(actor, &info.head.ins, Action::ShowDossier)?;
                    if decision.allow {
                        Self::as_seen(&mut info, &decision, &who);
                        seen.push(info);
                    }
                }
                Ok(seen)
            }
        }
    }

    /// The trace of dossier `ins`, as `reader` may read it.
    pub fn read_trace(&self, reader: Reader<'_>, ins: &Ins) -> Result<Vec<ChainedEntry>> {
        let Reader::Person(actor) = reader else {
            self.operator_reads("audit show", Some(ins))?;
            return self.audit_entries(Some(ins));
        };
        let (decision, who, hidden) = self.decide_dossier_read(actor, ins, Action::ReadTrace)?;
        if !decision.allow {
            return Err(Self::denied(&decision));
        }
        let whole = policy::opens_whole_dossier(&decision);
        let mut entries = self.audit_entries(Some(ins))?;
        entries.retain(|c| {
            let e = &c.entry;
            let own = matches!((&who, &e.actor),
                (Who::Professional { rpps, .. }, TraceActor::Professional { rpps: actor, .. })
                    if rpps == actor);
            (whole || own) && e.doc.is_none_or(|d| !hidden.contains(&d))
        });
        Ok(entries)
    }
}
