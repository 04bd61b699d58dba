//! The host's and the site's operations as types of their own, over the shared core that is
//! `Replica` (keys and sealing, documents and reads, the trace, snapshots and durability).
//!
//! A replica is opened as one type whatever its role; `Replica::as_host` and `Replica::as_site`
//! (or, for a daemon's tasks, `HostReplica` and `SiteReplica` over an `Arc`) check the role
//! once and give the operations of that role, grouped by concern: `HostSync`, `HostAuthority`
//! and `HostOversight` at the host, `SiteSync` and `SiteLocal` at a site. An operation of the
//! other role does not exist on them, so code that holds a site cannot call the host's.
//!
//! Each view also dereferences to the core, so code that takes a `HostSync` reads the clock or
//! the configuration as before; through it, outside this crate, only the core's public methods
//! are reached.
//!
//! Invariants: each view's method forwards to the `Replica` method of the same name, which is
//! not public outside this crate; the role checks inside those methods stay (defence in depth:
//! the store's own tests call them on either role); obtaining a view is the one run-time
//! check, and it costs a comparison. At the host each operation runs again when it collided
//! with another host daemon's transaction (`Replica::retrying`; never at a site, whose file
//! has one writer).

use std::ops::Deref;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::*;
use crate::authority::SignedRecord;
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, RepresentativeId, Rpps, SiteId};
use crate::merge::DocumentMeta;
use crate::model::{
    AccessMode, Actor, Closure, DossierHead, EmergencyPrefs, GrantBasis, GrantState,
};
use crate::time::Millis;

impl Replica {
    /// The host's operations, when this replica is the host.
    pub fn as_host(&self) -> Option<Host<'_>> {
        (self.config.role == Role::Host).then_some(Host(self))
    }

    /// The site's operations, when this replica is a site.
    pub fn as_site(&self) -> Option<Site<'_>> {
        (self.config.role == Role::Site).then_some(Site(self))
    }
}

/// The host's replica, borrowed: its operations by concern, and the core.
#[derive(Debug, Clone, Copy)]
pub struct Host<'r>(&'r Replica);

impl<'r> Host<'r> {
    /// Serving the sites.
    pub fn sync(self) -> HostSync<'r> {
        HostSync(self.0)
    }

    /// The host's decisions.
    pub fn authority(self) -> HostAuthority<'r> {
        HostAuthority(self.0)
    }

    /// The host's watch over what happened.
    pub fn oversight(self) -> HostOversight<'r> {
        HostOversight(self.0)
    }
}

/// A site's replica, borrowed: its operations by concern, and the core.
#[derive(Debug, Clone, Copy)]
pub struct Site<'r>(&'r Replica);

impl<'r> Site<'r> {
    /// Its sessions with the host.
    pub fn sync(self) -> SiteSync<'r> {
        SiteSync(self.0)
    }

    /// What it decides on its own.
    pub fn local(self) -> SiteLocal<'r> {
        SiteLocal(self.0)
    }
}

/// The host's replica, shared (a daemon's tasks each hold one): checked once, when made.
#[derive(Debug, Clone)]
pub struct HostReplica(Arc<Replica>);

impl HostReplica {
    /// `replica`, if it is the host.
    pub fn new(replica: Arc<Replica>) -> Result<HostReplica> {
        if replica.config.role != Role::Host {
            return Err(Error::invalid(
                "this replica is a site's, not the national host's",
            ));
        }
        Ok(HostReplica(replica))
    }

    /// Its operations by concern.
    pub fn host(&self) -> Host<'_> {
        Host(&self.0)
    }

    /// Serving the sites.
    pub fn sync(&self) -> HostSync<'_> {
        HostSync(&self.0)
    }

    /// The host's decisions.
    pub fn authority(&self) -> HostAuthority<'_> {
        HostAuthority(&self.0)
    }

    /// The host's watch over what happened.
    pub fn oversight(&self) -> HostOversight<'_> {
        HostOversight(&self.0)
    }

    /// The shared replica, for what takes the core.
    pub fn arc(&self) -> &Arc<Replica> {
        &self.0
    }
}

impl Deref for HostReplica {
    type Target = Replica;
    fn deref(&self) -> &Replica {
        &self.0
    }
}

/// A site's replica, shared (a daemon's tasks each hold one): checked once, when made.
#[derive(Debug, Clone)]
pub struct SiteReplica(Arc<Replica>);

impl SiteReplica {
    /// `replica`, if it is a site.
    pub fn new(replica: Arc<Replica>) -> Result<SiteReplica> {
        if replica.config.role != Role::Site {
            return Err(Error::invalid(
                "this replica is the national host's, not a site's",
            ));
        }
        Ok(SiteReplica(replica))
    }

    /// Its operations by concern.
    pub fn site(&self) -> Site<'_> {
        Site(&self.0)
    }

    /// Its sessions with the host.
    pub fn sync(&self) -> SiteSync<'_> {
        SiteSync(&self.0)
    }

    /// What it decides on its own.
    pub fn local(&self) -> SiteLocal<'_> {
        SiteLocal(&self.0)
    }

    /// The shared replica, for what takes the core.
    pub fn arc(&self) -> &Arc<Replica> {
        &self.0
    }
}

