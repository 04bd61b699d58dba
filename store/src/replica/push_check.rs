//! What a site pushes is decided again by the host (the host trusts no site): a pushed
//! document is merged only when the host, with its own registry, bindings and signed records,
//! finds that the site's recorded acts allow every change it brings (DOMAIN §4–§5).
//!
//! Invariants:
//! - Every change of state a push brings to a document the host holds (`narrowing`: a flag set,
//!   the availability raised, a successor added) must be made by an act of its kind (`Act`)
//!   that `policy::decide` allows on the host's view: the actor as the host resolves it (a
//!   professional only if the host binds them to the origin site, with the profession of the
//!   host's registry; the holder or a representative only where the host lets that site hold
//!   the dossier: a bound professional's grant, or an accepted pin), the grant and dossier head
//!   the host holds, normal mode, no lease. Otherwise the whole change is returned, and the host
//!   traces why (ids only).
//! - A new document is its author's act: a professional bound to the origin site with the
//!   profession the host knows (or the holder or a representative, as above), who may write it
//!   by the table (or replace the document it replaces); what its first state carries beyond a
//!   new document's is decided as acts of its author or of the acts sent with it.
//! - Version vectors: in the star, a site learns the other replicas' changes only through the
//!   host, so a pushed clock may be ahead of the host's only in the origin's own counter, and a
//!   new document's clock names the origin only. A forged clock is returned, never merged: merged,
//!   it would make the host drop other sites' later changes as already seen.
//! - A flag the host itself cleared (`HOST_CLEARS`: an unmask, a release) that comes back in a
//!   version that has not seen that clear (the merge lets restrictive flags win on
//!   concurrency) is decided as the act it is: a mask or a hiding by one of the actors the push
//!   names, whatever act the site recorded (a site that hid a document while the host unmasked
//!   it carries the older mask along). None allowed: the change is returned and the host's
//!   clear stands.
//! - Widening changes never get here: `widens` returns them first.

use std::collections::HashMap;
use std::sync::Arc;

use crate::kv::{ReadableTable, WriteTransaction};

use super::sync::Act;
use super::tables::*;
use super::{Replica, Role};
use crate::audit::{AuditEntry, TraceAction, TraceActor};
use crate::authority::{AuthorityRecord, Verified};
use crate::crypto::aad;
use crate::error::{Error, Result};
use crate::ids::{DocId, Rpps, SiteId};
use crate::merge::DocumentMeta;
use crate::model::{
    AccessMode, Actor, Author, Availability, DocClass, DocState, DossierHead, DossierStatus,
    EmergencyPrefs, Flags, GrantState, HabilitationMatrix, HolderKind,
};
use crate::policy::{self, Action, Decision, DocView, DossierView, Request, Who};

/// At most this many acts on one pushed document: a site sends each (actor, action) once, so
/// only a forged change has more.
pub(super) const ACTS_MAX: usize = 256;

/// One way a pushed state narrows the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Narrowed {
    /// `MASQUE_PS` set.
    Masked,
    /// `INVISIBLE_PATIENT` set.
    HiddenFromPatient,
    /// `INVISIBLE_REPRESENTANTS_LEGAUX` set.
    HiddenFromRepresentatives,
    /// Availability raised to deleted.
    Deleted,
    /// Availability raised to archived.
    Archived,
    /// Availability raised to deprecated.
    Deprecated,
    /// A successor added.
    Replaced,
}

impl Narrowed {
    /// The kind of act that makes it; `None` for what no act of a site makes (archiving: no
    /// command archives a document).
    pub(super) fn action(self) -> Option<Action> {
        match self {
            Narrowed::Masked => Some(Action::Mask),
            Narrowed::HiddenFromPatient => Some(Action::HideFromPatient),
            Narrowed::HiddenFromRepresentatives => Some(Action::HideFromRepresentatives),
            Narrowed::Deleted => Some(Action::Delete),
            Narrowed::Archived => None,
            // A document becomes deprecated when it is replaced.
            Narrowed::Deprecated | Narrowed::Replaced => Some(Action::Replace),
        }
    }

