//! The access decision table of DOMAIN.md §4, as one pure function.
//!
//! `decide` evaluates the rows top-down and the first row whose *situation* matches decides,
//! allow or deny. Rows 4–6 are the situations of ordinary access; rows 7 and 8 are entered only
//! when the actor explicitly asks for break-glass or centre 15 mode. Invariants: no I/O, no
//! clock; every outcome names its row and a reason a person can read; the caller traces every
//! decision, allowed or denied.

use crate::ids::{RepresentativeId, Rpps};
use crate::model::{
    AccessMode, Author, DocClass, DossierStatus, EmergencyPrefs, Flags, GrantState,
    HabilitationMatrix, HolderKind, Profession, Representative,
};

/// What the actor wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// Read one document.
    Read,
    /// List the dossier's documents (each is then filtered by `Read`).
    List,
    /// Write a new document.
    Write,
    /// Replace a document by a new one.
    Replace,
    /// Set `MASQUE_PS`.
    Mask,
    /// Clear `MASQUE_PS`.
    Unmask,
    /// Set `INVISIBLE_PATIENT`.
    HideFromPatient,
    /// Set `INVISIBLE_REPRESENTANTS_LEGAUX`.
    HideFromRepresentatives,
    /// Logical deletion.
    Delete,
    /// The holder's full copy of the dossier.
    Export,
    /// See the dossier's head, grants and emergency preferences (`dossier show`, `list`).
    ShowDossier,
    /// Read the dossier's trace (`audit show`, DOMAIN §6).
    ReadTrace,
}

impl Action {
    /// Name used in traces and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::List => "list",
            Action::Write => "write",
            Action::Replace => "replace",
            Action::Mask => "mask",
            Action::Unmask => "unmask",
            Action::HideFromPatient => "hide-from-patient",
            Action::HideFromRepresentatives => "hide-from-representatives",
            Action::Delete => "delete",
            Action::Export => "export",
            Action::ShowDossier => "show-dossier",
            Action::ReadTrace => "read-trace",
        }
    }

    fn column(self) -> Column {
        match self {
            Action::Read
            | Action::List
            | Action::Export
            | Action::ShowDossier
            | Action::ReadTrace => Column::Read,
            Action::Write | Action::Replace => Column::Write,
            Action::Mask | Action::HideFromPatient | Action::HideFromRepresentatives => {
                Column::Mask
            }
            Action::Unmask => Column::Unmask,
            Action::Delete => Column::Delete,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Read,
    Write,
    Mask,
    Unmask,
    Delete,
}

/// Who is asking, resolved against this site's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A professional registered at this site.
    Professional {
        /// RPPS.
        rpps: Rpps,
        /// Profession.
        profession: Profession,
    },
    /// Claims an RPPS this site does not know: not identified (row 12).
    Unidentified,
    /// The holder.
    Holder,
    /// Claims to be the legal representative of this id; row 10 only if the dossier head
    /// records them (`DossierView::representatives`), row 12 otherwise.
    Representative(RepresentativeId),
}

/// The document concerned, for document actions.
#[derive(Debug, Clone, Copy)]
pub struct DocView<'a> {
    /// Author.
    pub author: &'a Author,
    /// Current flags.
    pub flags: Flags,
    /// Type code.
    pub type_code: &'a str,
}

/// A request to decide.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Actor.
    pub who: &'a Who,
    /// Action.
    pub action: Action,
    /// Access mode asked for.
    pub mode: AccessMode,
    /// Free-text reason (required for break-glass and centre 15).
    pub reason: Option<&'a str>,
    /// The document acted on (read, replace, mask, delete…).
    pub doc: Option<DocView<'a>>,
    /// The class of a new document (write).
    pub new_class: Option<DocClass>,
}