impl Deref for SiteReplica {
    type Target = Replica;
    fn deref(&self) -> &Replica {
        &self.0
    }
}

/// A shared replica as the role it has.
#[derive(Debug, Clone)]
pub enum Opened {
    /// The national host.
    Host(HostReplica),
    /// A site.
    Site(SiteReplica),
}

impl Opened {
    /// `replica`, as its role.
    pub fn of(replica: Arc<Replica>) -> Opened {
        match replica.config.role {
            Role::Host => Opened::Host(HostReplica(replica)),
            Role::Site => Opened::Site(SiteReplica(replica)),
        }
    }

    /// The shared replica.
    pub fn replica(&self) -> &Arc<Replica> {
        match self {
            Opened::Host(h) => &h.0,
            Opened::Site(s) => &s.0,
        }
    }

    /// The host, if it is.
    pub fn host(&self) -> Option<&HostReplica> {
        match self {
            Opened::Host(h) => Some(h),
            Opened::Site(_) => None,
        }
    }

    /// The site, if it is.
    pub fn site(&self) -> Option<&SiteReplica> {
        match self {
            Opened::Site(s) => Some(s),
            Opened::Host(_) => None,
        }
    }
}

/// What the host's session needs to serve one site: its pushes, traces and bodies in, its log,
/// heartbeats and bodies out, and what the host keeps of each site (marks, returns, owed bodies).
#[derive(Debug, Clone, Copy)]
pub struct HostSync<'r>(&'r Replica);