    /// Its name in a trace entry.
    fn describe(self) -> &'static str {
        match self {
            Narrowed::Masked => "masking",
            Narrowed::HiddenFromPatient => "hiding from the patient",
            Narrowed::HiddenFromRepresentatives => "hiding from the legal representatives",
            Narrowed::Deleted => "deletion",
            Narrowed::Archived => "archiving",
            Narrowed::Deprecated => "deprecation",
            Narrowed::Replaced => "replacement",
        }
    }

    /// For a flag, its place in `HOST_CLEARS`.
    fn flag(self) -> Option<usize> {
        match self {
            Narrowed::Masked => Some(0),
            Narrowed::HiddenFromPatient => Some(1),
            Narrowed::HiddenFromRepresentatives => Some(2),
            _ => None,
        }
    }
}

/// The flags in `HOST_CLEARS` order.
fn flag_bits(flags: Flags) -> [bool; 3] {
    [
        flags.masque_ps,
        flags.invisible_patient,
        flags.invisible_representatives,
    ]
}

/// What `after` adds to `before`: each flag set, the availability raised (to its new value),
/// successors added (once). A widening (a flag cleared, availability lowered) is not here:
/// `widens` refuses it.
pub(super) fn narrowing(before: &DocState, after: &DocState) -> Vec<Narrowed> {
    let mut out = Vec::new();
    let (b, a) = (before.flags, after.flags);
    if a.masque_ps && !b.masque_ps {
        out.push(Narrowed::Masked);
    }
    if a.invisible_patient && !b.invisible_patient {
        out.push(Narrowed::HiddenFromPatient);
    }
    if a.invisible_representatives && !b.invisible_representatives {
        out.push(Narrowed::HiddenFromRepresentatives);
    }
    if after.availability() > before.availability() {
        out.push(match after.availability() {
            Availability::Deleted => Narrowed::Deleted,
            Availability::Archived => Narrowed::Archived,
            // Approved is the lowest: only deprecated is left.
            Availability::Deprecated | Availability::Approved => Narrowed::Deprecated,
        });
    }
    if after
        .successors
        .keys()
        .any(|id| !before.successors.contains_key(id))
        || after
            .resolutions
            .keys()
            .any(|id| !before.resolutions.contains_key(id))
    {
        out.push(Narrowed::Replaced);
    }
    out
}

/// Why a pushed document's successors or resolutions are forged, if they are: one recorded at
/// a version vector the version carrying it has not reached, one the host knows recorded at
/// another, two recorded by one change (one change records one replacement or one choice), or
/// a resolution keeping a document that does not replace this one. Each would let a site hide
/// a conflict, make one up or end one by choosing the clocks that decide it
/// (`DocState::has_replacement_conflict`).
fn forged_successor_clock(known: Option<&DocState>, remote: &DocumentMeta) -> Option<String> {
    use crate::clock::Causality;
    for (clock, state) in remote.versions() {
        for (what, map, known_map) in [
            (
                "replacement",
                &state.successors,
                known.map(|k| &k.successors),
            ),
            (
                "resolution",
                &state.resolutions,
                known.map(|k| &k.resolutions),
            ),
        ] {
            let clocks: Vec<_> = map.values().collect();
            if clocks
                .iter()
                .enumerate()
                .any(|(i, a)| clocks[i + 1..].contains(a))
            {
                return Some(format!("two of its {what}s are recorded by one change"));
            }
            for (id, at) in map {
                if !matches!(at.compare(clock), Causality::Before | Causality::Equal) {
                    return Some(format!(
                        "{what} {id} is recorded at a version vector its version has not reached"
                    ));
                }
                if let Some(host_at) = known_map.and_then(|k| k.get(id))
                    && host_at != at
                {
                    return Some(format!(
                        "{what} {id} is recorded at another version vector than the host's"
                    ));
                }
            }
        }
        if let Some(kept) = state
            .resolutions
            .keys()
            .find(|k| !state.successors.contains_key(k))
        {
            return Some(format!(
                "a resolution keeps {kept}, which does not replace it"
            ));
        }
    }
    None
}