/// What the site knows of the dossier and of the actor's rights on it.
#[derive(Debug, Clone, Copy)]
pub struct DossierView<'a> {
    /// Lifecycle.
    pub status: DossierStatus,
    /// Holder kind at the time of the request (`DossierHead::holder_at`): a minor who has
    /// turned 18 is an adult here, whatever the signed head still says.
    pub holder: HolderKind,
    /// The representatives the signed head records (ended ones included).
    pub representatives: &'a [Representative],
    /// The actor's grant on this dossier, if any: its state and whether it is "treating" (the
    /// médecin traitant or the same rights). A grant whose end has passed is given as revoked.
    pub grant: Option<(GrantState, bool)>,
    /// The actor's grant was active but its end (`Grant::until`) has passed, by the clock of
    /// the replica deciding: the refusal says so.
    pub grant_ended: bool,
    /// Emergency preferences.
    pub emergency: EmergencyPrefs,
    /// Habilitation matrix.
    pub matrix: &'a HabilitationMatrix,
    /// The site's authority cache is older than its lease (DOMAIN §5): normal reads are over,
    /// only break-glass and centre 15 remain.
    pub lease_expired: bool,
}

const LEASE_EXPIRED: &str = "this site has not heard from the national host within its lease (or its clock reads earlier than it did before): only break-glass is possible";

const OWN_TRACE: &str = "the entries where this professional is the actor, not the others";

/// Whether an allowed `ShowDossier` or `ReadTrace` opens everything (the dossier's grants, its
/// whole trace): the médecin traitant and those with the same rights (row 4), the holder (9)
/// and representatives (10), as DOMAIN §6 says. Otherwise a professional sees the dossier with
/// their own grant only (row 6), and their own trace entries only (rows 6 and 11).
pub fn opens_whole_dossier(d: &Decision) -> bool {
    d.allow && matches!(d.rule.0, 4 | 9 | 10)
}

/// The row that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule(pub u8);

/// The outcome of `decide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allow: bool,
    /// Row of the table.
    pub rule: Rule,
    /// Why, for the trace and the user.
    pub reason: &'static str,
}

fn allow(rule: u8, reason: &'static str) -> Decision {
    Decision {
        allow: true,
        rule: Rule(rule),
        reason,
    }
}

fn deny(rule: u8, reason: &'static str) -> Decision {
    Decision {
        allow: false,
        rule: Rule(rule),
        reason,
    }
}

fn decision(ok: bool, rule: u8, yes: &'static str, no: &'static str) -> Decision {
    if ok { allow(rule, yes) } else { deny(rule, no) }
}