impl HostSync<'_> {
    /// Host: the path to each site as the host's connections last measured it.
    pub fn link_paths(&self) -> Result<Vec<(SiteId, LinkPath)>> {
        self.0.site_link_paths()
    }

    /// Host: records the path to `site` as a connection measured it (in a redb file, not waited
    /// for on disk).
    pub fn set_link_path(&self, site: SiteId, path: LinkPath) -> Result<()> {
        self.0.retrying(|| self.0.set_site_link_path(site, path))
    }

    /// Host: records the chain key `site` presents, or checks it against the one held. A
    /// different key is refused, and the refusal traced.
    pub fn admit_chain_key(&self, site: SiteId, key: &[u8; 32]) -> Result<()> {
        self.0.retrying(|| self.0.admit_chain_key(site, key))
    }

    /// Host: the head of `site`'s log and, when the site's `cursor` is at it, a heartbeat that
    /// says so (`Covers::Log`), both read in one snapshot: the answer to a site's `Hello`. Costs
    /// one lookup, whatever the site holds.
    pub fn site_heartbeat(&self, site: SiteId, cursor: u64) -> Result<(u64, Option<SignedRecord>)> {
        self.0.retrying(|| self.0.site_heartbeat(site, cursor))
    }

    /// Host: the last entry of `origin`'s trace held here, and its chain hash (`(0, zeros)`
    /// when none): the site checks it against its own.
    pub fn trace_head_held(&self, origin: SiteId) -> Result<(u64, [u8; 32])> {
        self.0.retrying(|| self.0.trace_head_held(origin))
    }

    /// Host: records that `site`, at the host's time `at`, had a trace of `head` entries, all
    /// held here: its later entries were made after `at`.
    pub fn record_trace_contact(&self, site: SiteId, head: u64, at: Millis) -> Result<()> {
        self.0
            .retrying(|| self.0.record_trace_contact(site, head, at))
    }

    /// The highest change sequence applied here from `origin` (what a site resumes pushing
    /// after).
    pub fn applied_mark(&self, origin: SiteId) -> Result<u64> {
        self.0.retrying(|| self.0.applied_mark(origin))
    }

    /// Host: forgets what was returned to `site` once the site says it holds it in quarantine:
    /// it acknowledged its outbox up to `outbox_acked`, at or past every change the host
    /// applied from it (checked in the same transaction, so a push applied meanwhile keeps its
    /// returns). Writes only when there is something to forget.
    pub fn forget_returned(&self, site: SiteId, outbox_acked: u64) -> Result<()> {
        self.0
            .retrying(|| self.0.forget_returned(site, outbox_acked))
    }

    /// Host: everything returned to `site` so far (repeated at each session's start):
    /// dossiers first, then documents in id order.
    pub fn returned_to(&self, site: SiteId) -> Result<Vec<Returned>> {
        self.0.retrying(|| self.0.returned_to(site))
    }

    /// Host: the bodies `site` owes, with the bytes of each already kept here, in id order.
    pub fn bodies_owed_by(&self, site: SiteId) -> Result<Vec<(DocId, u64)>> {
        self.0.retrying(|| self.0.bodies_owed_by(site))
    }

    /// `apply_remote_batch_with_bodies`, answering as well what the host tells the site that
    /// pushed the batch, read in the same transaction: the origin's mark before it, and the
    /// bodies of its documents still lacking here. Inside `deferring_syncs`, nothing after the
    /// commit waits for its sync.
    pub fn apply_pushed(
        &self,
        origin: SiteId,
        changes: &[(u64, Change)],
        bodies: &[BodyPiece],
    ) -> Result<PushApplied> {
        self.0
            .retrying(|| self.0.apply_pushed(origin, changes, bodies))
    }

    /// Merges change `seq` from `origin` exactly once.
    pub fn apply_remote(&self, origin: SiteId, seq: u64, change: &Change) -> Result<Applied> {
        self.0.retrying(|| self.0.apply_remote(origin, seq, change))
    }

    /// Merges a batch of changes from `origin`, in order and each exactly once, in one
    /// transaction: all of them or none.
    pub fn apply_remote_batch(
        &self,
        origin: SiteId,
        changes: &[(u64, Change)],
    ) -> Result<Vec<Applied>> {
        self.0
            .retrying(|| self.0.apply_remote_batch(origin, changes))
    }

    /// `apply_remote_batch`, with the whole bodies of some of the batch's new documents
    /// (`bodies`, offset 0): each is checked against its document's size and content hash and
    /// stored with the metadata, in the same transaction. A body that does not match is
    /// ignored (the document's body is then missing, and asked for as any other).
    pub fn apply_remote_batch_with_bodies(
        &self,
        origin: SiteId,
        changes: &[(u64, Change)],
        bodies: &[BodyPiece],
    ) -> Result<Vec<Applied>> {
        self.0
            .apply_remote_batch_with_bodies(origin, changes, bodies)
    }

    /// Host: stores another site's trace entries, in order and exactly once, each checked as
    /// the next link of the site's chain under its chain key; an entry already held is compared
    /// with the one sent. `signed` is the site's signed head of the last entry (its signature
    /// checked by the caller against `signed.signer`): required with any entry, kept when it is
    /// newer than the one held. Returns the new mark. A refusal changes nothing but the host's
    /// trace.
    pub fn apply_remote_traces(
        &self,
        origin: SiteId,
        records: &[TraceRecord],
        signed: Option<&TraceHeadEvidence>,
    ) -> Result<u64> {
        self.0
            .retrying(|| self.0.apply_remote_traces(origin, records, signed))
    }

    /// Host: a trace entry of the host that says a site's trace was refused (`what`: a short
    /// reason; ids only).
    pub fn trace_refusal(&self, site: SiteId, what: &str) -> Result<()> {
        self.0.retrying(|| self.0.trace_refusal(site, what))
    }

    /// Host: the newest head of `origin`'s trace that the site signed, with the certificate
    /// that signed it (`None` before its first signed batch).
    pub fn signed_trace_head(&self, origin: SiteId) -> Result<Option<TraceHeadEvidence>> {
        self.0.retrying(|| self.0.signed_trace_head(origin))
    }

    /// Host: `receive_body_pieces` for pieces `site` sent. A piece is taken only for a body
    /// `site` owes: a document written in its name whose body the host recorded as owed by it
    /// when it applied the metadata (`OWED_BODIES`); any other piece refuses the whole batch
    /// and changes nothing (DOMAIN §5: the host trusts no site). A complete body that fails its
    /// content hash is dropped with its kept pieces, and stays owed: the owing site is asked for
    /// it again at its next `Welcome`, so a bogus body never cancels a debt.
    pub fn receive_pieces_from(&self, site: SiteId, pieces: &[BodyPiece]) -> Result<Vec<bool>> {
        self.0.retrying(|| self.0.receive_pieces_from(site, pieces))
    }

    /// Host: `site`'s log after `after`, at most `limit` entries, as the site will apply it
    /// (without a heartbeat: `pull_page` is what a session sends).
    pub fn pull(&self, site: SiteId, after: u64, limit: usize) -> Result<Vec<(u64, PullItem)>> {
        self.0.retrying(|| self.0.pull(site, after, limit))
    }

    /// Host: one batch of `site`'s log after `after`: at most `max_items` items (an entry that
    /// alone brings more, a dossier entering the scope, goes whole; an entry is never split),
    /// then the heartbeat, read in the same snapshot. The heartbeat's sequence is the last entry
    /// the batch covers, so the site's cursor passes the entries it no longer receives.
    pub fn pull_page(&self, site: SiteId, after: u64, max_items: usize) -> Result<PullPage> {
        self.0.retrying(|| self.0.pull_page(site, after, max_items))
    }

    /// Host: `pull_page`, the batch also ending before the first entry that would take the
    /// items' `weigh` past `max_weight` (the first entry goes whole, whatever it weighs): a
    /// session weighs the bodies that travel with a batch, so a batch carries all of them.
    pub fn pull_page_within(
        &self,
        site: SiteId,
        after: u64,
        max_items: usize,
        max_weight: u64,
        weigh: &dyn Fn(&PullItem) -> u64,
    ) -> Result<PullPage> {
        self.0.retrying(|| {
            self.0
                .pull_page_within(site, after, max_items, max_weight, weigh)
        })
    }

    /// Host: a body for `site`, only if its dossier is in that site's scope.
    pub fn body_for_site(
        &self,
        site: SiteId,
        id: &DocId,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        self.0.retrying(|| self.0.body_for_site(site, id))
    }

    /// Host: the last sequence of `site`'s log (0 when empty).
    pub fn log_head(&self, site: SiteId) -> Result<u64> {
        self.0.retrying(|| self.0.log_head(site))
    }

    /// Host: `site` says it was restored from a backup taken at `taken_at` (its say-so: it
    /// only decides what the host traces and sends it again). Traces it, for the operator, and
    /// enters every dossier of the site's scope in its log again, so the site's next pull
    /// brings back everything it may hold, its own documents written after the backup among
    /// them (`site_view` decides what, as for any pull). Answers the dossiers entered again.
    pub fn record_site_restore(
        &self,
        site: SiteId,
        taken_at: crate::time::Millis,
    ) -> Result<usize> {
        self.0
            .retrying(|| self.0.record_site_restore(site, taken_at))
    }

    /// Host: the entries of `origin`'s trace held here after `after` (at most `limit`), for a
    /// restored site taking its own trace back (`restored`).
    pub fn traces_of(&self, origin: SiteId, after: u64, limit: usize) -> Result<Vec<TraceRecord>> {
        self.0.retrying(|| self.0.traces_of(origin, after, limit))
    }

    /// Host: the last trace entry of `origin` held here.
    pub fn trace_mark(&self, origin: SiteId) -> Result<u64> {
        self.0.retrying(|| self.0.trace_mark(origin))
    }
}