/// Why the host returns a pushed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    /// Who the refused act names, as the host resolved them (`System` when none).
    pub actor: TraceActor,
    /// The act refused, if the refusal is about one.
    pub action: Option<Action>,
    /// The row of the table that refused (0 when the table was not reached).
    pub rule: u8,
    /// Why, without names or titles.
    pub reason: String,
}

impl Refusal {
    fn new(actor: TraceActor, action: Option<Action>, rule: u8, reason: String) -> Self {
        Refusal {
            actor,
            action,
            rule,
            reason,
        }
    }
}

/// A grant as the decision table sees it: its state, and whether it is treating.
type GrantView = (GrantState, bool);

/// What the host looks up once per pushed batch (one origin): cleared with the batch's other
/// caches by any item that may change a dossier's status or a scope.
#[derive(Default)]
pub(super) struct Judged {
    /// Dossier heads (`None`: not held).
    heads: HashMap<[u8; 32], Option<Arc<DossierHead>>>,
    /// Grants: state and whether treating (`None`: no grant).
    grants: HashMap<([u8; 32], Rpps), Option<GrantView>>,
    /// Professionals named by the origin, as the host resolves them there.
    pros: HashMap<(SiteId, Rpps), std::result::Result<Who, &'static str>>,
    /// The origin's scope reasons by dossier.
    scope: HashMap<(SiteId, [u8; 32]), u8>,
    matrix: Option<Arc<HabilitationMatrix>>,
}

impl Judged {
    /// Forgets everything.
    pub(super) fn clear(&mut self) {
        *self = Judged::default();
    }
}

/// How the trace names an actor the host resolved (an RPPS is one: it was parsed when decoded).
fn trace_actor(actor: &Actor, who: Option<&Who>) -> TraceActor {
    match (actor, who) {
        (Actor::Professional(rpps), who) => TraceActor::Professional {
            rpps: rpps.clone(),
            profession: match who {
                Some(Who::Professional { profession, .. }) => Some(*profession),
                _ => None,
            },
        },
        (Actor::Holder, _) => TraceActor::Holder,
        (Actor::Representative(id), _) => TraceActor::Representative(*id),
        (Actor::System, _) => TraceActor::System,
    }
}

/// The actor a document's author is.
fn author_actor(author: &Author) -> Actor {
    match author {
        Author::Professional { rpps, .. } => Actor::Professional(rpps.clone()),
        Author::Holder => Actor::Holder,
        Author::Representative(id) => Actor::Representative(*id),
    }
}