/// Decides a request against the table of DOMAIN §4. First matching row wins.
pub fn decide(req: &Request<'_>, view: &DossierView<'_>) -> Decision {
    let column = req.action.column();
    let doc = req.doc;
    // DOMAIN §5: normal reads from the cache stop when the lease has run out.
    let lease_blocks =
        view.lease_expired && column == Column::Read && req.mode == AccessMode::Normal;
    let masked = doc.is_some_and(|d| d.flags.masque_ps);
    let is_author = |rpps: &Rpps| {
        doc.is_some_and(|d| matches!(d.author, Author::Professional { rpps: a, .. } if a == rpps))
    };

    // Row 1: the dossier must be active.
    if view.status != DossierStatus::Active {
        return deny(1, "the dossier is not active (closed or purged)");
    }
    match req.who {
        Who::Professional { rpps, profession } => {
            let profession = *profession;
            // Row 2: insurers and employers never.
            if profession.acts_for_insurer_or_employer() {
                return deny(
                    2,
                    "insurers, employers and those acting for them have no access",
                );
            }
            // Row 3: blocked by the holder, whatever the mode.
            if matches!(view.grant, Some((GrantState::Blocked, _))) {
                return deny(3, "the holder blocked this professional");
            }
            if req.action == Action::Export {
                return deny(
                    11,
                    "the full copy of a dossier is for its holder or legal representatives",
                );
            }
            let in_matrix = |d: &DocView<'_>| view.matrix.allows(profession, d.type_code);
            if req.mode == AccessMode::Normal {
                let active = matches!(view.grant, Some((GrantState::Active, _)));
                let treating = matches!(view.grant, Some((GrantState::Active, true)));
                // Row 4: médecin traitant or equivalent rights.
                if treating {
                    if lease_blocks {
                        return deny(4, LEASE_EXPIRED);
                    }
                    return match column {
                        Column::Delete => decision(
                            req.action == Action::Delete && is_author(rpps),
                            4,
                            "médecin traitant deletes own document",
                            "only the author may delete a document",
                        ),
                        _ => allow(4, "médecin traitant"),
                    };
                }
                // Row 5: the author, on their own document.
                if is_author(rpps) {
                    if lease_blocks {
                        return deny(5, LEASE_EXPIRED);
                    }
                    return match column {
                        Column::Read | Column::Write | Column::Mask | Column::Delete => {
                            allow(5, "author of the document")
                        }
                        Column::Unmask => deny(5, "an author may mask but not unmask"),
                    };
                }
                // Row 6: an active grant.
                if active {
                    if lease_blocks {
                        return deny(6, LEASE_EXPIRED);
                    }
                    return match column {
                        Column::Read if req.action == Action::ReadTrace => allow(6, OWN_TRACE),
                        Column::Read if req.action == Action::ShowDossier => allow(
                            6,
                            "active grant: the dossier and this grant, not the others",
                        ),
                        Column::Read => match doc {
                            Some(d) if d.flags.masque_ps => {
                                deny(6, "the document is masked from professionals")
                            }
                            Some(d) if !in_matrix(&d) => {
                                deny(6, "this profession may not read this type of document")
                            }
                            _ => allow(6, "active grant"),
                        },
                        Column::Write | Column::Mask => allow(6, "active grant"),
                        Column::Unmask => deny(6, "a granted professional may mask, not unmask"),
                        Column::Delete => deny(6, "only the author may delete a document"),
                    };
                }
            }
            let reason_given = req.reason.is_some_and(|r| !r.trim().is_empty());
            // Row 7: break-glass.
            if req.mode == AccessMode::BreakGlass {
                if !reason_given {
                    return deny(7, "break-glass needs a reason");
                }
                if !view.emergency.btg_allowed {
                    return deny(7, "the holder opposed break-glass access");
                }
                return match column {
                    Column::Read => match doc {
                        Some(d) if !in_matrix(&d) => {
                            deny(7, "this profession may not read this type of document")
                        }
                        Some(_) if masked && !view.emergency.masked_in_emergency => {
                            deny(7, "the holder keeps masked documents masked in emergencies")
                        }
                        _ => allow(7, "break-glass"),
                    },
                    Column::Write => allow(7, "break-glass"),
                    _ => deny(7, "break-glass allows reading and writing only"),
                };
            }
            // Row 8: centre 15 regulating doctor.
            if req.mode == AccessMode::Centre15 {
                if profession != Profession::Medecin {
                    return deny(8, "centre 15 access is for regulating doctors");
                }
                if !reason_given {
                    return deny(8, "centre 15 access needs a reason");
                }
                if !view.emergency.samu_allowed {
                    return deny(8, "the holder opposed centre 15 access");
                }
                return match column {
                    Column::Read => match doc {
                        Some(d) if !in_matrix(&d) => {
                            deny(8, "this profession may not read this type of document")
                        }
                        Some(_) if masked && !view.emergency.masked_in_emergency => {
                            deny(8, "the holder keeps masked documents masked in emergencies")
                        }
                        _ => allow(8, "centre 15"),
                    },
                    _ => deny(8, "centre 15 access is read-only"),
                };
            }
            // Row 11: any other identified professional may feed the dossier.
            match req.action {
                Action::Write => allow(11, "feeding the dossier needs no consent"),
                Action::ReadTrace => allow(11, OWN_TRACE),
                _ if view.grant_ended => deny(11, "the grant for this dossier has ended"),
                _ => deny(11, "no grant for this dossier"),
            }
        }
        Who::Holder => holder_row(req, 9, lease_blocks),
        Who::Representative(id) => {
            if !view
                .representatives
                .iter()
                .any(|r| r.id == *id && r.ended.is_none())
            {
                return deny(
                    12,
                    "no such legal representative recorded for this dossier (or no longer)",
                );
            }
            if view.holder == HolderKind::Adult {
                return deny(
                    12,
                    "the holder is an adult (18 or over): legal representatives have no access",
                );
            }
            holder_row(req, 10, lease_blocks)
        }
        Who::Unidentified => deny(12, "unknown actor: register the professional at this site"),
    }
}