/// The host's decisions, each a signed record the sites take as it is: dossiers opened, closed,
/// reopened and purged, grants, representatives, emergency preferences, the habilitation matrix;
/// and which professionals practise at which site, and the sites' requests.
#[derive(Debug, Clone, Copy)]
pub struct HostAuthority<'r>(&'r Replica);

impl HostAuthority<'_> {
    /// Host: creates a dossier. Refused if one exists for this INS.
    pub fn create_dossier(&self, d: NewDossier) -> Result<DossierHead> {
        self.0.retrying(|| self.0.create_dossier(d.clone()))
    }

    /// Host: closes a dossier (the holder's request). Its documents are archived on the host
    /// and every access is refused; sites purge their copy when they receive the closure. With
    /// `deletion_requested`, the holder asked that it be deleted rather than archived: the host
    /// may purge it at once (`purge_dossier`).
    pub fn close_dossier(&self, ins: &Ins, reason: &str, deletion_requested: bool) -> Result<()> {
        self.0
            .retrying(|| self.0.close_dossier(ins, reason, deletion_requested))
    }

    /// Host: the holder of a closed dossier asks that it be deleted rather than archived until
    /// its retention ends: the closed head is signed again with the time of the request, and the
    /// host may purge the dossier at once. Only while closed (not for an active dossier, nor a
    /// purged one); asking twice keeps the first request.
    pub fn request_deletion(&self, ins: &Ins) -> Result<Closure> {
        self.0.retrying(|| self.0.request_deletion(ins))
    }

    /// Host: reopens a closed dossier (DOMAIN §6: reopening brings the archive back). A new
    /// active head, with a higher sequence than the closure, is signed; the host kept the
    /// dossier's key, documents and grants while it was closed, and every site whose scope
    /// holds the dossier receives it again whole at its next pull (`LogItem::Enter`). The purge
    /// receipts sites returned for the closure are dropped with it: they answer a closure no
    /// longer in force. A purged dossier cannot be reopened: its key is destroyed.
    pub fn reopen_dossier(&self, ins: &Ins, reason: &str) -> Result<DossierHead> {
        self.0.retrying(|| self.0.reopen_dossier(ins, reason))
    }

    /// Host: purges a closed dossier, then publishes a signed `Purged` record so that sites
    /// that missed the closure purge too. Only once the retention has ended (`RETENTION_YEARS`
    /// after the closure, by this replica's clock) or when the signed closure records the
    /// holder's deletion request (DOMAIN §6); before that it is refused (denied, traced) with
    /// the date the retention ends, and nothing changes.
    pub fn purge_dossier(&self, ins: &Ins) -> Result<()> {
        self.0.retrying(|| self.0.purge_dossier(ins))
    }

    /// Host: changes a dossier's emergency preferences; returns them as now in force.
    pub fn update_emergency(
        &self,
        ins: &Ins,
        change: impl FnOnce(&mut EmergencyPrefs),
    ) -> Result<EmergencyPrefs> {
        self.0.update_emergency(ins, change)
    }

    /// Host: publishes a new habilitation matrix (its version must grow).
    pub fn set_matrix(&self, matrix: HabilitationMatrix) -> Result<()> {
        self.0.retrying(|| self.0.set_matrix(matrix.clone()))
    }

    /// Host: stores the sealed setting `name` (as `Replica::put_sealed`: the PKI register) and,
    /// in the same commit, when `refused` (fingerprints of the site certificates the host
    /// refuses) is not the list in force, signs the new list
    /// (`AuthorityRecord::RefusedCertificates`) and logs it for every site. Answers its
    /// sequence, or `None` when the list was unchanged.
    pub fn put_sealed_refusing(
        &self,
        name: &str,
        value: &[u8],
        refused: &[[u8; 32]],
    ) -> Result<Option<u64>> {
        self.0
            .retrying(|| self.0.put_sealed_refusing(name, value, refused.to_vec()))
    }

    /// Host: sets a professional's grant on a dossier: `state` with `basis`, ending at `until`
    /// if given. With basis `medecin-traitant` and state active, designates the médecin traitant
    /// (see the module's invariants).
    pub fn set_grant(
        &self,
        ins: &Ins,
        rpps: &Rpps,
        state: GrantState,
        basis: GrantBasis,
        until: Option<Millis>,
    ) -> Result<()> {
        self.0
            .retrying(|| self.0.set_grant(ins, rpps, state, basis, until))
    }

    /// Host: records a legal representative of the holder of `ins`, in a new signed head.
    /// Returns the head with their id.
    pub fn add_representative(&self, ins: &Ins, new: NewRepresentative) -> Result<DossierHead> {
        self.0
            .retrying(|| self.0.add_representative(ins, new.clone()))
    }

    /// Host: ends representative `id` of the holder of `ins`, in a new signed head: from the
    /// moment a replica holds it, that id has no access there (row 12).
    pub fn remove_representative(&self, ins: &Ins, id: RepresentativeId) -> Result<DossierHead> {
        self.0.retrying(|| self.0.remove_representative(ins, id))
    }

    /// Host: binds `rpps` (registered here) to `site`, or unbinds them. Bound, the dossiers
    /// where they hold an active grant enter the site's scope; unbound, the grant no longer
    /// keeps them there.
    pub fn bind_professional(&self, site: SiteId, rpps: &Rpps, on: bool) -> Result<()> {
        self.0.retrying(|| self.0.bind_professional(site, rpps, on))
    }

    /// Host: the professionals bound to `site`, by RPPS.
    pub fn site_professionals(&self, site: SiteId) -> Result<Vec<Rpps>> {
        self.0.retrying(|| self.0.site_professionals(site))
    }

    /// Host: the requests of every site still waiting for a decision.
    pub fn site_requests(&self) -> Result<Vec<SiteRequest>> {
        self.0.retrying(|| self.0.site_requests())
    }

    /// Host: accepts `site`'s pin of `ins` (the dossier enters its scope: an appointment with
    /// the holder's consent is recorded here), or refuses it / ends an accepted one.
    pub fn decide_pin(&self, site: SiteId, ins: &Ins, accept: bool) -> Result<()> {
        self.0.retrying(|| self.0.decide_pin(site, ins, accept))
    }
}