impl Replica {
    /// Host: decides a pushed change of a document the host holds. `before` is the host's
    /// copy, `remote` what the site sent, `merged` what merging them makes; `None` when every
    /// change is allowed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn judge_pushed_change(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        bi: &[u8; 32],
        before: &DocumentMeta,
        remote: &DocumentMeta,
        merged: &DocumentMeta,
        acts: &[Act],
        judged: &mut Judged,
    ) -> Result<Option<Refusal>> {
        if acts.len() > ACTS_MAX {
            return Ok(Some(too_many_acts()));
        }
        let known = before.clock();
        if let Some((site, n)) = remote
            .clock()
            .iter()
            .find(|&(site, n)| site != origin && n > known.get(site))
        {
            return Ok(Some(Refusal::new(
                TraceActor::System,
                None,
                0,
                format!(
                    "its version vector counts {n} changes from replica {site}, the host knows {}: a site advances only its own counter",
                    known.get(site)
                ),
            )));
        }
        let state = before.state();
        if let Some(reason) = forged_successor_clock(Some(&state), remote) {
            return Ok(Some(Refusal::new(
                TraceActor::System,
                Some(Action::Replace),
                0,
                reason,
            )));
        }
        let doc = DocView {
            author: &before.facts.author,
            flags: state.flags,
            type_code: &before.facts.type_code,
        };
        for narrowed in narrowing(&state, &merged.state()) {
            // A flag the host cleared, set again by a version that has not seen the clear, is
            // the doing of whoever made that version: decided as that act (a mask, a hiding)
            // by each actor the push names, whatever act the site recorded.
            let as_acts_of_each;
            let acts = match (narrowed.flag(), narrowed.action()) {
                (Some(flag), Some(action))
                    if self.not_seeing_the_clear(txn, &before.facts.id, flag, merged)? =>
                {
                    as_acts_of_each = acts
                        .iter()
                        .map(|a| Act {
                            actor: a.actor.clone(),
                            action,
                        })
                        .collect::<Vec<_>>();
                    &as_acts_of_each
                }
                _ => acts,
            };
            let refused = self.covered(
                txn,
                origin,
                bi,
                narrowed,
                acts,
                None,
                doc,
                before.facts.class,
                judged,
            )?;
            if refused.is_some() {
                return Ok(refused);
            }
        }
        Ok(None)
    }

    /// Host: decides a new document pushed by `origin`; `None` when it is allowed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn judge_pushed_new(
        &self,
        txn: &WriteTransaction,
        docs: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
        origin: SiteId,
        bi: &[u8; 32],
        remote: &DocumentMeta,
        acts: &[Act],
        judged: &mut Judged,
    ) -> Result<Option<Refusal>> {
        if acts.len() > ACTS_MAX {
            return Ok(Some(too_many_acts()));
        }
        if let Some((site, _)) = remote.clock().iter().find(|&(site, _)| site != origin) {
            return Ok(Some(Refusal::new(
                TraceActor::System,
                Some(Action::Write),
                0,
                format!(
                    "a new document's version vector names replica {site}: only the site that wrote it can have changed it"
                ),
            )));
        }
        if let Some(reason) = forged_successor_clock(None, remote) {
            return Ok(Some(Refusal::new(
                TraceActor::System,
                Some(Action::Replace),
                0,
                reason,
            )));
        }
        let facts = &remote.facts;
        if let Err(why) = facts.check() {
            return Ok(Some(Refusal::new(
                TraceActor::System,
                Some(Action::Write),
                0,
                format!("its metadata: {why}"),
            )));
        }
        let author = author_actor(&facts.author);
        let who = match self.resolve(txn, origin, bi, &author, judged)? {
            Ok(who) => who,
            Err(why) => {
                return Ok(Some(Refusal::new(
                    trace_actor(&author, None),
                    Some(Action::Write),
                    12,
                    format!("its author: {why}"),
                )));
            }
        };
        if let (
            Author::Professional { profession, .. },
            Who::Professional {
                profession: known, ..
            },
        ) = (&facts.author, &who)
            && profession != known
        {
            return Ok(Some(Refusal::new(
                trace_actor(&author, Some(&who)),
                Some(Action::Write),
                0,
                format!(
                    "its author is recorded as {}, the host's registry says {}",
                    profession.as_str(),
                    known.as_str()
                ),
            )));
        }
        // A replacement is decided on the document it replaces, when the host holds it.
        let replaced = match facts.replaces {
            Some(old) => self.held_meta(txn, docs, bi, &old)?,
            None => None,
        };
        let replaced_state = replaced.as_ref().map(DocumentMeta::state);
        let (action, doc) = match (&replaced, &replaced_state) {
            (Some(old), Some(state)) => (
                Action::Replace,
                Some(DocView {
                    author: &old.facts.author,
                    flags: state.flags,
                    type_code: &old.facts.type_code,
                }),
            ),
            _ => (Action::Write, None),
        };
        let decision = self.decide_act(txn, bi, &who, action, doc, Some(facts.class), judged)?;
        if !decision.allow {
            return Ok(Some(Refusal::new(
                trace_actor(&author, Some(&who)),
                Some(action),
                decision.rule.0,
                format!("a new document: {}", decision.reason),
            )));
        }
        // What its first state carries is its author's doing, or of the acts sent with it.
        let own = DocView {
            author: &facts.author,
            flags: Flags::default(),
            type_code: &facts.type_code,
        };
        for narrowed in narrowing(&DocState::default(), &remote.state()) {
            let refused = self.covered(
                txn,
                origin,
                bi,
                narrowed,
                acts,
                Some(&author),
                own,
                facts.class,
                judged,
            )?;
            if refused.is_some() {
                return Ok(refused);
            }
        }
        Ok(None)
    }

    /// `None` when an act of `narrowed`'s kind among `implicit` and `acts` is allowed on `doc`;
    /// otherwise why not (the last refusal met).
    #[allow(clippy::too_many_arguments)]
    fn covered(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        bi: &[u8; 32],
        narrowed: Narrowed,
        acts: &[Act],
        implicit: Option<&Actor>,
        doc: DocView<'_>,
        class: DocClass,
        judged: &mut Judged,
    ) -> Result<Option<Refusal>> {
        let Some(action) = narrowed.action() else {
            return Ok(Some(Refusal::new(
                TraceActor::System,
                None,
                0,
                format!("{}: no act of a site does it", narrowed.describe()),
            )));
        };
        let named = acts.iter().filter(|a| a.action == action).map(|a| &a.actor);
        let mut refusal = None;
        for actor in implicit.into_iter().chain(named) {
            match self.resolve(txn, origin, bi, actor, judged)? {
                Err(why) => {
                    refusal = Some(Refusal::new(
                        trace_actor(actor, None),
                        Some(action),
                        12,
                        format!("{}: {why}", narrowed.describe()),
                    ));
                }
                Ok(who) => {
                    let decision =
                        self.decide_act(txn, bi, &who, action, Some(doc), Some(class), judged)?;
                    if decision.allow {
                        return Ok(None);
                    }
                    refusal = Some(Refusal::new(
                        trace_actor(actor, Some(&who)),
                        Some(action),
                        decision.rule.0,
                        format!("{}: {}", narrowed.describe(), decision.reason),
                    ));
                }
            }
        }
        Ok(Some(refusal.unwrap_or_else(|| {
            Refusal::new(
                TraceActor::System,
                Some(action),
                0,
                format!(
                    "{}: no act of that kind came with the change",
                    narrowed.describe()
                ),
            )
        })))
    }

    /// The actor of an act pushed by `origin`, as the host sees them; or why the host does not
    /// take them as acting there.
    fn resolve(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        bi: &[u8; 32],
        actor: &Actor,
        judged: &mut Judged,
    ) -> Result<std::result::Result<Who, &'static str>> {
        match actor {
            Actor::Professional(rpps) => {
                if let Some(known) = judged.pros.get(&(origin, rpps.clone())) {
                    return Ok(known.clone());
                }
                let resolved = if Rpps::parse(rpps.as_str()).is_err() {
                    Err("the act names no valid RPPS")
                } else if !self.is_bound(txn, origin, rpps)? {
                    Err("the professional does not practise at that site for the host")
                } else {
                    match self.registered(&txn.open_table(PROS)?, &self.rpps_index(rpps))? {
                        Some(pro) => Ok(Who::Professional {
                            rpps: pro.rpps,
                            profession: pro.profession,
                        }),
                        None => Err("the professional is not in the host's registry"),
                    }
                };
                judged.pros.insert((origin, rpps.clone()), resolved.clone());
                Ok(resolved)
            }
            Actor::Holder | Actor::Representative(_) => {
                let bits = match judged.scope.get(&(origin, *bi)) {
                    Some(bits) => *bits,
                    None => {
                        let bits = txn
                            .open_table(SCOPE)?
                            .get(site_key(origin.0, bi).as_slice())?
                            .map_or(0, |v| v.value());
                        judged.scope.insert((origin, *bi), bits);
                        bits
                    }
                };
                if bits & (scope_bit::GRANT | scope_bit::PINNED) == 0 {
                    return Ok(Err(
                        "the holder acts at a site only where the host lets that site hold the dossier",
                    ));
                }
                // A representative is then judged by the table against the host's head: one it
                // does not record (or no longer, or no longer for a holder of age) is row 12.
                Ok(Ok(match actor {
                    Actor::Representative(id) => Who::Representative(*id),
                    _ => Who::Holder,
                }))
            }
            Actor::System => Ok(Err("an act at a site names a person")),
        }
    }

    /// The table's decision on `who` doing `action`, on the host's records, in normal mode.
    #[allow(clippy::too_many_arguments)]
    fn decide_act(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        who: &Who,
        action: Action,
        doc: Option<DocView<'_>>,
        new_class: Option<DocClass>,
        judged: &mut Judged,
    ) -> Result<Decision> {
        let head = match judged.heads.get(bi) {
            Some(head) => head.clone(),
            None => {
                let head = match self.authority_get(
                    &txn.open_table(AUTHORITY)?,
                    &subject_key(tag::DOSSIER, Some(bi), None),
                )? {
                    Some(Verified {
                        record: AuthorityRecord::Dossier(h),
                        ..
                    }) => Some(Arc::new(h)),
                    _ => None,
                };
                judged.heads.insert(*bi, head.clone());
                head
            }
        };
        // Not held, or purged: as row 1 says of a dossier that is not active. A minor's
        // representatives are judged by the host's clock: the act carries no time of its own.
        let (status, holder, representatives) = match &head {
            Some(h) => (
                h.status,
                h.holder_at(self.now()),
                h.representatives.as_slice(),
            ),
            None => (DossierStatus::Purged, HolderKind::Adult, &[][..]),
        };
        let grant = match who {
            Who::Professional { rpps, .. } => match judged.grants.get(&(*bi, rpps.clone())) {
                Some(grant) => *grant,
                None => {
                    let grant = match self.authority_get(
                        &txn.open_table(AUTHORITY)?,
                        &subject_key(tag::GRANT, Some(bi), Some(&self.rpps_index(rpps))),
                    )? {
                        Some(Verified {
                            record: AuthorityRecord::Grant(g),
                            ..
                        }) => Some(g.for_decision(self.now())),
                        _ => None,
                    };
                    judged.grants.insert((*bi, rpps.clone()), grant);
                    grant
                }
            },
            _ => None,
        };
        let matrix = match &judged.matrix {
            Some(m) => m.clone(),
            None => {
                let m = self.matrix()?;
                judged.matrix = Some(m.clone());
                m
            }
        };
        Ok(policy::decide(
            &Request {
                who,
                action,
                mode: AccessMode::Normal,
                reason: None,
                doc,
                new_class,
            },
            &DossierView {
                status,
                holder,
                representatives,
                grant,
                // An ended grant is given as revoked; only the wording of a refusal differs.
                grant_ended: false,
                // Normal mode never consults them.
                emergency: EmergencyPrefs::default(),
                matrix: &matrix,
                // The host has no lease.
                lease_expired: false,
            },
        ))
    }

    /// The metadata of `id` if the host holds it in the dossier `bi` (`docs`: `DOCS`).
    fn held_meta(
        &self,
        txn: &WriteTransaction,
        docs: &impl ReadableTable<&'static [u8; 16], &'static [u8]>,
        bi: &[u8; 32],
        id: &DocId,
    ) -> Result<Option<DocumentMeta>> {
        let Some(row) = docs.get(&self.stored_id(id))?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let stored: StoredDoc = postcard::from_bytes(&row)?;
        if &stored.dossier != bi {
            return Ok(None);
        }
        let Some(key) = self.dossier_key(&txn.open_table(DOSSIER_KEYS)?, bi)? else {
            return Ok(None);
        };
        Ok(Some(self.open_meta(&key, &id.0, &stored)?))
    }

    /// True when flag `flag` of `merged` is set only in versions that have not seen the host's
    /// latest clear of it (`HOST_CLEARS`): what a site that worked on the document meanwhile
    /// carries back, the merge letting restrictive flags win on concurrency.
    fn not_seeing_the_clear(
        &self,
        txn: &WriteTransaction,
        id: &DocId,
        flag: usize,
        merged: &DocumentMeta,
    ) -> Result<bool> {
        let cleared_at = self.host_clears(txn, id)?[flag];
        if cleared_at == 0 {
            return Ok(false);
        }
        let host = self.config.site_id;
        Ok(merged
            .versions()
            .iter()
            .filter(|(_, state)| flag_bits(state.flags)[flag])
            .all(|(clock, _)| clock.get(host) < cleared_at))
    }

    /// The host's clock counter at its latest clear of each flag of `id` (0: never).
    fn host_clears(&self, txn: &WriteTransaction, id: &DocId) -> Result<[u64; 3]> {
        match txn.open_table(HOST_CLEARS)?.get(&self.stored_id(id))? {
            Some(sealed) => {
                let plain = self
                    .keys
                    .registry
                    .open(&aad(&[b"host-clears", &id.0]), sealed.value())
                    .map_err(|_| {
                        Error::integrity("a record of the host's unmasking was altered")
                    })?;
                Ok(postcard::from_bytes(&plain)?)
            }
            None => Ok([0; 3]),
        }
    }

    /// Host: records the flags the host just cleared on a document (they were set in `before`
    /// and are not in `after`), with the host's counter of `after`, in `txn`.
    pub(super) fn record_host_clears(
        &self,
        txn: &WriteTransaction,
        before: Flags,
        after: &DocumentMeta,
    ) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        let (was, now) = (flag_bits(before), flag_bits(after.state().flags));
        if !(0..3).any(|i| was[i] && !now[i]) {
            return Ok(());
        }
        let id = after.facts.id;
        let mut counters = self.host_clears(txn, &id)?;
        let at = after.clock().get(self.config.site_id);
        for i in 0..3 {
            if was[i] && !now[i] {
                counters[i] = at;
            }
        }
        let sealed = self.keys.registry.seal(
            &aad(&[b"host-clears", &id.0]),
            &postcard::to_stdvec(&counters)?,
        )?;
        self.digested(txn, HOST_CLEARS)?
            .insert(&self.stored_id(&id), sealed.as_slice())?;
        Ok(())
    }

    /// The host's trace entry for a pushed document it returns to `origin`.
    pub(super) fn returned_entry(
        &self,
        txn: &WriteTransaction,
        origin: SiteId,
        meta: &DocumentMeta,
        refusal: Refusal,
    ) -> Result<AuditEntry> {
        let authority_version = super::read_u64(
            txn.open_table(META)?
                .get(meta_key::AUTHORITY_VERSION)?
                .as_ref()
                .map(|g| g.value()),
        );
        Ok(AuditEntry {
            at: self.now(),
            origin: self.config.site_id,
            actor: refusal.actor,
            action: match refusal.action {
                Some(action) => TraceAction::Access(action),
                None => TraceAction::Admin("change-returned".into()),
            },
            ins: Some(meta.facts.ins.matricule().to_string()),
            doc: Some(meta.facts.id),
            mode: AccessMode::Normal,
            allowed: false,
            rule: refusal.rule,
            outcome_reason: format!("returned to site {origin}: {}", refusal.reason),
            stated_reason: None,
            decided_offline: false,
            authority_version,
        })
    }
}