/// Rows 9 (holder) and 10 (legal representative, who additionally does not see
/// `INVISIBLE_REPRESENTANTS_LEGAUX`).
fn holder_row(req: &Request<'_>, row: u8, lease_blocks: bool) -> Decision {
    let doc = req.doc;
    let own_upload =
        doc.is_some_and(|d| matches!(d.author, Author::Holder | Author::Representative(_)));
    if req.mode != AccessMode::Normal {
        return deny(row, "emergency modes are for professionals");
    }
    if lease_blocks {
        return deny(row, LEASE_EXPIRED);
    }
    match req.action.column() {
        Column::Read => match doc {
            Some(d) if d.flags.invisible_patient => deny(
                row,
                "not yet visible: awaiting the announcement consultation",
            ),
            Some(d) if row == 10 && d.flags.invisible_representatives => deny(
                row,
                "the holder asked that this be hidden from legal representatives",
            ),
            _ => allow(row, "holder's own dossier"),
        },
        Column::Write => decision(
            req.new_class == Some(DocClass::PATIENT)
                && (req.action == Action::Write || req.action == Action::Replace && own_upload),
            row,
            "patient document",
            "the holder may only add patient documents (class 90)",
        ),
        Column::Mask | Column::Unmask => decision(
            matches!(req.action, Action::Mask | Action::Unmask),
            row,
            "the holder masks and unmasks",
            "only professionals hide documents from the patient or representatives",
        ),
        Column::Delete => decision(
            own_upload,
            row,
            "own upload",
            "the holder may delete only their own uploads",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Author, Flags, HabilitationMatrix, RESIDENCE_CERTIFICATE};

    fn rpps(n: u8) -> Rpps {
        Rpps::parse(&format!("100000000{n:02}")).expect("rpps")
    }

    struct Case {
        who: Who,
        action: Action,
        mode: AccessMode,
        reason: Option<&'static str>,
        author: Option<Author>,
        flags: Flags,
        type_code: &'static str,
        new_class: Option<u8>,
        status: DossierStatus,
        holder: HolderKind,
        grant: Option<(GrantState, bool)>,
        grant_ended: bool,
        emergency: EmergencyPrefs,
        lease_expired: bool,
        representatives: Vec<Representative>,
    }

    /// The head of the cases records R1 (current) and R2 (ended).
    fn recorded() -> Vec<Representative> {
        let rep = |n, ended| Representative {
            id: RepresentativeId(n),
            name: format!("Representative {n}"),
            relationship: "parent".into(),
            since: 0,
            ended,
        };
        vec![rep(1, None), rep(2, Some(1))]
    }

    fn representative(n: u16) -> Who {
        Who::Representative(RepresentativeId(n))
    }

    fn base(who: Who, action: Action) -> Case {
        Case {
            who,
            action,
            mode: AccessMode::Normal,
            reason: None,
            author: Some(Author::Professional {
                rpps: rpps(99),
                profession: Profession::Medecin,
            }),
            flags: Flags::default(),
            type_code: "11488-4",
            new_class: None,
            status: DossierStatus::Active,
            holder: HolderKind::Adult,
            grant: None,
            grant_ended: false,
            emergency: EmergencyPrefs::default(),
            lease_expired: false,
            representatives: recorded(),
        }
    }

    fn doctor() -> Who {
        Who::Professional {
            rpps: rpps(1),
            profession: Profession::Medecin,
        }
    }

    fn pharmacist() -> Who {
        Who::Professional {
            rpps: rpps(2),
            profession: Profession::Pharmacien,
        }
    }

    fn masked() -> Flags {
        Flags {
            masque_ps: true,
            ..Flags::default()
        }
    }

    /// Decides a case and checks both the outcome and the row.
    fn check(case: Case, expect_allow: bool, expect_row: u8) {
        let matrix = HabilitationMatrix::default_matrix();
        let doc = case.author.as_ref().map(|author| DocView {
            author,
            flags: case.flags,
            type_code: case.type_code,
        });
        let req = Request {
            who: &case.who,
            action: case.action,
            mode: case.mode,
            reason: case.reason,
            doc: if case.action == Action::Write {
                None
            } else {
                doc
            },
            new_class: case
                .new_class
                .map(|c| DocClass::parse(&c.to_string()).expect("class")),
        };
        let view = DossierView {
            status: case.status,
            holder: case.holder,
            representatives: &case.representatives,
            grant: case.grant,
            grant_ended: case.grant_ended,
            emergency: case.emergency,
            matrix: &matrix,
            lease_expired: case.lease_expired,
        };
        let d = decide(&req, &view);
        assert_eq!(
            (d.allow, d.rule.0),
            (expect_allow, expect_row),
            "{:?} {:?} {:?}: {}",
            case.who,
            case.action,
            case.mode,
            d.reason
        );
    }

    #[test]
    fn row_1_inactive_dossier() {
        let mut c = base(Who::Holder, Action::Read);
        c.status = DossierStatus::Closed;
        check(c, false, 1);
        let mut c = base(doctor(), Action::Read);
        c.grant = Some((GrantState::Active, true));
        c.status = DossierStatus::Purged;
        check(c, false, 1);
        check(base(Who::Holder, Action::Read), true, 9);
    }

    #[test]
    fn row_2_insurer_and_employer() {
        for p in [Profession::MedecinConseil, Profession::MedecinDuTravail] {
            let mut c = base(
                Who::Professional {
                    rpps: rpps(3),
                    profession: p,
                },
                Action::Read,
            );
            c.grant = Some((GrantState::Active, true));
            check(c, false, 2);
        }
        let mut c = base(doctor(), Action::Read);
        c.grant = Some((GrantState::Active, false));
        check(c, true, 6);
    }

    #[test]
    fn row_3_blocked_even_in_emergency() {
        let mut c = base(doctor(), Action::Read);
        c.grant = Some((GrantState::Blocked, false));
        c.mode = AccessMode::BreakGlass;
        c.reason = Some("unconscious");
        check(c, false, 3);
        let mut c = base(doctor(), Action::Write);
        c.grant = Some((GrantState::Blocked, false));
        check(c, false, 3);
        let mut c = base(doctor(), Action::Write);
        c.grant = Some((GrantState::Revoked, false));
        check(c, true, 11);
    }

    #[test]
    fn row_4_treating_doctor() {
        let mut c = base(doctor(), Action::Read);
        c.grant = Some((GrantState::Active, true));
        c.flags = masked();
        check(c, true, 4);
        let mut c = base(doctor(), Action::Unmask);
        c.grant = Some((GrantState::Active, true));
        check(c, true, 4);
        let mut c = base(doctor(), Action::Delete);
        c.grant = Some((GrantState::Active, true));
        check(c, false, 4);
        let mut c = base(doctor(), Action::Delete);
        c.grant = Some((GrantState::Active, true));
        c.author = Some(Author::Professional {
            rpps: rpps(1),
            profession: Profession::Medecin,
        });
        check(c, true, 4);
    }

    #[test]
    fn row_5_author() {
        let own = Author::Professional {
            rpps: rpps(2),
            profession: Profession::Pharmacien,
        };
        let mut c = base(pharmacist(), Action::Read);
        c.author = Some(own.clone());
        c.flags = masked();
        c.type_code = "11488-4"; // outside the pharmacist's matrix: own documents still readable
        check(c, true, 5);
        let mut c = base(pharmacist(), Action::Unmask);
        c.author = Some(own.clone());
        check(c, false, 5);
        let mut c = base(pharmacist(), Action::Delete);
        c.author = Some(own);
        check(c, true, 5);
    }

    #[test]
    fn row_6_active_grant() {
        let mut c = base(pharmacist(), Action::Read);
        c.grant = Some((GrantState::Active, false));
        c.type_code = "57833-6";
        check(c, true, 6);
        let mut c = base(pharmacist(), Action::Read);
        c.grant = Some((GrantState::Active, false));
        c.type_code = "57833-6";
        c.flags = masked();
        check(c, false, 6);
        let mut c = base(pharmacist(), Action::Read);
        c.grant = Some((GrantState::Active, false));
        c.type_code = "11488-4";
        check(c, false, 6);
        let mut c = base(doctor(), Action::Read);
        c.grant = Some((GrantState::Active, false));
        c.type_code = RESIDENCE_CERTIFICATE;
        check(c, false, 6);
        let mut c = base(pharmacist(), Action::Mask);
        c.grant = Some((GrantState::Active, false));
        check(c, true, 6);
        let mut c = base(pharmacist(), Action::Unmask);
        c.grant = Some((GrantState::Active, false));
        check(c, false, 6);
        let mut c = base(pharmacist(), Action::Delete);
        c.grant = Some((GrantState::Active, false));
        check(c, false, 6);
    }

    #[test]
    fn row_7_break_glass() {
        let mut c = base(doctor(), Action::Read);
        c.mode = AccessMode::BreakGlass;
        c.reason = Some("unconscious after a fall");
        check(c, true, 7);
        let mut c = base(doctor(), Action::Read);
        c.mode = AccessMode::BreakGlass;
        check(c, false, 7); // no reason
        let mut c = base(doctor(), Action::Read);
        c.mode = AccessMode::BreakGlass;
        c.reason = Some("coma");
        c.emergency.btg_allowed = false;
        check(c, false, 7);
        let mut c = base(doctor(), Action::Read);
        c.mode = AccessMode::BreakGlass;
        c.reason = Some("coma");
        c.flags = masked();
        check(c, false, 7);
        let mut c = base(doctor(), Action::Read);
        c.mode = AccessMode::BreakGlass;
        c.reason = Some("coma");
        c.flags = masked();
        c.emergency.masked_in_emergency = true;
        check(c, true, 7);
        let mut c = base(doctor(), Action::Mask);
        c.mode = AccessMode::BreakGlass;
        c.reason = Some("coma");
        check(c, false, 7);
    }

    #[test]
    fn row_8_centre_15() {
        let mut c = base(doctor(), Action::Read);
        c.mode = AccessMode::Centre15;
        c.reason = Some("regulation call");
        check(c, true, 8);
        let mut c = base(doctor(), Action::Read);
        c.mode = AccessMode::Centre15;
        c.reason = Some("regulation call");
        c.emergency.samu_allowed = false;
        check(c, false, 8);
        let mut c = base(pharmacist(), Action::Read);
        c.mode = AccessMode::Centre15;
        c.reason = Some("call");
        check(c, false, 8);
        let mut c = base(doctor(), Action::Write);
        c.mode = AccessMode::Centre15;
        c.reason = Some("call");
        check(c, false, 8);
    }

    #[test]
    fn row_9_holder() {
        check(base(Who::Holder, Action::Read), true, 9);
        let mut c = base(Who::Holder, Action::Read);
        c.flags.invisible_patient = true;
        check(c, false, 9);
        let mut c = base(Who::Holder, Action::Write);
        c.new_class = Some(90);
        check(c, true, 9);
        let mut c = base(Who::Holder, Action::Write);
        c.new_class = Some(10);
        check(c, false, 9);
        check(base(Who::Holder, Action::Unmask), true, 9);
        check(base(Who::Holder, Action::HideFromPatient), false, 9);
        check(base(Who::Holder, Action::Delete), false, 9);
        let mut c = base(Who::Holder, Action::Delete);
        c.author = Some(Author::Holder);
        check(c, true, 9);
        let mut c = base(Who::Holder, Action::Replace);
        c.author = Some(Author::Holder);
        c.new_class = Some(90);
        check(c, true, 9);
        let mut c = base(Who::Holder, Action::Replace);
        c.author = Some(Author::Holder);
        c.new_class = Some(10);
        check(c, false, 9);
    }

    #[test]
    fn row_10_legal_representative() {
        for holder in [HolderKind::Minor, HolderKind::ProtectedAdult] {
            let mut c = base(representative(1), Action::Read);
            c.holder = holder;
            check(c, true, 10);
        }
        let mut c = base(representative(1), Action::Read);
        c.holder = HolderKind::Minor;
        c.flags.invisible_representatives = true;
        check(c, false, 10);
        let mut c = base(representative(1), Action::Read);
        c.holder = HolderKind::Adult;
        check(c, false, 12);
    }

    #[test]
    fn a_representative_the_head_does_not_record_is_anyone_else() {
        // R2 was removed, R3 never recorded: row 12 for every action, even on a minor.
        for n in [2, 3] {
            for action in [Action::Read, Action::List, Action::Export, Action::Write] {
                let mut c = base(representative(n), action);
                c.holder = HolderKind::Minor;
                c.new_class = Some(90);
                check(c, false, 12);
            }
        }
        let mut c = base(representative(1), Action::Write);
        c.holder = HolderKind::Minor;
        c.new_class = Some(90);
        check(c, true, 10);
    }

    /// The holder kind of a head signed with `kind` at `now` (at its first or last
    /// millisecond), as the site decides it (`DossierHead::holder_at`).
    fn holder_at(
        kind: HolderKind,
        birth_date: &str,
        now: &str,
        last_ms_of_day: bool,
    ) -> HolderKind {
        let head = crate::model::DossierHead {
            ins: crate::ids::Ins::from_body("1840575123456").expect("ins"),
            ins_kind: crate::ids::InsKind::TestNir,
            identity: crate::model::Identity {
                birth_name: "TEST".into(),
                first_names: "Camille".into(),
                birth_date: birth_date.into(),
                sex: crate::model::Sex::Female,
                birthplace: None,
                status: crate::model::IdentityStatus::Qualified,
            },
            holder: kind,
            representatives: recorded(),
            status: DossierStatus::Active,
            mask_new_by_default: false,
            created_at: 0,
            closure: None,
        };
        let midnight = crate::time::parse_date(now).expect("date");
        head.holder_at(midnight + if last_ms_of_day { 86_399_999 } else { 0 })
    }

    #[test]
    fn a_minors_representatives_lose_access_at_the_18th_birthday() {
        for (birth, now, last_ms, allowed) in [
            ("2008-06-15", "2026-06-14", true, true),
            ("2008-06-15", "2026-06-15", false, false),
            ("2008-06-15", "2031-01-01", false, false),
            // Born on 29 February: of age on 1 March of a common year, not on 28 February.
            ("2008-02-29", "2026-02-28", true, true),
            ("2008-02-29", "2026-03-01", false, false),
            // ... and on 29 February itself when the 18th birthday falls in a leap year.
            ("2012-02-29", "2030-02-28", true, true),
            ("2014-02-28", "2032-02-28", false, false),
            ("2014-03-01", "2032-02-29", true, true),
        ] {
            for action in [Action::Read, Action::List, Action::Export] {
                let mut c = base(representative(1), action);
                c.holder = holder_at(HolderKind::Minor, birth, now, last_ms);
                check(c, allowed, if allowed { 10 } else { 12 });
            }
        }
    }

    #[test]
    fn a_protected_adults_representatives_keep_access_past_18() {
        let mut c = base(representative(1), Action::Read);
        c.holder = holder_at(
            HolderKind::ProtectedAdult,
            "1950-01-01",
            "2026-01-01",
            false,
        );
        check(c, true, 10);
    }

    #[test]
    fn row_11_other_professional() {
        check(base(doctor(), Action::Write), true, 11);
        check(base(doctor(), Action::Read), false, 11);
        check(base(doctor(), Action::Replace), false, 11);
    }

    #[test]
    fn a_grant_past_its_end_is_no_grant_but_break_glass_remains() {
        let grant = crate::model::Grant {
            ins: crate::ids::Ins::from_body("1840575123456").expect("ins"),
            rpps: rpps(2),
            state: GrantState::Active,
            basis: crate::model::GrantBasis::Treating,
            issued_at: 1_000,
            until: Some(5_000),
        };
        let at = |now: i64| {
            let mut c = base(doctor(), Action::Read);
            c.grant = Some(grant.for_decision(now));
            c.grant_ended = grant.ended(now).is_some();
            c
        };
        check(at(4_999), true, 4);
        let ended = at(5_000);
        assert!(ended.grant_ended);
        check(ended, false, 11);
        let mut c = at(9_000);
        c.mode = AccessMode::BreakGlass;
        c.reason = Some("unconscious");
        check(c, true, 7);
        let mut c = at(9_000);
        c.action = Action::Write;
        check(c, true, 11);
        assert_eq!(grant.state_at(9_000), (GrantState::Revoked, 5_000));
        assert_eq!(grant.state_at(4_000), (GrantState::Active, 1_000));
    }

    #[test]
    fn the_dossier_and_its_trace_are_whole_for_rows_4_9_10_own_for_other_professionals() {
        let whole = |c: Case, row: u8| {
            let action = c.action;
            let matrix = HabilitationMatrix::default_matrix();
            let d = decide(
                &Request {
                    who: &c.who,
                    action,
                    mode: c.mode,
                    reason: None,
                    doc: None,
                    new_class: None,
                },
                &DossierView {
                    status: c.status,
                    holder: c.holder,
                    grant: c.grant,
                    grant_ended: c.grant_ended,
                    representatives: &c.representatives,
                    emergency: c.emergency,
                    matrix: &matrix,
                    lease_expired: c.lease_expired,
                },
            );
            assert_eq!(d.rule.0, row, "{action:?}: {}", d.reason);
            (d.allow, opens_whole_dossier(&d))
        };
        for action in [Action::ShowDossier, Action::ReadTrace] {
            let mut c = base(doctor(), action);
            c.author = None;
            c.grant = Some((GrantState::Active, true));
            assert_eq!(whole(c, 4), (true, true));
            let mut c = base(pharmacist(), action);
            c.author = None;
            c.grant = Some((GrantState::Active, false));
            assert_eq!(whole(c, 6), (true, false));
            let mut c = base(Who::Holder, action);
            c.author = None;
            assert_eq!(whole(c, 9), (true, true));
            let mut c = base(representative(1), action);
            c.author = None;
            c.holder = HolderKind::Minor;
            assert_eq!(whole(c, 10), (true, true));
            let mut c = base(doctor(), action);
            c.author = None;
            c.grant = Some((GrantState::Blocked, false));
            assert_eq!(whole(c, 3), (false, false));
            let c = base(Who::Unidentified, action);
            assert_eq!(whole(c, 12), (false, false));
        }
        // Without a grant: the own trace entries, not the dossier.
        let mut c = base(doctor(), Action::ReadTrace);
        c.author = None;
        assert_eq!(whole(c, 11), (true, false));
        let mut c = base(doctor(), Action::ShowDossier);
        c.author = None;
        assert_eq!(whole(c, 11), (false, false));
    }

    #[test]
    fn an_expired_lease_leaves_only_emergency_reads() {
        let mut c = base(doctor(), Action::Read);
        c.grant = Some((GrantState::Active, true));
        c.lease_expired = true;
        check(c, false, 4);
        let mut c = base(pharmacist(), Action::Read);
        c.grant = Some((GrantState::Active, false));
        c.type_code = "57833-6";
        c.lease_expired = true;
        check(c, false, 6);
        let mut c = base(Who::Holder, Action::Read);
        c.lease_expired = true;
        check(c, false, 9);
        // Break-glass still works, and writing is not a read.
        let mut c = base(doctor(), Action::Read);
        c.mode = AccessMode::BreakGlass;
        c.reason = Some("unconscious");
        c.lease_expired = true;
        check(c, true, 7);
        let mut c = base(doctor(), Action::Write);
        c.grant = Some((GrantState::Active, true));
        c.lease_expired = true;
        check(c, true, 4);
    }

    #[test]
    fn row_12_anyone_else() {
        check(base(Who::Unidentified, Action::Read), false, 12);
        check(base(Who::Unidentified, Action::Write), false, 12);
    }
}