/// The host's watch over what happened: emergencies to review, notifications for the patients, the
/// announcement timer, emergency scopes that ended, purge receipts the sites returned.
#[derive(Debug, Clone, Copy)]
pub struct HostOversight<'r>(&'r Replica);

impl HostOversight<'_> {
    /// Host: the emergencies judged here, in id order; with `pending`, only those not reviewed
    /// (the others are not opened).
    pub fn emergencies(&self, pending: bool) -> Result<Vec<Emergency>> {
        self.0.retrying(|| self.0.emergencies(pending))
    }

    /// Host: records `by`'s review of emergency `id` with `note`, traced. A second review of
    /// the same emergency is refused.
    pub fn review_emergency(&self, id: u64, by: &str, note: &str) -> Result<Emergency> {
        self.0.retrying(|| self.0.review_emergency(id, by, note))
    }

    /// Host: ends the emergency reason of every scope whose time is over (the dossier leaves
    /// the site unless another reason keeps it). Answers how many ended.
    pub fn expire_emergency_access(&self) -> Result<usize> {
        self.0.retrying(|| self.0.expire_emergency_access())
    }

    /// Host: the notifications (of one dossier, if given), in id order. An operator read,
    /// traced (`operator-notifications-list`).
    pub fn notifications(&self, dossier: Option<&Ins>) -> Result<Vec<Notification>> {
        self.0.retrying(|| self.0.notifications(dossier))
    }

    /// Host: the notifications not yet spooled (ids above the spool's mark), for this daemon to
    /// hand to the messaging gateway; none while another daemon holds the spool's turn.
    pub fn notifications_to_spool(&self) -> Result<Vec<Notification>> {
        self.0.retrying(|| self.0.notifications_to_spool())
    }

    /// Host: records that notifications up to `id` are spooled (never lowered).
    pub fn mark_notifications_spooled(&self, id: u64) -> Result<()> {
        self.0.retrying(|| self.0.mark_notifications_spooled(id))
    }

    /// Host: one pass of the announcement timer over the documents hidden from their patient
    /// (`HIDDEN_DOCS`): it opens only those due to be told or released. Runs at the daemon's
    /// start and every hour; a site answers an empty pass.
    pub fn run_announcement_timer(&self) -> Result<AnnouncementPass> {
        self.0.retrying(|| self.0.run_announcement_timer())
    }

    /// Host: the purge receipts sites returned for a dossier.
    pub fn site_purge_receipts(&self, ins: &Ins) -> Result<Vec<(SiteId, PurgeReceipt)>> {
        self.0.retrying(|| self.0.site_purge_receipts(ins))
    }
}