fn too_many_acts() -> Refusal {
    Refusal::new(
        TraceActor::System,
        None,
        0,
        format!("more than {ACTS_MAX} acts on one document"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn state(f: impl FnOnce(&mut DocState)) -> DocState {
        let mut s = DocState::default();
        f(&mut s);
        s
    }

    fn actions(before: &DocState, after: &DocState) -> Vec<Option<Action>> {
        narrowing(before, after)
            .into_iter()
            .map(Narrowed::action)
            .collect()
    }

    #[test]
    fn each_narrowing_maps_to_the_act_that_makes_it() {
        let none = DocState::default();
        assert!(narrowing(&none, &none).is_empty(), "nothing changed");
        let cases: [(DocState, Vec<Option<Action>>); 7] = [
            (
                state(|s| s.flags.masque_ps = true),
                vec![Some(Action::Mask)],
            ),
            (
                state(|s| s.flags.invisible_patient = true),
                vec![Some(Action::HideFromPatient)],
            ),
            (
                state(|s| s.flags.invisible_representatives = true),
                vec![Some(Action::HideFromRepresentatives)],
            ),
            (
                state(|s| s.availability = Some(Availability::Deleted)),
                vec![Some(Action::Delete)],
            ),
            (
                state(|s| s.availability = Some(Availability::Archived)),
                vec![None],
            ),
            (
                state(|s| s.availability = Some(Availability::Deprecated)),
                vec![Some(Action::Replace)],
            ),
            (
                state(|s| {
                    s.successors.insert(DocId([1; 16]), Default::default());
                }),
                vec![Some(Action::Replace)],
            ),
        ];
        for (after, expect) in cases {
            assert_eq!(actions(&none, &after), expect, "{after:?}");
        }
    }

    #[test]
    fn a_replacement_needs_replace_for_its_successor_and_its_deprecation() {
        let before = DocState::default();
        let after = state(|s| {
            s.successors.insert(DocId([1; 16]), Default::default());
            s.availability = Some(Availability::Deprecated);
        });
        assert_eq!(
            narrowing(&before, &after),
            vec![Narrowed::Deprecated, Narrowed::Replaced]
        );
    }

    #[test]
    fn only_what_the_host_does_not_have_yet_is_asked_for() {
        let before = state(|s| {
            s.flags.masque_ps = true;
            s.availability = Some(Availability::Deprecated);
            s.successors = BTreeMap::from([(DocId([1; 16]), Default::default())]);
        });
        // The same restrictions again, and a deletion and a second successor on top.
        let after = state(|s| {
            s.flags.masque_ps = true;
            s.availability = Some(Availability::Deleted);
            s.successors = BTreeMap::from([
                (DocId([1; 16]), Default::default()),
                (DocId([2; 16]), Default::default()),
            ]);
        });
        assert_eq!(
            narrowing(&before, &after),
            vec![Narrowed::Deleted, Narrowed::Replaced]
        );
        assert!(narrowing(&after, &after).is_empty());
        // Several at once: each one is asked for.
        let all = state(|s| {
            s.flags.masque_ps = true;
            s.flags.invisible_patient = true;
            s.flags.invisible_representatives = true;
            s.availability = Some(Availability::Deleted);
        });
        assert_eq!(
            actions(&DocState::default(), &all),
            vec![
                Some(Action::Mask),
                Some(Action::HideFromPatient),
                Some(Action::HideFromRepresentatives),
                Some(Action::Delete)
            ]
        );
    }

    #[test]
    fn a_widening_asks_for_no_act() {
        // Returned by `widens` before any act is looked at.
        let masked = state(|s| {
            s.flags.masque_ps = true;
            s.availability = Some(Availability::Deleted);
        });
        assert!(narrowing(&masked, &DocState::default()).is_empty());
    }
}