/// What the site's session needs: its outbox and trace going up, the host's log and bodies coming
/// down, what the host returned, and a restored site taking back its own trace.
#[derive(Debug, Clone, Copy)]
pub struct SiteSync<'r>(&'r Replica);

impl SiteSync<'_> {
    /// Local changes after `after`, in order, at most `limit`. A document's change carries its
    /// current merged metadata and every act queued for it from that entry on, including those
    /// queued after the `limit` entries returned (they are in the metadata too).
    ///
    /// An entry that cannot be read (a value stored by an earlier build that this one refuses,
    /// a damaged row) never stops sync: it is held back (`withheld`) with why, and a
    /// `Change::Withheld` travels in its place.
    pub fn outbox(&self, after: u64, limit: usize) -> Result<Vec<(u64, Change)>> {
        self.0.outbox(after, limit)
    }

    /// The highest outbox sequence this replica ever issued.
    pub fn outbox_issued(&self) -> Result<u64> {
        self.0.outbox_issued()
    }

    /// The outbox is acknowledged (by the host) up to here.
    pub fn outbox_acked(&self) -> Result<u64> {
        self.0.outbox_acked()
    }

    /// What the host held of this site (its last change, its last trace entry) at the end of
    /// the last round that ended well, if no round failed since: where the next round may
    /// push from behind its `Hello`.
    pub fn host_marks(&self) -> Result<Option<(u64, u64)>> {
        self.0.host_marks()
    }

    /// Records what the host holds at the end of a round that ended well, or forgets it
    /// (`None`) when a round failed.
    pub fn set_host_marks(&self, marks: Option<(u64, u64)>) -> Result<()> {
        self.0.set_host_marks(marks)
    }

    /// The path to the host as the last connection that measured it left it, if any.
    pub fn link_path(&self) -> Result<Option<LinkPath>> {
        self.0.link_path()
    }

    /// Records the path to the host as a connection measured it (not waited for on disk).
    pub fn set_link_path(&self, path: LinkPath) -> Result<()> {
        self.0.set_link_path(path)
    }

    /// Drops outbox entries up to `upto`, acknowledged by the peer.
    ///
    /// The commit is not waited for on disk (redb `Durability::None`; the next durable commit
    /// carries it): the peer holds these entries durably already, so a crash that loses the
    /// acknowledgement only sends them again, the peer skips them as duplicates, and its next
    /// `Welcome` acknowledges them. No trace entry rides on this transaction (it is not a
    /// `Writer`), so none can be lost with it.
    pub fn ack_outbox(&self, upto: u64) -> Result<()> {
        self.0.ack_outbox(upto)
    }

    /// This site's trace entries after `after` (at most `limit`), for pushing to the host.
    pub fn traces_after(&self, after: u64, limit: usize) -> Result<Vec<TraceRecord>> {
        self.0.traces_after(after, limit)
    }

    /// Site: the key this site chains its trace with, for the host to verify it (sent over the
    /// mutually authenticated link only).
    pub fn trace_chain_key(&self) -> [u8; 32] {
        self.0.trace_chain_key()
    }

    /// Site: the chain hash of this site's own trace entry `seq`, if it holds it in its table
    /// (an entry the host acknowledged was sent from there).
    pub fn own_trace_hash(&self, seq: u64) -> Result<Option<[u8; 32]>> {
        self.0.own_trace_hash(seq)
    }

    /// Site: applies a pulled batch (signed records verified under the pinned host key,
    /// documents merged, scope exits purged) and advances the cursor, in one transaction; then
    /// purges what the batch closed or took out of scope. The batch's last heartbeat renews the
    /// lease only when it names this site and the cursor the batch reaches (`PullReport::lease`).
    /// A signed time ahead of this replica's clock refuses the whole batch.
    pub fn apply_pull(&self, items: &[(u64, PullItem)]) -> Result<PullReport> {
        self.0.apply_pull(items)
    }

    /// `apply_pull`, with the whole bodies (offset 0) of some of the pulled documents: each is
    /// checked against its document's size and content hash and stored with the metadata, in
    /// the same transaction (one that does not match is left out: the body is then fetched).
    pub fn apply_pull_with_bodies(
        &self,
        items: &[(u64, PullItem)],
        bodies: &[super::sync::BodyPiece],
    ) -> Result<PullReport> {
        self.0.apply_pull_with_bodies(items, bodies)
    }

    /// A body in clear, for sending to another replica over the authenticated channel. Not an
    /// access decision: the body stays inside the system and is re-sealed by the receiver.
    pub fn body_for_sync(&self, id: &DocId) -> Result<Zeroizing<Vec<u8>>> {
        self.0.body_for_sync(id)
    }

    /// The whole bodies of the documents of `metas`, in one snapshot, to travel with them:
    /// `None` for one this replica does not hold (any more), or whose key or stored body fails
    /// its checks (the peer then asks for it, and `body_for_sync` reports the error).
    pub fn bodies_for_sync(
        &self,
        metas: &[&DocumentMeta],
    ) -> Result<Vec<Option<Zeroizing<Vec<u8>>>>> {
        self.0.bodies_for_sync(metas)
    }

    /// Site: keeps one piece of a body arriving from the host, durably, so a cut transfer
    /// resumes where it stopped. A piece must start where the kept bytes end (one already kept is
    /// ignored); `total` must be the size in the metadata. Once the last piece is in, the body
    /// is checked against the content hash and stored, in the same transaction. Answers true
    /// when the body is complete (now or before).
    pub fn receive_body_piece(
        &self,
        id: &DocId,
        offset: u64,
        total: u64,
        bytes: &[u8],
    ) -> Result<bool> {
        self.0.receive_body_piece(id, offset, total, bytes)
    }

    /// Site: `receive_body_piece` for several pieces (of one body or of several) from the host,
    /// in one transaction: many small bodies cost one durable commit. A bad piece refuses the
    /// whole batch; a body whose hash does not match is dropped (the rest of the batch is kept)
    /// and reported as an error. The host takes pieces only from a site, with
    /// `receive_pieces_from`.
    pub fn receive_body_pieces(&self, pieces: &[BodyPiece]) -> Result<Vec<bool>> {
        self.0.receive_body_pieces(pieces)
    }

    /// Site: the handover of dossier `ins` to peer site `to` by professional `by` (registered
    /// here); refused, traced, when the table refuses `by` a write on it (`handover`). Traced
    /// with `record_handover` once the peer admitted it.
    pub fn handover_out(
        &self,
        ins: &Ins,
        by: &Rpps,
        reason: Option<&str>,
        to: SiteId,
    ) -> Result<Handover> {
        self.0.handover_out(ins, by, reason, to)
    }

    /// Site, on a peer's ask: the handover of dossier `ins` to peer site `from`, which asked
    /// for it for its professional `asker`; refused, traced, unless a professional registered
    /// here had an access to it within `ASK_CARE_WINDOW` (`handover`). Traced with
    /// `record_handover` (by that professional) once the peer admitted it.
    pub fn handover_asked(
        &self,
        ins: &Ins,
        from: SiteId,
        asker: &Rpps,
        reason: Option<&str>,
    ) -> Result<Handover> {
        self.0.handover_asked(ins, from, asker, reason)
    }

    /// Site: traces the handover of `ins` by `by` to site `to`, once the peer admitted it
    /// (`handover`).
    pub fn record_handover(
        &self,
        ins: &Ins,
        by: &Rpps,
        reason: Option<&str>,
        to: SiteId,
    ) -> Result<()> {
        self.0.record_handover(ins, by, reason, to)
    }

    /// Site: the trace entries peers handed over about dossier `ins` (kept apart from this
    /// site's trace).
    pub fn relayed_traces(&self, ins: &Ins) -> Result<Vec<TraceRecord>> {
        self.0.relayed_traces(ins)
    }

    /// Site: admits what peer site `from` (named by its certificate) handed over, decided
    /// again here, traced; anything that does not verify refuses it whole (`handover`).
    pub fn admit_handover(&self, from: SiteId, handover: &Handover) -> Result<HandoverReport> {
        self.0.admit_handover(from, handover)
    }

    /// Site: keeps what the host returned when it had applied this site's changes up to
    /// `applied` (the `Welcome`'s or the `PushAck`'s mark). A refused dossier that is still
    /// this site's own, its proposal decided, is dropped first, everything written in it going
    /// to the quarantine under the host's reason; then each returned document not kept yet
    /// is. Idempotent.
    pub fn quarantine_returned(&self, returned: &[Returned], applied: u64) -> Result<()> {
        self.0.quarantine_returned(returned, applied)
    }

    /// Restored site: stores the host's copy of this site's own trace entries that follow its
    /// head, each checked as the next link of its chain under its own chain key. Answers the
    /// new head. Nothing is stored unless every entry checks.
    pub fn restore_own_traces(&self, records: &[TraceRecord]) -> Result<u64> {
        self.0.restore_own_traces(records)
    }

    /// Restored site, once it holds every trace entry the host holds of it: checks its chain
    /// ends at the host's `(seq, hash)` (or holds it, when the host holds less), jumps the
    /// outbox mark to at least `host_changes` (the host's last applied change of this site:
    /// the next change takes the sequence after it, and queued entries up to it are done
    /// with), traces `restored-from-backup`, clears the mark and thaws the chain, in one
    /// transaction. Then it syncs on as any site.
    pub fn finish_restore(&self, host_changes: u64, host_traces: (u64, [u8; 32])) -> Result<()> {
        self.0.finish_restore(host_changes, host_traces)
    }
}

/// What a site decides on its own between rounds: dossiers opened here, consent given in person,
/// emergency fetches, pins, and its quarantine.
#[derive(Debug, Clone, Copy)]
pub struct SiteLocal<'r>(&'r Replica);

impl SiteLocal<'_> {
    /// Site: opens a dossier here for `creator` (a professional registered here, or the
    /// holder). Usable at once; proposed to the host at the next sync when its identity is
    /// qualified, held here until `qualify_dossier` otherwise.
    pub fn open_dossier_here(&self, d: super::NewDossier, creator: &Actor) -> Result<DossierHead> {
        self.0.open_dossier_here(d, creator)
    }

    /// Site: records that the identity of a dossier opened here was checked (ID document and
    /// INSi) by `rpps`; what was held for it enters the outbox.
    pub fn qualify_dossier(&self, ins: &Ins, rpps: &Rpps) -> Result<()> {
        self.0.qualify_dossier(ins, rpps)
    }

    /// Site: the dossiers opened here that the host has not answered yet.
    pub fn local_dossier_state(&self, ins: &Ins) -> Result<Option<LocalDossierState>> {
        self.0.local_dossier_state(ins)
    }

    /// Site: the INS of every dossier opened here that the host has not answered yet.
    pub fn local_dossiers(&self) -> Result<Vec<Ins>> {
        self.0.local_dossiers()
    }

    /// Site: records the consent the patient of `ins` gave in person to `rpps`, usable here at
    /// once for `PENDING_VALID` and queued for the host to confirm or refuse.
    pub fn record_pending_grant(&self, ins: &Ins, rpps: &Rpps) -> Result<()> {
        self.0.record_pending_grant(ins, rpps)
    }

    /// Site: asks the host for the dossier of `ins`, for `rpps` (registered here) reading it in
    /// an emergency `mode` with `reason`; sent at the next round (at once through the daemon).
    pub fn request_emergency_fetch(
        &self,
        ins: &Ins,
        rpps: &Rpps,
        mode: AccessMode,
        reason: &str,
    ) -> Result<()> {
        self.0.request_emergency_fetch(ins, rpps, mode, reason)
    }

    /// Site: pins a dossier into this site's scope (or unpins it); the host brings it in at the
    /// next sync (e.g. tomorrow's patients of a mobile unit).
    pub fn pin(&self, ins: &crate::ids::Ins, on: bool) -> Result<()> {
        self.0.pin(ins, on)
    }

    /// The body of a quarantined document, for its author or the host operator; every
    /// attempt is traced (durably, before the body is returned).
    pub fn quarantined_body(&self, actor: &Actor, id: &DocId) -> Result<Zeroizing<Vec<u8>>> {
        self.0.quarantined_body(actor, id)
    }

    /// Sends a quarantined document again, as `actor` (its author), as a new document of the
    /// dossier `ins`: the decision table decides as for any write, and the quarantine records
    /// the refiling in the same transaction. Answers the new document's id.
    pub fn refile_quarantined(&self, actor: &Actor, id: &DocId, ins: &Ins) -> Result<DocId> {
        self.0.refile_quarantined(actor, id, ins)
    }
}

/// Views dereference to the core (`Replica`'s public methods).
macro_rules! core_behind {
    ($($view:ident),*) => {$(
        impl Deref for $view<'_> {
            type Target = Replica;
            fn deref(&self) -> &Replica {
                self.0
            }
        }
    )*};
}

core_behind!(
    Host,
    Site,
    HostSync,
    HostAuthority,
    HostOversight,
    SiteSync,
    SiteLocal
);

#[cfg(test)]
mod tests {
    use super::*;

    fn init(dir: &tempfile::TempDir, role: Role) -> Arc<Replica> {
        let options = InitOptions {
            role,
            name: role.as_str().into(),
            site_id: (role == Role::Site).then_some(SiteId(7)),
            key: KeySource::File,
            host_key: None,
            lease_hours: None,
        };
        let clock: Clock = Arc::new(|| 1_700_000_000_000);
        Arc::new(Replica::init(dir.path(), options, clock).expect("init"))
    }

    #[test]
    fn a_replica_is_the_role_it_was_made_with_and_no_other() {
        let (hd, sd) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let (host, site) = (init(&hd, Role::Host), init(&sd, Role::Site));
        assert!(host.as_host().is_some() && host.as_site().is_none());
        assert!(site.as_site().is_some() && site.as_host().is_none());
        assert!(HostReplica::new(host.clone()).is_ok());
        assert!(matches!(
            HostReplica::new(site.clone()),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            SiteReplica::new(host.clone()),
            Err(Error::Invalid(_))
        ));
        assert!(Opened::of(host.clone()).host().is_some());
        assert!(Opened::of(site.clone()).site().is_some());
        assert!(Opened::of(site).host().is_none());
        // A view forwards to the replica it was made from.
        let view = HostReplica::new(host.clone()).expect("host");
        assert_eq!(
            view.sync().log_head(SiteId(7)).expect("head"),
            host.log_head(SiteId(7)).expect("head")
        );
    }
}
