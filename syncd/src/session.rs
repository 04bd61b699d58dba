//! The sync session between a site and the host, as a pure state machine: it takes
//! decoded messages and the replica, and returns the messages to send. No socket, runtime or
//! clock in here; `net` drives it over a QUIC stream.
//!
//! A round, on one bidirectional stream (PROTOCOL.md):
//! 1. site `Hello` (its id, its pull cursor) → host `Welcome` (the last change of the site it
//!    applied, so pushing resumes after it, never from zero); on a connection whose last round
//!    ended well, the pushes go right behind the `Hello`, from the marks that round ended on
//!    (`HostHeld`), and the `Welcome` must name the same;
//! 2. site `Push` batches → host applies each durably, then `PushAck` (with the bodies it lacks
//!    and how much of each it already keeps, which the site sends from there as `PutBodies`
//!    (pieces of up to `CHUNK_MAX` bytes in all, several bodies at once up to `SEND_WINDOW`
//!    bytes);
//! 3. site `Pull` → host up to `PULL_PAGES` `Pulled` batches from the site's log, each
//!    ending before its inline bodies pass `CHUNK_MAX`, the first smaller (`FIRST_PAGE_ITEMS`);
//!    while `more`, the site asks again on the first batch of an answer, from where the host
//!    says the answer ends (`next`), and checks that it ended there before applying the next.
//!    When no body has to follow the pushes, the `Pull` goes right behind the last `Push`, or
//!    behind the `Hello` when there is nothing to push (`opening`): one round trip fewer; a
//!    body the host then asks for still goes before anything of that pull is applied (the pull
//!    is asked for again behind it). When bodies follow, the `Pull` goes right behind their
//!    last pieces, and its batches are held (`held`) until the host has stored each body;
//! 4. site `GetBody` (from what it already keeps) for up to `FETCH_WINDOW` bodies at once →
//!    host `Body` pieces to the end of each (the driver carries each fetch on a stream of its
//!    own; a stream opened by a `GetBody` carries nothing else);
//! 5. site `Bye`.
//!
//! Bodies are resumable: each side keeps every piece it receives durably
//! (`Replica::receive_body_piece`), so a transfer cut by a broken link starts again at the
//! next round where it stopped, and only the piece in flight is sent twice.
//!
//! Invariants: the host binds the session to the site id of the peer's certificate and refuses
//! a `Hello` claiming another; every trace batch comes with the site's signature over its last
//! entry (`SignedTraceHead`), made with the key of the certificate the site connects with, and
//! the host checks it against that certificate before storing anything (a batch unsigned,
//! signed for another head or by another key is refused, and the refusal traced); every
//! batch is bounded (`BATCH_MAX` items, `CHUNK_MAX` bytes);
//! a message out of turn ends the session with an `Error`; the host takes body pieces only for
//! bodies the site owes; a heartbeat (in `Welcome` or ending a `Pulled`) names the site and its
//! log head, and renews the site's lease only once its cursor is that head.

use carnet_store::authority::SignedRecord;
use carnet_store::ids::{DocId, SiteId};
use carnet_store::replica::{
    Applied, BodyPiece, Change, HostSync, Lease, PullItem, Replica, Returned, SignedTraceHead,
    SiteSync, TraceHeadEvidence, TraceRecord,
};
use carnet_store::time::Millis;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pki::{self, Identity};

/// Most changes or pulled items in one message.
pub const BATCH_MAX: usize = 1024;
/// Most body bytes in one message.
pub const CHUNK_MAX: usize = 512 * 1024;
/// Largest body accepted (imaging runs to tens of MB).
pub const BODY_MAX: u64 = 1 << 30;
/// Body bytes a site sends before it waits for the host to store them.
pub const SEND_WINDOW: u64 = 8 << 20;
/// Bodies a site asks for before it waits for them.
pub const FETCH_WINDOW: usize = 32;
/// Push messages a site sends before it waits for their acknowledgement (the host applies
/// those that have arrived together while the next ones travel, and the disk syncs them while
/// it applies the next). Sixteen pushes of `CHUNK_MAX` fill a stream's receive window
/// (`transport::STREAM_WINDOW`). With eight, the window filled while acknowledgements waited
/// for their batches to be applied and synced, and the host ran out of pushes (benches/LOG.md,
/// 2026-12-07 evening: the initial sync 10–15 % faster with sixteen).
pub const PUSH_WINDOW: usize = 16;
/// Largest body that travels inline, with its document's first push.
pub const INLINE_MAX: u64 = 64 * 1024;
/// Batches the host sends for one `Pull`, one after the other (the site asks for the next
/// ones on the first of them, `Pulled::next`): what the host reads and holds for one request.
pub const PULL_PAGES: usize = 4;
/// The first batch of an answer carries at most this many items, and this many bytes of
/// inline bodies: it arrives in a few datagrams, and the site, which asks for the next answer
/// on it (`Pulled::next`), asks at once. With a first batch as large as the others the site
/// asked once 512 KiB had come, later by a round trip when one of their datagrams was lost
/// (each was, at 2 % loss), and at 20 Mbit/s the line stood idle between answers
/// (benches/LOG.md, 2026-12-08).
pub const FIRST_PAGE_ITEMS: usize = 16;
/// See `FIRST_PAGE_ITEMS`.
pub const FIRST_PAGE_BODIES: u64 = 8 << 10;

/// A whole body read to travel in a message, moved into it rather than copied: a message's
/// bytes are not wiped either way, and the copy cost a pass over every byte and another to
/// wipe the body read.
fn in_clear(body: &mut zeroize::Zeroizing<Vec<u8>>) -> Vec<u8> {
    std::mem::take(&mut **body)
}

/// Everything either side says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Site: who it is and where its pull stands.
    Hello {
        /// Site id (must match the certificate).
        site: u32,
        /// The host log sequence the site applied up to.
        cursor: u64,
        /// The site's own changes it knows the host holds (its outbox is acknowledged up to
        /// here, every returned document among them already in its quarantine): the host
        /// stops repeating those returns.
        outbox_acked: u64,
        /// The key the site chains its trace with: the host checks every entry it receives
        /// as a link of that chain, and refuses a site that presents another key later.
        chain_key: [u8; 32],
        /// What the site says of itself, for the operator's view (`fleet`): shown, never
        /// trusted for a decision.
        about: SiteAbout,
        /// When the site's certificate is within its renewal window: a certificate asked for
        /// a new key pair the site made (`enrol::renewal_request`).
        renewal: Option<crate::enrol::RenewalRequest>,
    },
    /// Host: the last of the site's changes and trace entries it holds.
    Welcome {
        /// Push resumes after this.
        acked: u64,
        /// Traces resume after this.
        traces_acked: u64,
        /// The chain hash of entry `traces_acked` as the host holds it: the site checks it
        /// against its own, so a history rewritten on either side is seen.
        traces_hash: [u8; 32],
        /// Everything the host returned to this site, with why: kept in quarantine before
        /// anything is acknowledged, so a lost `PushAck` loses nothing.
        returned: Vec<Returned>,
        /// Bodies of documents the host applied from this site but does not hold whole yet,
        /// with the bytes of each it keeps: sent (from there) before new changes.
        owed: Vec<(DocId, u64)>,
        /// The last sequence of the site's log on the host (how far behind the site's cursor
        /// is).
        log_head: u64,
        /// When the site's cursor is at `log_head`: the host's signed heartbeat naming the site
        /// and `log_head` (DOMAIN §5 lease), so a site with nothing to push needs no `Pull` (a
        /// round with nothing new is one round trip).
        current: Option<SignedRecord>,
        /// The certificate (DER) the CA issued for the key of the site's renewal request, once
        /// signed; the site installs it and connects with it from then on.
        renewed: Option<Vec<u8>>,
        /// While the host has a new TLS key prepared: its current key names the next one
        /// (`hostkey::HandOver`); a site takes it as its second pin.
        hand_over: Option<crate::hostkey::HandOver>,
        /// The host keys the national CA revoked, as the host holds them (at most
        /// `hostkey::REVOCATIONS_MAX`): a site refuses each from then on.
        host_revocations: Vec<crate::hostkey::HostRevocation>,
    },
    /// Site: trace entries, in chain order (sent first: every trace reaches the host), and the
    /// site's signature over the last one (required with any entry).
    Traces {
        /// The entries.
        records: Vec<TraceRecord>,
        /// The head they end on, signed with the key of the site's certificate.
        head: Option<SignedTraceHead>,
    },
    /// Host: trace entries held up to `upto`.
    TracesAck {
        /// Highest entry held.
        upto: u64,
    },
    /// Site: local changes, in order, with the whole bodies of the new documents written here
    /// (up to `INLINE_MAX` bytes each, `CHUNK_MAX` in all): the host stores each with its
    /// metadata, in the same transaction.
    Push {
        /// Changes, with their outbox sequence.
        changes: Vec<(u64, Change)>,
        /// Whole bodies (offset 0) of some of these documents.
        bodies: Vec<BodyPiece>,
    },
    /// Host: applied up to `upto`; send these bodies; these documents are returned.
    PushAck {
        /// Highest change applied.
        upto: u64,
        /// Documents whose body the host lacks, with the bytes of each it already keeps (the
        /// site sends from there).
        missing: Vec<(DocId, u64)>,
        /// The changes of this push the host will not take, with why: the site keeps what
        /// they wrote in quarantine.
        returned: Vec<Returned>,
    },
    /// Site: pieces of bodies the host lacks, at most `CHUNK_MAX` bytes in all (many small
    /// bodies travel, and are stored, together).
    PutBodies(Vec<BodyPiece>),
    /// Host: the body is stored (checked against its content hash).
    BodyStored {
        /// Document.
        doc: DocId,
    },
    /// Site: send my log after `after`.
    Pull {
        /// Cursor.
        after: u64,
    },
    /// Host: a batch of the site's log.
    Pulled {
        /// Items, with their log sequence.
        items: Vec<(u64, PullItem)>,
        /// More follow.
        more: bool,
        /// Whole bodies (offset 0) of some of these documents: new ones (first version) of at
        /// most `INLINE_MAX` bytes, `CHUNK_MAX` in all; the site stores each with its metadata.
        bodies: Vec<BodyPiece>,
        /// Where the last batch of this answer ends (the sequence of its last item), when that
        /// batch stops before the head (it has `more`); the same in each batch of the answer.
        /// The site may then ask for the batches after it (`Pull { after: next }`) on the
        /// first batch, not after the last. Appended last: a site of an earlier build ignores
        /// it (postcard leaves trailing bytes unread); a host of an earlier build does not send
        /// it, and this build's site does not decode its batches (upgrade the host first).
        next: Option<u64>,
    },
    /// Site: a body from `offset`.
    GetBody {
        /// Document.
        doc: DocId,
        /// First byte wanted.
        offset: u64,
    },
    /// Host: a piece of a body (a `GetBody` is answered with every piece to its end).
    Body {
        /// Document.
        doc: DocId,
        /// Where this piece starts.
        offset: u64,
        /// Total size of the body.
        total: u64,
        /// The piece.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Host: it does not hold that body yet (its author has not sent it): ask later.
    NoBody {
        /// Document.
        doc: DocId,
    },
    /// Site: the round is over.
    Bye,
    /// Host, on a stream of its own while the site's connection stays open (the live phase):
    /// the site's log grew to `log_head`; the site runs a round.
    Poke {
        /// The last sequence of the site's log.
        log_head: u64,
    },
    /// Either side: the session ends because of this.
    Error(String),
    /// Site restored from a backup taken at `taken_at`, after its `Welcome`: send my trace
    /// entries after `after` (the host records the restore at the first one of a session and
    /// enters the site's scope in its log again; see `carnet_store::replica::restored`).
    Restored {
        /// When the backup was taken (the site's say-so: traced, decides nothing).
        taken_at: i64,
        /// The site's trace head: entries after it are wanted.
        after: u64,
    },
    /// Host: the site's own trace entries it holds, after the `Restored`'s `after`, at most
    /// `BATCH_MAX`; `more` while others follow.
    OwnTraces {
        /// Entries, in chain order.
        records: Vec<TraceRecord>,
        /// More follow: ask again after the last.
        more: bool,
    },
}

impl Msg {
    /// The message's name, for errors and logs (never its content, which may be patient data).
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "Hello",
            Msg::Welcome { .. } => "Welcome",
            Msg::Traces { .. } => "Traces",
            Msg::TracesAck { .. } => "TracesAck",
            Msg::Push { .. } => "Push",
            Msg::PushAck { .. } => "PushAck",
            Msg::PutBodies(_) => "PutBodies",
            Msg::BodyStored { .. } => "BodyStored",
            Msg::Pull { .. } => "Pull",
            Msg::Pulled { .. } => "Pulled",
            Msg::GetBody { .. } => "GetBody",
            Msg::Body { .. } => "Body",
            Msg::NoBody { .. } => "NoBody",
            Msg::Bye => "Bye",
            Msg::Poke { .. } => "Poke",
            Msg::Error(_) => "Error",
            Msg::Restored { .. } => "Restored",
            Msg::OwnTraces { .. } => "OwnTraces",
        }
    }
}

/// `body` from `start` in pieces of at most `CHUNK_MAX` bytes, with their offsets; an empty
/// rest is one empty piece, so every request is answered.
fn pieces(body: &[u8], start: usize) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
    let rest = body.get(start..).unwrap_or_default();
    let count = rest.len().div_ceil(CHUNK_MAX).max(1);
    (0..count).map(move |i| {
        let from = start + i * CHUNK_MAX;
        let to = (from + CHUNK_MAX).min(body.len());
        (from as u64, body.get(from..to).unwrap_or_default().to_vec())
    })
}

/// `change`'s document, if its whole body travels inline with it: only a new document written
/// at this replica (its first version), of at most `INLINE_MAX` bytes.
fn inline_candidate<'a>(
    replica: &Replica,
    change: &'a Change,
) -> Option<&'a carnet_store::merge::DocumentMeta> {
    let meta = change.document()?;
    (meta.facts.author_site == replica.config().site_id
        && first_version(meta)
        && meta.facts.size > 0
        && meta.facts.size <= INLINE_MAX)
        .then_some(meta)
}

/// The bytes of `item`'s body that travel with it in a `Pulled`: a new document's (its first
/// version) of at most `INLINE_MAX` bytes; a batch carries at most `CHUNK_MAX` of them.
fn inline_pull_size(item: &PullItem) -> u64 {
    match item {
        PullItem::Document(meta)
            if meta.facts.size > 0 && meta.facts.size <= INLINE_MAX && first_version(meta) =>
        {
            meta.facts.size
        }
        _ => 0,
    }
}

/// True for a document's first version (its body has not travelled anywhere yet, most likely).
fn first_version(meta: &carnet_store::merge::DocumentMeta) -> bool {
    meta.clock().iter().map(|(_, n)| n).sum::<u64>() == 1
}

/// A push's changes and inline bodies.
type Push = (Vec<(u64, Change)>, Vec<BodyPiece>);
/// A trace batch and its signed head.
type TraceBatch = (Vec<TraceRecord>, Option<SignedTraceHead>);

fn out_of_turn(what: &str) -> Error {
    Error::Invalid(format!("protocol: unexpected {what}"))
}

/// Longest `SiteAbout::version` the host takes.
pub const VERSION_MAX: usize = 64;

/// What a site says of itself in its `Hello`: its Carnet version and counts of what it holds
/// back, as of the round's start. The host shows them to the operator (`carnet sites`,
/// `/metrics`, the status page) and decides nothing from them: a site may lie about its own
/// backlog, and fools only the operator's view of that site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteAbout {
    /// The site's Carnet version (`CARGO_PKG_VERSION`): at most `VERSION_MAX` bytes of ASCII
    /// letters, digits and `.+-_` (anything else is refused, so it is safe in a page or a
    /// metric label).
    pub version: String,
    /// The site's last trace entry (the host holds `traces_acked` of them).
    pub trace_head: u64,
    /// Changes in the site's outbox, not acknowledged by the host.
    pub pending: u64,
    /// Documents whose body the site has not received.
    pub missing_bodies: u64,
    /// Documents in the site's quarantine.
    pub quarantine: u64,
    /// Documents with concurrent replacements at the site.
    pub conflicts: u64,
    /// When the site's lease runs out (ms since the epoch), as it computes it; `None`: no
    /// lease, or never confirmed by the host.
    pub lease_until: Option<i64>,
}

impl SiteAbout {
    /// What this replica says of itself.
    pub fn of(replica: &Replica) -> Result<SiteAbout> {
        let (as_of, _) = replica.authority_freshness()?;
        Ok(SiteAbout {
            version: env!("CARGO_PKG_VERSION").to_string(),
            trace_head: replica.trace_head()?,
            pending: replica.outbox_len()?,
            missing_bodies: replica.missing_bodies()?.len() as u64,
            quarantine: replica.quarantine_len()?,
            conflicts: replica.conflicts()? as u64,
            lease_until: replica
                .config()
                .lease_ms
                .filter(|_| as_of > 0)
                .map(|lease| as_of.saturating_add(lease)),
        })
    }

    /// Refuses a version the host would not show as it is.
    pub fn check(&self) -> Result<()> {
        let fine = |c: char| c.is_ascii_alphanumeric() || ".+-_".contains(c);
        if self.version.len() > VERSION_MAX || !self.version.chars().all(fine) {
            return Err(Error::Invalid(format!(
                "protocol: the Hello's version is not at most {VERSION_MAX} letters, digits or .+-_"
            )));
        }
        Ok(())
    }
}

/// The host's side of one session, bound to the site of the peer's certificate.
#[derive(Debug)]
pub struct HostSession {
    site: SiteId,
    /// The peer's certificate (DER): the key the site signs its trace heads with.
    certificate: Vec<u8>,
    greeted: bool,
    /// This session recorded the site's restore (`Msg::Restored`) already.
    restore_recorded: bool,
    /// A stream opened by a `GetBody` or a `PutBodies` carries only body transfers.
    bodies_only: bool,
    /// The trace head the site said it had at its `Hello`, and the host's time then, until
    /// the host holds that much (then recorded: `Replica::record_trace_contact`).
    trace_contact: Option<(u64, Millis)>,
}

impl HostSession {
    /// A session for `site`, which connected with `certificate` (DER).
    pub fn new(site: SiteId, certificate: Vec<u8>) -> Self {
        HostSession {
            site,
            certificate,
            greeted: false,
            restore_recorded: false,
            bodies_only: false,
            trace_contact: None,
        }
    }

    /// Records the site's contact once the host holds the trace it announced at its `Hello`:
    /// its later entries were made after that `Hello` (the host's review of emergencies dates
    /// them from it).
    fn note_trace_contact(&mut self, replica: HostSync<'_>, held: u64) -> Result<()> {
        if let Some((head, at)) = self.trace_contact
            && held >= head
        {
            replica.record_trace_contact(self.site, head, at)?;
            self.trace_contact = None;
        }
        Ok(())
    }

    /// Handles messages that arrived together, in order: consecutive pushes are applied in one
    /// transaction (one durable commit for them all), and so are consecutive trace batches;
    /// each is still acknowledged on its own.
    pub fn handle_all(&mut self, replica: HostSync<'_>, msgs: Vec<Msg>) -> Result<Vec<Msg>> {
        let mut out = Vec::new();
        let mut msgs = msgs.into_iter().peekable();
        // On a session past its Hello (never on a body stream: `handle` refuses those there).
        let in_session = self.greeted && !self.bodies_only;
        while let Some(msg) = msgs.next() {
            match msg {
                Msg::Push { changes, bodies } if in_session => {
                    let mut pushes = vec![(changes, bodies)];
                    while let Some(Msg::Push { .. }) = msgs.peek() {
                        if let Some(Msg::Push { changes, bodies }) = msgs.next() {
                            pushes.push((changes, bodies));
                        }
                    }
                    out.extend(self.apply_pushes(replica, pushes)?);
                }
                Msg::Traces { records, head } if in_session => {
                    let mut batches = vec![(records, head)];
                    while let Some(Msg::Traces { .. }) = msgs.peek() {
                        if let Some(Msg::Traces { records, head }) = msgs.next() {
                            batches.push((records, head));
                        }
                    }
                    out.extend(self.apply_traces(replica, batches)?);
                }
                other => out.extend(self.handle(replica, other)?),
            }
        }
        Ok(out)
    }

    /// Stores trace batches in one transaction, all or nothing, once each batch's signed head
    /// is checked; answers a `TracesAck` for each, up to its last entry.
    fn apply_traces(
        &mut self,
        replica: HostSync<'_>,
        batches: Vec<TraceBatch>,
    ) -> Result<Vec<Msg>> {
        if batches.iter().any(|(b, _)| b.len() > BATCH_MAX) {
            return Err(Error::Invalid("protocol: trace batch too large".into()));
        }
        for (records, head) in &batches {
            self.check_trace_head(replica, records, head.as_ref())?;
        }
        // The last batch with entries ends on the last entry: its head covers them all.
        let signed = batches
            .iter()
            .rev()
            .find(|(records, _)| !records.is_empty())
            .and_then(|(_, head)| head.clone())
            .map(|head| TraceHeadEvidence {
                head,
                signer: self.certificate.clone(),
            });
        let lasts: Vec<Option<u64>> = batches
            .iter()
            .map(|(b, _)| b.last().map(|r| r.seq))
            .collect();
        // One allocation for the batches' entries (collected from `flat_map`, the vector grew by
        // doubling, each step into fresh pages).
        let mut records = Vec::with_capacity(batches.iter().map(|(b, _)| b.len()).sum());
        for (batch, _) in batches {
            records.extend(batch);
        }
        let head = replica.apply_remote_traces(self.site, &records, signed.as_ref())?;
        self.note_trace_contact(replica, head)?;
        Ok(lasts
            .into_iter()
            .map(|last| Msg::TracesAck {
                upto: last.map_or(head, |seq| seq.min(head)),
            })
            .collect())
    }

    /// Refuses a batch of trace entries unless `head` names its last entry and is signed, for
    /// this site, by the key of the certificate this session runs under. A refusal is traced
    /// at the host and ends the session (the site is told why).
    fn check_trace_head(
        &self,
        replica: HostSync<'_>,
        records: &[TraceRecord],
        head: Option<&SignedTraceHead>,
    ) -> Result<()> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        let refused = match head {
            None => Some("without a signed trace head"),
            Some(h) if (h.seq, h.hash) != (last.seq, last.hash) => {
                Some("with a signed trace head that is not their last entry")
            }
            Some(h) => pki::verify(
                &self.certificate,
                &SignedTraceHead::message(self.site, h.seq, &h.hash),
                &h.signature,
            )
            .err()
            .map(|_| "with a trace head this site's certificate key did not sign"),
        };
        let Some(why) = refused else {
            return Ok(());
        };
        replica.trace_refusal(self.site, "trace-head-refused")?;
        Err(Error::Store(carnet_store::Error::Integrity(format!(
            "site {} sent trace entries up to {} {why}: nothing stored",
            self.site, last.seq
        ))))
    }

    /// Applies pushes in one transaction, all or nothing; answers a `PushAck` for each.
    fn apply_pushes(&mut self, replica: HostSync<'_>, pushes: Vec<Push>) -> Result<Vec<Msg>> {
        let (mut all_changes, mut all_bodies) = (Vec::new(), Vec::new());
        let mut ends = Vec::with_capacity(pushes.len());
        for (changes, bodies) in pushes {
            let inline: usize = bodies.iter().map(|b| b.bytes.len()).sum();
            if changes.len() > BATCH_MAX || inline > CHUNK_MAX {
                return Err(Error::Invalid("protocol: push batch too large".into()));
            }
            all_changes.extend(changes);
            all_bodies.extend(bodies);
            ends.push(all_changes.len());
        }
        // Read in the transaction that applies the pushes, so that nothing after its commit
        // waits for its sync. Bodies lacking are of the documents these pushes brought (never
        // a host-wide list: other sites' documents are none of this site's business).
        let applied = replica.apply_pushed(self.site, &all_changes, &all_bodies)?;
        let (mut upto, outcomes) = (applied.mark_before, applied.outcomes);
        let lacking: std::collections::HashMap<DocId, u64> = applied.lacking.into_iter().collect();
        let mut returns: std::collections::HashMap<usize, Returned> =
            applied.returned.into_iter().collect();
        let mut acks = Vec::with_capacity(ends.len());
        let mut start = 0;
        for end in ends {
            let (mut missing, mut returned) = (Vec::new(), Vec::new());
            for (i, ((seq, change), outcome)) in all_changes[start..end]
                .iter()
                .zip(&outcomes[start..end])
                .enumerate()
            {
                upto = upto.max(*seq);
                if let Some(r) = returns.remove(&(start + i)) {
                    returned.push(r);
                    continue;
                }
                let Some(meta) = change.document() else {
                    continue;
                };
                if *outcome != Applied::Returned
                    && let Some(kept) = lacking.get(&meta.facts.id)
                {
                    missing.push((meta.facts.id, *kept));
                }
            }
            acks.push(Msg::PushAck {
                upto,
                missing,
                returned,
            });
            start = end;
        }
        Ok(acks)
    }

    /// The bodies that travel with a pull: of the new documents (first version) among `items`
    /// of at most `INLINE_MAX` bytes that this host holds, `CHUNK_MAX` bytes in all. The
    /// others the site asks for (`GetBody`).
    fn inline_bodies(
        &self,
        replica: HostSync<'_>,
        items: &[(u64, PullItem)],
    ) -> Result<Vec<BodyPiece>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, item) in items {
            let size = inline_pull_size(item);
            let PullItem::Document(meta) = item else {
                continue;
            };
            if size == 0 {
                continue;
            }
            if bytes + size > CHUNK_MAX as u64 {
                break;
            }
            if let Some(mut body) = replica.body_for_site(self.site, &meta.facts.id)? {
                bytes += size;
                out.push(BodyPiece {
                    doc: meta.facts.id,
                    offset: 0,
                    total: size,
                    bytes: in_clear(&mut body),
                });
            }
        }
        Ok(out)
    }

    /// Handles one message; returns the replies. An error ends the session (send it as
    /// `Msg::Error`).
    pub fn handle(&mut self, replica: HostSync<'_>, msg: Msg) -> Result<Vec<Msg>> {
        let body_transfer = matches!(msg, Msg::GetBody { .. } | Msg::PutBodies(_));
        match (&msg, self.greeted, self.bodies_only) {
            // A body fetched or sent on a stream of its own (the site is known from its
            // certificate, and sends only the bodies it owes).
            (_, false, _) if body_transfer => {
                self.greeted = true;
                self.bodies_only = true;
            }
            (_, true, true) if body_transfer => {}
            (_, true, true) => return Err(out_of_turn("message on a body stream")),
            (Msg::Hello { .. }, false, _) | (_, true, false) => {}
            (_, false, _) => return Err(out_of_turn("message before Hello")),
        }
        match msg {
            Msg::Hello {
                site,
                cursor,
                outbox_acked,
                chain_key,
                about,
                renewal,
            } => {
                if site != self.site.0 {
                    return Err(Error::Invalid(format!(
                        "Hello claims site {site}, the certificate says {}",
                        self.site
                    )));
                }
                about.check()?;
                replica.admit_chain_key(self.site, &chain_key)?;
                // A renewal: only for this site, signed by its new key; signed at once when
                // the CA key is here, else it waits for the operator.
                let renewed = match renewal {
                    Some(request) => {
                        crate::enrol::request_renewal(replica, site, &self.certificate, &request)?
                    }
                    None => None,
                };
                self.greeted = true;
                // The site quarantined every return before acknowledging its outbox.
                replica.forget_returned(self.site, outbox_acked)?;
                let acked = replica.applied_mark(self.site)?;
                // When the site's cursor is the head of its log: a heartbeat naming both.
                let (log_head, current) = replica.site_heartbeat(self.site, cursor)?;
                let (traces_acked, traces_hash) = replica.trace_head_held(self.site)?;
                self.trace_contact = Some((about.trace_head, replica.now()));
                self.note_trace_contact(replica, traces_acked)?;
                let (hand_over, host_revocations) = crate::hostkey::announced(&replica)?;
                Ok(vec![Msg::Welcome {
                    acked,
                    traces_acked,
                    traces_hash,
                    returned: replica.returned_to(self.site)?,
                    owed: replica.bodies_owed_by(self.site)?,
                    log_head,
                    current,
                    renewed,
                    hand_over,
                    host_revocations,
                }])
            }
            Msg::Push { changes, bodies } => self.apply_pushes(replica, vec![(changes, bodies)]),
            Msg::Traces { records, head } => self.apply_traces(replica, vec![(records, head)]),
            Msg::PutBodies(pieces) => {
                let bytes: usize = pieces.iter().map(|p| p.bytes.len()).sum();
                if bytes > CHUNK_MAX || pieces.iter().any(|p| p.total > BODY_MAX) {
                    return Err(Error::Invalid("protocol: body pieces too large".into()));
                }
                // Kept durably as they come, in one transaction: a cut transfer resumes from
                // here. Only pieces of bodies this site owes are taken: any other ends the
                // session, and nothing of the message is kept.
                let complete = replica.receive_pieces_from(self.site, &pieces)?;
                Ok(pieces
                    .iter()
                    .zip(complete)
                    .filter(|(p, done)| *done && p.offset + p.bytes.len() as u64 == p.total)
                    .map(|(p, _)| Msg::BodyStored { doc: p.doc })
                    .collect())
            }
            Msg::Pull { after } => {
                // Up to `PULL_PAGES` batches, each of at most `BATCH_MAX` items (never one log
                // entry split across batches) ending before the bodies that travel with it
                // would pass `CHUNK_MAX`, the first one smaller (`FIRST_PAGE_ITEMS`), then the
                // heartbeat that says how far the batch goes (DOMAIN §5 lease): its sequence is
                // where the next batch starts.
                let mut pages = Vec::new();
                let mut after = after;
                let mut more = true;
                while more && pages.len() < PULL_PAGES {
                    let (items, bodies) = if pages.is_empty() {
                        (FIRST_PAGE_ITEMS, FIRST_PAGE_BODIES)
                    } else {
                        (BATCH_MAX, CHUNK_MAX as u64)
                    };
                    let page = replica.pull_page_within(
                        self.site,
                        after,
                        items,
                        bodies,
                        &inline_pull_size,
                    )?;
                    let bodies = self.inline_bodies(replica, &page.items)?;
                    after = page.items.last().map_or(after, |(seq, _)| *seq);
                    more = page.more;
                    pages.push((page.items, more, bodies));
                }
                // Where the answer stops short of the head: the site's next `Pull` may go now.
                let next = more.then_some(after);
                Ok(pages
                    .into_iter()
                    .map(|(items, more, bodies)| Msg::Pulled {
                        items,
                        more,
                        bodies,
                        next,
                    })
                    .collect())
            }
            Msg::GetBody { doc, offset } => {
                // A body this site may not have (its rights to the dossier ended after it
                // received the metadata) is answered as one the host lacks: the round goes on,
                // and nothing is said of the document.
                let body = match replica.body_for_site(self.site, &doc) {
                    Ok(Some(body)) => body,
                    Ok(None) | Err(carnet_store::Error::NotFound(_)) => {
                        return Ok(vec![Msg::NoBody { doc }]);
                    }
                    Err(e) => return Err(e.into()),
                };
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(body.len());
                Ok(pieces(&body, start)
                    .map(|(at, bytes)| Msg::Body {
                        doc,
                        offset: at,
                        total: body.len() as u64,
                        bytes,
                    })
                    .collect())
            }
            Msg::Restored { taken_at, after } => {
                if !self.restore_recorded {
                    let dossiers = replica.record_site_restore(self.site, taken_at)?;
                    tracing::warn!(
                        site = self.site.0,
                        backup_taken_at = %carnet_store::time::format_rfc3339(taken_at),
                        dossiers,
                        "site restored from a backup: its scope is sent again"
                    );
                    self.restore_recorded = true;
                }
                // Only this site's own entries (the session's site, from its certificate).
                let records = replica.traces_of(self.site, after, BATCH_MAX)?;
                let head = replica.trace_mark(self.site)?;
                let more = records.last().is_some_and(|r| r.seq < head);
                Ok(vec![Msg::OwnTraces { records, more }])
            }
            Msg::Bye => Ok(vec![]),
            Msg::Poke { .. }
            | Msg::OwnTraces { .. }
            | Msg::Welcome { .. }
            | Msg::TracesAck { .. }
            | Msg::PushAck { .. }
            | Msg::Pulled { .. }
            | Msg::NoBody { .. }
            | Msg::BodyStored { .. }
            | Msg::Body { .. } => Err(out_of_turn("host message from a site")),
            Msg::Error(e) => Err(Error::Invalid(format!("the site ended the session: {e}"))),
        }
    }
}

/// What a site's round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundReport {
    /// The last of this site's changes the host holds (acknowledged in this round or before).
    pub pushed: u64,
    /// Trace entries the host holds.
    pub traces: u64,
    /// Items pulled and applied.
    pub pulled: usize,
    /// Dossiers purged on the way.
    pub purged: usize,
    /// Documents the host withdrew (the site may no longer hold them), deleted on the way.
    #[serde(default)]
    pub withdrawn: usize,
    /// Bodies received.
    pub bodies: usize,
    /// Bodies the host did not hold yet (their author is still sending them): ask again soon.
    pub bodies_waiting: usize,
    /// Documents the host returned, now in quarantine.
    pub returned: usize,
    /// The last sequence of this site's log on the host when the round began.
    pub log_head: u64,
    /// UDP bytes the site sent and received in the round, handshake included (filled by the
    /// driver, `net`).
    pub wire_sent: u64,
    /// See `wire_sent`.
    pub wire_received: u64,
    /// Times the site waited for the host: the QUIC handshake, then each batch of messages
    /// it sent (filled by `net`; a `Pull` sent ahead, on the first batch of an answer,
    /// counts as one, though the site does not wait for it).
    pub round_trips: u64,
    /// A renewed certificate was installed in this round: the next connection uses it.
    pub renewed: bool,
    /// The round's connection was opened for it and started at the path the last one
    /// measured (`congestion`, careful resume; filled by `net`).
    #[serde(default)]
    pub resumed: bool,
}

/// A message of the push window, awaiting its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    Traces,
    Push,
}

#[derive(Debug, PartialEq, Eq)]
enum SiteState {
    Greeting,
    /// A restored replica taking back what the host holds of it (`Msg::Restored`).
    Restoring,
    Pushing,
    /// Sending the bodies the host lacks (it recorded them as owed, with their metadata: a
    /// cut round resumes them from the Welcome).
    SendingBodies,
    Pulling,
    Fetching,
    Done,
}

/// The site's side of one round.
#[derive(Debug)]
pub struct SiteSession {
    state: SiteState,
    /// The site's certificate and key, the ones its connection presents: they sign the head
    /// of each trace batch.
    signer: Identity,
    /// The certificate the host presented on this connection (DER), which the TLS handshake
    /// checked against the site's pins: a hand-over must be signed by its key.
    host_certificate: Vec<u8>,
    /// Bodies the host lacks, with the bytes of each it keeps.
    to_send: Vec<(DocId, u64)>,
    /// Bodies sent and not yet stored by the host, with the bytes sent.
    sending: Vec<(DocId, u64)>,
    /// Bodies the host said it stored in this round (its `BodyStored` and an acknowledgement
    /// naming the body as missing travel on different streams, in either order).
    stored: std::collections::HashSet<DocId>,
    /// Outbox entries read and not sent yet.
    queued: std::collections::VecDeque<(u64, Change)>,
    /// The last outbox entry sent.
    push_sent: u64,
    /// The last trace entry sent.
    traces_sent: u64,
    /// The last trace entry when the host's `Welcome` came: this round sends up to it (later
    /// ones go next round, so a busy site's reads never hold its pushes back).
    traces_until: u64,
    /// Trace and push messages awaiting their acknowledgement, oldest first: the host answers
    /// them in order.
    in_flight: std::collections::VecDeque<Pushed>,
    /// Bodies asked for and not yet complete.
    fetching: Vec<DocId>,
    to_fetch: Vec<DocId>,
    /// Bodies the host said it does not hold yet (`NoBody`): not asked for again this round.
    not_at_host: std::collections::HashSet<DocId>,
    /// The host said the site's cursor is at its log head (`Welcome::current`).
    current: bool,
    /// This round pushed changes (which may add to the site's log: a confirmed grant).
    pushed: bool,
    /// The `Pull` went out early, behind the last push (its batches come after the
    /// acknowledgements, and nothing more is pushed until they are in) or with the `Hello`.
    pull_asked: bool,
    /// A document pushed in this round went without its body: the host may ask for it, and
    /// the pull waits for the acknowledgements (bodies owed go before a pull).
    bodies_may_follow: bool,
    /// Batches of a `Pull` sent behind the last pieces of the bodies the host lacks, held
    /// until the host has stored each of those bodies (`send_bodies`); at most `PULL_PAGES`.
    held: Vec<Msg>,
    /// Batches still to come for the `Pull` being answered (the host sends up to
    /// `PULL_PAGES`).
    pages_awaited: usize,
    /// The `after` of a `Pull` sent on the first batch of the answer being applied, where the
    /// host said that answer ends (`Pulled::next`): its batches come after this answer's.
    pull_ahead: Option<u64>,
    /// This round's pull reached the host's log head.
    pulled: bool,
    /// A restored replica's catch-up: what the `Welcome` said the host holds of this site
    /// (its last change, its trace head and that entry's hash) and when the backup was taken.
    restoring: Option<Restoring>,
    /// What the host held of this site when the last round on this connection ended, when
    /// this round pushed behind its `Hello` from there (`opening`): its `Welcome` must say
    /// the same.
    pipelined: Option<HostHeld>,
    /// This round caught up after a restore (`Msg::Restored`).
    caught_up: bool,
    report: RoundReport,
}

/// What the host holds of a site: its last change and its last trace entry. At the end of a
/// round, the marks the host acknowledged; on one connection of a site's daemon (which holds
/// the replica's lock, and is the only one to push this site's changes there) they do not
/// move between rounds, so the next round may push behind its `Hello` from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostHeld {
    /// The site's last change the host holds.
    pub changes: u64,
    /// The site's last trace entry the host holds.
    pub traces: u64,
}

/// What a restored site's round catches up to (see `SiteSession::restoring`).
#[derive(Debug, Clone, Copy)]
struct Restoring {
    host_changes: u64,
    host_traces: (u64, [u8; 32]),
    taken_at: i64,
}

impl SiteSession {
    /// A new round, on a connection made with `signer` (the site's certificate and key) to
    /// the host that presented `host_certificate` (DER).
    pub fn new(signer: Identity, host_certificate: Vec<u8>) -> Self {
        SiteSession {
            state: SiteState::Greeting,
            signer,
            host_certificate,
            to_send: Vec::new(),
            sending: Vec::new(),
            stored: std::collections::HashSet::new(),
            queued: std::collections::VecDeque::new(),
            push_sent: 0,
            traces_sent: 0,
            traces_until: 0,
            in_flight: std::collections::VecDeque::new(),
            fetching: Vec::new(),
            to_fetch: Vec::new(),
            not_at_host: std::collections::HashSet::new(),
            current: false,
            pushed: false,
            pull_asked: false,
            bodies_may_follow: false,
            held: Vec::new(),
            pages_awaited: 0,
            pull_ahead: None,
            pulled: false,
            restoring: None,
            pipelined: None,
            caught_up: false,
            report: RoundReport::default(),
        }
    }

    /// The first message.
    pub fn start(&mut self, replica: SiteSync<'_>) -> Result<Msg> {
        Ok(Msg::Hello {
            site: replica.config().site_id.0,
            cursor: replica.pull_cursor()?,
            outbox_acked: replica.outbox_acked()?,
            chain_key: replica.trace_chain_key(),
            about: SiteAbout::of(&replica)?,
            renewal: crate::enrol::renewal_request(&replica)?,
        })
    }

    /// What a round opens with: the `Hello`, and, when the driver expects news from the host
    /// (the link's first round, a round after a `Poke` or a failed one) and this site has
    /// nothing to push (its outbox empty) and is not catching up after a restore, the `Pull`
    /// right behind it: the host answers both in one round trip. The trace entries go after
    /// the pull, and a body the host says it lacks still goes before anything of that pull is
    /// applied (the pull is then asked for again).
    ///
    /// When `held` says what the host held at the end of the last round on this connection
    /// (`host_held`), what this site wrote since — trace entries, then changes, in the push
    /// window — goes right behind the `Hello`, from there, and the `Pull` behind it when every
    /// change carried its body inline: a change reaches the host one round trip sooner, and
    /// such a round is one round trip. The `Welcome` must then name the same marks, or the
    /// round fails (and the next one, on a new connection, waits for its `Welcome`).
    pub fn opening(
        &mut self,
        replica: SiteSync<'_>,
        expect_news: bool,
        held: Option<HostHeld>,
    ) -> Result<Vec<Msg>> {
        let hello = self.start(replica)?;
        let restored = replica.restore_mark()?.is_some();
        if let (Some(held), false) = (held, restored) {
            self.push_sent = held.changes;
            self.traces_sent = held.traces;
            self.traces_until = replica.trace_head()?;
            let (pushes, drained) = self.queue_pushes(replica)?;
            if !pushes.is_empty() {
                self.pipelined = Some(held);
                let mut out = vec![hello];
                out.extend(pushes);
                if drained && !self.bodies_may_follow && self.in_flight.contains(&Pushed::Push) {
                    self.pull_asked = true;
                    self.pages_awaited = PULL_PAGES;
                    out.push(Msg::Pull {
                        after: replica.pull_cursor()?,
                    });
                }
                return Ok(out);
            }
        }
        let nothing_to_push = replica.outbox(0, 1)?.is_empty();
        if !expect_news || !nothing_to_push || restored {
            return Ok(vec![hello]);
        }
        self.pull_asked = true;
        self.pages_awaited = PULL_PAGES;
        Ok(vec![
            hello,
            Msg::Pull {
                after: replica.pull_cursor()?,
            },
        ])
    }

    /// True once the round is over.
    pub fn is_done(&self) -> bool {
        self.state == SiteState::Done
    }

    /// This round sent its pushes behind its `Hello` (`opening` with what the host held).
    pub fn pushed_behind_hello(&self) -> bool {
        self.pipelined.is_some()
    }

    /// Once the round is over: what the host holds of this site (for the next round on this
    /// connection: `opening`). `None` for a round that caught up after a restore.
    pub fn host_held(&self) -> Option<HostHeld> {
        (self.is_done() && !self.caught_up).then_some(HostHeld {
            changes: self.report.pushed,
            traces: self.report.traces,
        })
    }

    /// What the round did.
    pub fn report(&self) -> RoundReport {
        self.report
    }

    /// Sends trace batches, then Push messages, until `PUSH_WINDOW` await acknowledgement
    /// (the host stores them in the order sent, so the trace goes first); when both are
    /// drained and every one acknowledged, goes on with the bodies the host lacks, then pulls.
    /// When the last push is sent and no body is due, the `Pull` goes out behind it at once
    /// (the host answers in order: the round saves the round trip of waiting for the
    /// acknowledgements first).
    fn fill_pushes(&mut self, replica: SiteSync<'_>) -> Result<Vec<Msg>> {
        let (mut out, drained) = if self.pull_asked {
            (Vec::new(), false)
        } else {
            self.queue_pushes(replica)?
        };
        if self.in_flight.is_empty() {
            return self.after_pushing(replica);
        }
        let will_pull = !self.current || self.pushed || self.in_flight.contains(&Pushed::Push);
        let no_body_due =
            self.to_send.is_empty() && self.sending.is_empty() && !self.bodies_may_follow;
        if drained && will_pull && no_body_due && !self.pulled {
            self.pull_asked = true;
            self.pages_awaited = PULL_PAGES;
            out.push(Msg::Pull {
                after: replica.pull_cursor()?,
            });
        }
        self.state = SiteState::Pushing;
        Ok(out)
    }

    /// Trace batches, then Push messages, until `PUSH_WINDOW` await acknowledgement; with
    /// whether everything due was sent (`drained`).
    fn queue_pushes(&mut self, replica: SiteSync<'_>) -> Result<(Vec<Msg>, bool)> {
        let mut out = Vec::new();
        while self.in_flight.len() < PUSH_WINDOW {
            let next = match self.next_traces(replica)? {
                Some(traces) => Some((Pushed::Traces, traces)),
                None => self.next_push(replica)?.map(|push| (Pushed::Push, push)),
            };
            let Some((kind, msg)) = next else {
                return Ok((out, true));
            };
            self.in_flight.push_back(kind);
            out.push(msg);
        }
        Ok((out, false))
    }

    /// What the replica wrote since the round began, while the round moves bodies (which
    /// takes minutes for an image on a slow link): the trace entries and the outbox entries
    /// (grants, prescriptions, documents) go at once, ahead of the bodies — the driver carries
    /// bodies on streams of their own, below the session in priority. The driver calls this
    /// whenever the replica commits; at any other step of the round it sends nothing (pushing
    /// reads the outbox as it goes, and what comes later goes with the next round).
    pub fn news(&mut self, replica: SiteSync<'_>) -> Result<Vec<Msg>> {
        if !self.moving_bodies() {
            return Ok(Vec::new());
        }
        self.traces_until = replica.trace_head()?;
        Ok(self.queue_pushes(replica)?.0)
    }

    /// Bodies are going up or coming down, or wait to: what the site writes meanwhile is
    /// pushed (`news`). Once they are done, nothing more is (what is written then goes with
    /// the next round), so a site that keeps writing does not keep the round, and its pull,
    /// from ending.
    fn moving_bodies(&self) -> bool {
        match self.state {
            SiteState::SendingBodies => !self.sending.is_empty() || !self.to_send.is_empty(),
            SiteState::Fetching => !self.fetching.is_empty() || !self.to_fetch.is_empty(),
            _ => false,
        }
    }

    /// After an acknowledgement: the step the round is at goes on (pushes made while bodies
    /// move are acknowledged in the middle of them).
    fn after_ack(&mut self, replica: SiteSync<'_>) -> Result<Vec<Msg>> {
        if !matches!(self.state, SiteState::SendingBodies | SiteState::Fetching) {
            return self.fill_pushes(replica);
        }
        let mut out = if self.moving_bodies() {
            self.queue_pushes(replica)?.0
        } else {
            Vec::new()
        };
        out.extend(match self.state {
            SiteState::SendingBodies => self.send_bodies(replica)?,
            _ => self.fetch_bodies(replica)?,
        });
        Ok(out)
    }

    /// The next batch of trace entries after the last sent, up to `traces_until`.
    fn next_traces(&mut self, replica: SiteSync<'_>) -> Result<Option<Msg>> {
        if self.traces_sent >= self.traces_until {
            return Ok(None);
        }
        let mut records = replica.traces_after(self.traces_sent, BATCH_MAX)?;
        records.retain(|r| r.seq <= self.traces_until);
        let Some(last) = records.last() else {
            // Nothing more to read (the trace is shorter than its head said): done.
            self.traces_until = self.traces_sent;
            return Ok(None);
        };
        self.traces_sent = last.seq;
        let site = replica.config().site_id;
        let head = SignedTraceHead {
            seq: last.seq,
            hash: last.hash,
            signature: pki::sign(
                &self.signer,
                &SignedTraceHead::message(site, last.seq, &last.hash),
            )?,
        };
        Ok(Some(Msg::Traces {
            records,
            head: Some(head),
        }))
    }

    /// The next Push: outbox entries after the last sent, with the bodies of the new documents
    /// written here (read together, in one snapshot), bounded by `BATCH_MAX` entries and
    /// `CHUNK_MAX` body bytes.
    fn next_push(&mut self, replica: SiteSync<'_>) -> Result<Option<Msg>> {
        if self.queued.is_empty() {
            self.queued = replica.outbox(self.push_sent, BATCH_MAX)?.into();
        }
        let (mut changes, mut bytes) = (Vec::new(), 0);
        while changes.len() < BATCH_MAX {
            let Some((seq, change)) = self.queued.pop_front() else {
                break;
            };
            let size = inline_candidate(&replica, &change).map_or(0, |m| m.facts.size);
            if !changes.is_empty() && bytes + size > CHUNK_MAX as u64 {
                self.queued.push_front((seq, change));
                break;
            }
            bytes += size;
            self.push_sent = seq;
            changes.push((seq, change));
        }
        if changes.is_empty() {
            return Ok(None);
        }
        let inline: Vec<_> = changes
            .iter()
            .filter_map(|(_, c)| inline_candidate(&replica, c))
            .collect();
        let bodies: Vec<BodyPiece> = replica
            .bodies_for_sync(&inline)?
            .into_iter()
            .zip(&inline)
            .filter_map(|(body, meta)| {
                body.map(|mut body| BodyPiece {
                    doc: meta.facts.id,
                    offset: 0,
                    total: body.len() as u64,
                    bytes: in_clear(&mut body),
                })
            })
            .collect();
        let documents = changes
            .iter()
            .filter(|(_, c)| c.document().is_some())
            .count();
        self.bodies_may_follow |= bodies.len() < documents;
        Ok(Some(Msg::Push { changes, bodies }))
    }

    /// Every push acknowledged: the bodies the host lacks, then the pull (none when the host
    /// said the site is current and this round pushed nothing, or it pulled already); a pull
    /// sent early is answered first.
    fn after_pushing(&mut self, replica: SiteSync<'_>) -> Result<Vec<Msg>> {
        if self.pull_asked {
            // Batches that came before the last body was stored are taken now, in order.
            self.state = SiteState::Pulling;
            let mut out = Vec::new();
            for batch in std::mem::take(&mut self.held) {
                out.extend(self.handle(replica, batch)?);
            }
            return Ok(out);
        }
        if !self.to_send.is_empty() || !self.sending.is_empty() {
            self.state = SiteState::SendingBodies;
            return self.send_bodies(replica);
        }
        if !self.pull_due() {
            return self.start_fetching(replica);
        }
        self.state = SiteState::Pulling;
        self.pages_awaited = PULL_PAGES;
        Ok(vec![Msg::Pull {
            after: replica.pull_cursor()?,
        }])
    }

    /// The round still has to pull: it has not, and the host did not say the site is current,
    /// or the site pushed since.
    fn pull_due(&self) -> bool {
        !self.pulled && (!self.current || self.pushed)
    }

    /// Sends owed bodies in pieces, from where the host's copy stops, until `SEND_WINDOW`
    /// bytes await storage; when every piece is sent, the `Pull` behind them (its batches
    /// are held until each body is stored: a body the site owes is at the host before anything
    /// of a pull is applied, and the pull's round trip is not added to the bodies'); when every
    /// body is stored, goes on to the pull.
    fn send_bodies(&mut self, replica: SiteSync<'_>) -> Result<Vec<Msg>> {
        let mut out = Vec::new();
        let mut batch: Vec<BodyPiece> = Vec::new();
        let mut batch_bytes = 0;
        let mut in_flight: u64 = self.sending.iter().map(|(_, n)| n).sum();
        while in_flight < SEND_WINDOW || self.sending.is_empty() {
            let Some((doc, kept)) = self.to_send.pop() else {
                break;
            };
            let body = replica.body_for_sync(&doc)?;
            let start = usize::try_from(kept).unwrap_or(usize::MAX).min(body.len());
            let sent = (body.len() - start) as u64;
            for (offset, bytes) in pieces(&body, start) {
                if batch_bytes + bytes.len() > CHUNK_MAX {
                    out.push(Msg::PutBodies(std::mem::take(&mut batch)));
                    batch_bytes = 0;
                }
                batch_bytes += bytes.len();
                batch.push(BodyPiece {
                    doc,
                    offset,
                    total: body.len() as u64,
                    bytes,
                });
            }
            self.sending.push((doc, sent));
            in_flight += sent;
        }
        if !batch.is_empty() {
            out.push(Msg::PutBodies(batch));
        }
        if self.sending.is_empty() && self.in_flight.is_empty() {
            return self.after_pushing(replica);
        }
        if self.to_send.is_empty()
            && self.in_flight.is_empty()
            && !self.pull_asked
            && self.pull_due()
        {
            self.pull_asked = true;
            self.pages_awaited = PULL_PAGES;
            out.push(Msg::Pull {
                after: replica.pull_cursor()?,
            });
        }
        Ok(out)
    }

    /// Fetches every body this replica lacks (indexed: no scan of the store), but those the
    /// host said in this round it does not hold yet.
    fn start_fetching(&mut self, replica: SiteSync<'_>) -> Result<Vec<Msg>> {
        self.state = SiteState::Fetching;
        self.to_fetch = replica.missing_bodies()?;
        self.to_fetch.retain(|doc| !self.not_at_host.contains(doc));
        self.to_fetch.reverse();
        self.fetch_bodies(replica)
    }

    /// Asks for bodies, from what this replica already keeps of each, up to `FETCH_WINDOW` at
    /// a time; ends the round when none is left.
    fn fetch_bodies(&mut self, replica: SiteSync<'_>) -> Result<Vec<Msg>> {
        let mut out = Vec::new();
        while self.fetching.len() < FETCH_WINDOW {
            let Some(doc) = self.to_fetch.pop() else {
                break;
            };
            out.push(Msg::GetBody {
                doc,
                offset: replica.body_progress(&doc)?,
            });
            self.fetching.push(doc);
        }
        if self.fetching.is_empty() {
            return self.after_fetching(replica);
        }
        Ok(out)
    }

    /// Every body asked for came (or the host said it lacks it): the round ends once what it
    /// pushed meanwhile (`news`) is acknowledged, the bodies those pushes left owed are sent,
    /// and, if it pushed without pulling, after a pull.
    fn after_fetching(&mut self, replica: SiteSync<'_>) -> Result<Vec<Msg>> {
        if !self.in_flight.is_empty() {
            return Ok(Vec::new());
        }
        if !self.to_send.is_empty() || (self.pushed && !self.pulled) {
            return self.after_pushing(replica);
        }
        self.state = SiteState::Done;
        Ok(vec![Msg::Bye])
    }

    /// Handles one message from the host; returns what to send next.
    pub fn handle(&mut self, replica: SiteSync<'_>, msg: Msg) -> Result<Vec<Msg>> {
        match (&self.state, msg) {
            (
                SiteState::Greeting,
                Msg::Welcome {
                    acked,
                    traces_acked,
                    traces_hash,
                    returned,
                    owed,
                    log_head,
                    current,
                    renewed,
                    hand_over,
                    host_revocations,
                },
            ) => {
                // The host's keys first: a revoked key ends the round before anything else.
                crate::hostkey::on_welcome(
                    &replica,
                    &self.host_certificate,
                    hand_over.as_ref(),
                    &host_revocations,
                )?;
                // A restored replica is expected to be behind the host (the host then sends its
                // trace entries back, each checked as a link of this chain); any other is not.
                let restored = replica.restore_mark()?;
                if restored.is_none()
                    && (acked > replica.outbox_issued()? || traces_acked > replica.trace_head()?)
                {
                    // Acknowledging would drop changes or traces never sent.
                    return Err(Error::Invalid(
                        "the host holds changes this site never sent: was this data folder put back from an old copy? (a backup brought back with `carnet restore` catches up by itself) Ask the host operator before syncing".into(),
                    ));
                }
                if traces_acked > 0
                    && traces_acked <= replica.trace_head()?
                    && replica.own_trace_hash(traces_acked)? != Some(traces_hash)
                {
                    return Err(Error::Store(carnet_store::Error::Integrity(format!(
                        "the host holds another trace history for this site (entry {traces_acked}): this replica's trace was altered, or put back from an old copy without `carnet restore`; ask the host operator before syncing"
                    ))));
                }
                if let Some(cert) = renewed {
                    // Sealed with the key kept for it; this round's connection goes on with
                    // the certificate it was opened with.
                    crate::enrol::install_renewed(&replica, &cert)?;
                    self.report.renewed = true;
                }
                if let Some(held) = self.pipelined
                    && (acked, traces_acked) != (held.changes, held.traces)
                {
                    // Pushed behind the Hello from marks the host no longer holds (restored
                    // from a backup meanwhile?): the host refuses what does not follow on.
                    return Err(Error::Invalid(format!(
                        "the host holds changes up to {acked} and trace entries up to {traces_acked} of this site, not {} and {} as at the end of the last round: the next round starts from what it holds",
                        held.changes, held.traces
                    )));
                }
                // What the host decided of this site's changes: up to `acked`; for a replica
                // brought back from a backup, whose outbox may number again changes the host
                // holds, only what it had acknowledged itself.
                let decided = match restored {
                    Some(_) => replica.outbox_acked()?,
                    None => acked,
                };
                replica.quarantine_returned(&returned, decided)?;
                // The host holds everything up to `acked`: those entries are done with.
                if acked > 0 {
                    replica.ack_outbox(acked)?;
                }
                if self.pipelined.is_none() {
                    self.push_sent = acked;
                }
                // What the host holds already (a live round may have pushed it before).
                self.report.pushed = acked;
                self.report.traces = traces_acked;
                self.report.log_head = log_head;
                if let Some(heartbeat) = current {
                    // Current: the heartbeat dates the authority cache, as a pull's last does,
                    // if it names this site and its cursor. One it cannot admit now (dated
                    // ahead of this clock) makes the round pull, and the pull says why.
                    let cursor = replica.pull_cursor()?;
                    match replica.apply_pull(&[(cursor, PullItem::Authority(heartbeat))]) {
                        Ok(applied) => {
                            self.report.pulled += applied.applied;
                            self.current =
                                matches!(applied.lease, Some(Lease::Renewed | Lease::Unchanged));
                        }
                        Err(carnet_store::Error::Invalid(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                // Bodies a broken round left with the host, sent before anything new.
                self.to_send = owed
                    .into_iter()
                    .filter(|(d, _)| replica.body_for_sync(d).is_ok())
                    .collect();
                self.to_send.reverse();
                if let Some(mark) = restored {
                    // Everything the host holds of this site comes back before anything goes.
                    self.restoring = Some(Restoring {
                        host_changes: acked,
                        host_traces: (traces_acked, traces_hash),
                        taken_at: mark.taken_at,
                    });
                    self.state = SiteState::Restoring;
                    self.caught_up = true;
                    return Ok(vec![Msg::Restored {
                        taken_at: mark.taken_at,
                        after: replica.trace_head()?,
                    }]);
                }
                if self.pipelined.is_none() {
                    self.traces_sent = traces_acked;
                    self.traces_until = replica.trace_head()?;
                }
                self.fill_pushes(replica)
            }
            (SiteState::Restoring, Msg::OwnTraces { records, more }) => {
                let Some(restoring) = self.restoring else {
                    return Err(out_of_turn("OwnTraces"));
                };
                let (host_head, _) = restoring.host_traces;
                if records.len() > BATCH_MAX || records.iter().any(|r| r.seq > host_head) {
                    return Err(Error::Invalid(
                        "protocol: the host sent trace entries past the head its Welcome named"
                            .into(),
                    ));
                }
                let head = if records.is_empty() {
                    replica.trace_head()?
                } else {
                    replica.restore_own_traces(&records)?
                };
                if more && !records.is_empty() && head < host_head {
                    return Ok(vec![Msg::Restored {
                        taken_at: restoring.taken_at,
                        after: head,
                    }]);
                }
                // Checks the chain ends where the host said, jumps the outbox mark past the
                // host's, traces the restore and thaws the chain (one transaction).
                replica.finish_restore(restoring.host_changes, restoring.host_traces)?;
                self.restoring = None;
                // The host entered this site's scope in its log again: pull it.
                self.current = false;
                self.traces_sent = host_head.min(replica.trace_head()?);
                self.traces_until = replica.trace_head()?;
                self.fill_pushes(replica)
            }
            (
                SiteState::Pushing | SiteState::SendingBodies | SiteState::Fetching,
                Msg::TracesAck { upto },
            ) => {
                if self.in_flight.front() != Some(&Pushed::Traces) || upto > self.traces_sent {
                    // Acknowledging what was never sent.
                    return Err(out_of_turn("TracesAck"));
                }
                self.in_flight.pop_front();
                self.report.traces = upto;
                self.after_ack(replica)
            }
            (
                SiteState::Pushing | SiteState::SendingBodies | SiteState::Fetching,
                Msg::PushAck {
                    upto,
                    missing,
                    returned,
                },
            ) => {
                if self.in_flight.front() != Some(&Pushed::Push) || upto > self.push_sent {
                    // Acknowledging what was never sent would drop it from the outbox (and
                    // take a dossier's proposal never sent for one the host decided).
                    return Err(out_of_turn("PushAck"));
                }
                if !returned.is_empty() {
                    // Kept before the outbox lets go of them.
                    replica.quarantine_returned(&returned, upto)?;
                    self.report.returned += returned.len();
                }
                self.in_flight.pop_front();
                // The host holds these changes, and recorded the bodies it lacks as owed by
                // this site in the same transaction: the outbox lets go of them.
                replica.ack_outbox(upto)?;
                self.report.pushed = upto;
                self.pushed = true;
                // A body this site does not hold either is someone else's to send.
                for (doc, kept) in missing {
                    let queued = self
                        .to_send
                        .iter()
                        .chain(&self.sending)
                        .any(|(d, _)| *d == doc);
                    if !queued && !self.stored.contains(&doc) && replica.body_for_sync(&doc).is_ok()
                    {
                        self.to_send.push((doc, kept));
                    }
                }
                self.after_ack(replica)
            }
            (SiteState::SendingBodies, batch @ Msg::Pulled { .. }) if self.pull_asked => {
                // The pull asked for behind the bodies: applied once each is stored.
                if self.held.len() >= PULL_PAGES {
                    return Err(out_of_turn("Pulled"));
                }
                self.held.push(batch);
                Ok(vec![])
            }
            (SiteState::SendingBodies, Msg::BodyStored { doc }) => {
                let Some(i) = self.sending.iter().position(|(d, _)| *d == doc) else {
                    return Err(out_of_turn("BodyStored"));
                };
                self.sending.swap_remove(i);
                self.stored.insert(doc);
                self.send_bodies(replica)
            }
            (
                SiteState::Pulling,
                Msg::Pulled {
                    items,
                    more,
                    bodies,
                    next,
                },
            ) => {
                let inline: usize = bodies.iter().map(|b| b.bytes.len()).sum();
                if inline > CHUNK_MAX {
                    return Err(Error::Invalid("protocol: pulled bodies too large".into()));
                }
                let first_of_answer = self.pages_awaited == PULL_PAGES;
                let awaited = self.pages_awaited.saturating_sub(1);
                self.pages_awaited = awaited;
                if !self.to_send.is_empty() {
                    // A pull sent early (behind the last push, or with the `Hello`), and the
                    // host lacks bodies this site owes: they go first, as always (the pull may
                    // take their dossier out of this site), and the pull is asked for again
                    // after them. Nothing of this one is applied (and no `Pull` went ahead:
                    // one goes only when nothing is owed).
                    if !more || awaited == 0 {
                        self.pages_awaited = 0;
                        self.pull_asked = false;
                        return self.fill_pushes(replica);
                    }
                    return Ok(vec![]);
                }
                if let Some(ahead) = self.pull_ahead {
                    // Nothing of a batch is applied when the answer before it, or this one,
                    // does not end where its host said: the next would skip log entries, or
                    // take some twice.
                    if first_of_answer {
                        if replica.pull_cursor()? != ahead {
                            return Err(Error::Invalid(format!(
                                "protocol: the host's answer did not end at {ahead}, where it \
                                 said it would"
                            )));
                        }
                        self.pull_ahead = None;
                    } else if !more {
                        return Err(Error::Invalid(format!(
                            "protocol: the host's answer stopped before {ahead}, where it said \
                             it would end"
                        )));
                    }
                }
                // Stored with their metadata, in the same transaction.
                let applied = replica.apply_pull_with_bodies(&items, &bodies)?;
                self.report.bodies += bodies.len();
                self.report.pulled += applied.applied;
                self.report.purged += applied.purged;
                self.report.withdrawn += applied.withdrawn;
                match (more, awaited) {
                    (true, 0) if self.pull_ahead.is_some() => {
                        // The next answer is on its way.
                        self.pages_awaited = PULL_PAGES;
                        Ok(vec![])
                    }
                    (true, 0) => {
                        self.pages_awaited = PULL_PAGES;
                        Ok(vec![Msg::Pull {
                            after: replica.pull_cursor()?,
                        }])
                    }
                    (true, _) => match next.filter(|_| first_of_answer) {
                        // The host says where this answer ends: the next `Pull` goes now, and
                        // its batches follow this answer's, one round trip sooner.
                        Some(after) => {
                            self.pull_ahead = Some(after);
                            Ok(vec![Msg::Pull { after }])
                        }
                        None => Ok(vec![]),
                    },
                    (false, _) => {
                        // The next batches of this `Pull` would have been `more` ones. What
                        // waits to go (the trace, when the pull went with the `Hello`) goes.
                        self.pages_awaited = 0;
                        self.pull_asked = false;
                        self.pulled = true;
                        self.fill_pushes(replica)
                    }
                }
            }
            (
                SiteState::Fetching,
                Msg::Body {
                    doc,
                    offset,
                    total,
                    bytes,
                },
            ) => {
                if !self.fetching.contains(&doc) || total > BODY_MAX || bytes.len() > CHUNK_MAX {
                    return Err(out_of_turn("Body piece"));
                }
                // Kept durably piece by piece: a cut transfer resumes from here.
                if !replica.receive_body_piece(&doc, offset, total, &bytes)? {
                    return Ok(vec![]);
                }
                self.fetching.retain(|d| *d != doc);
                self.report.bodies += 1;
                self.fetch_bodies(replica)
            }
            (SiteState::Fetching, Msg::NoBody { doc }) => {
                if !self.fetching.contains(&doc) {
                    return Err(out_of_turn("NoBody"));
                }
                self.fetching.retain(|d| *d != doc);
                self.not_at_host.insert(doc);
                self.report.bodies_waiting += 1;
                self.fetch_bodies(replica)
            }
            (_, Msg::Error(e)) => Err(Error::Invalid(format!("the host ended the session: {e}"))),
            (state, msg) => Err(out_of_turn(&format!("{} while {state:?}", msg.kind()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{certificate, doctor, host_and_site, new_doc, signer};
    use carnet_store::model::{AccessMode, Actor};

    /// Runs one round in memory; every message goes through the frame codec, as on the wire.
    pub(super) fn round(host: &Replica, site: &Replica) -> RoundReport {
        let mut s = SiteSession::new(signer(site), Vec::new());
        let mut h = HostSession::new(site.config().site_id, certificate(site));
        let mut to_host = vec![s.start(crate::testkit::site_sync(site)).expect("start")];
        for _ in 0..10_000 {
            let mut to_site = Vec::new();
            for m in to_host.drain(..) {
                let m = wire(&m);
                to_site.extend(h.handle(crate::testkit::host_sync(host), m).expect("host"));
            }
            for m in to_site {
                to_host.extend(
                    s.handle(crate::testkit::site_sync(site), wire(&m))
                        .expect("site"),
                );
            }
            if s.is_done() {
                for m in to_host.drain(..) {
                    h.handle(crate::testkit::host_sync(host), wire(&m))
                        .expect("host");
                }
                return s.report();
            }
        }
        panic!("the round did not end");
    }

    /// `m` as the peer decodes it from the wire.
    pub(super) fn wire(m: &Msg) -> Msg {
        let mut d = crate::frame::FrameDecoder::new();
        d.push(&crate::frame::encode(m).expect("encode"));
        d.next_message().expect("decode").expect("one message")
    }

    #[test]
    fn a_restored_site_takes_back_its_trace_page_by_page_and_its_documents_then_syncs_on() {
        let (t, host, site, ins) = host_and_site();
        let actor = Actor::Professional(doctor());
        let put = |r: &Replica, title: &str| {
            r.put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc(title, title.into()),
            )
            .expect("put")
        };
        // First contact: the dossier enters the site's scope.
        round(&host, &site);
        let before = put(&site, "before the backup (synthetic)");
        round(&host, &site);
        let file = t.path().join("site.backup");
        site.backup_to(&file, &[]).expect("backup");
        // After the backup: a document, and more trace entries than one page carries.
        let after = put(&site, "after the backup (synthetic)");
        for _ in 0..BATCH_MAX + 10 {
            site.read_document(&actor, &before, AccessMode::Normal, None)
                .expect("read");
        }
        round(&host, &site);
        let origin = site.config().site_id;
        let held = crate::testkit::host_sync(&host)
            .trace_head_held(origin)
            .expect("held");
        let key = t.path().join("kept-apart.key");
        std::fs::copy(t.path().join("site/master.key"), &key).expect("key");
        let dir = t.path().join("restored");
        let clock = carnet_store::replica::system_clock();
        carnet_store::replica::backup::restore(
            &file,
            &dir,
            &carnet_store::replica::KeySource::File,
            Some(&key),
            clock.clone(),
        )
        .expect("restore");
        let restored =
            Replica::open(&dir, &carnet_store::replica::KeySource::File, clock).expect("open");
        assert!(restored.trace_head().expect("head") + BATCH_MAX as u64 <= held.0);

        let report = round(&host, &restored);
        assert!(restored.restore_mark().expect("mark").is_none());
        // Every entry the host held came back, and the restore's own entry went out.
        assert_eq!(report.traces, held.0 + 1, "{report:?}");
        assert_eq!(restored.trace_head().expect("head"), held.0 + 1);
        let got = restored
            .read_document(&actor, &after, AccessMode::Normal, None)
            .expect("the document pushed after the backup is back");
        assert_eq!(got.body.as_slice(), b"after the backup (synthetic)");
        // It syncs on: a new change takes a sequence the host has not applied.
        let new = put(&restored, "after the restore (synthetic)");
        round(&host, &restored);
        host.read_document(&actor, &new, AccessMode::Normal, None)
            .expect("the host holds the new document");
        restored.verify_audit().expect("the site's chain");
        host.verify_audit().expect("the host's chains");
    }

    #[test]
    fn an_unreadable_outbox_entry_is_held_back_shown_in_the_status_and_the_rest_syncs() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        let first = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("one", b"1".to_vec()),
            )
            .expect("put");
        let second = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("two", b"2".to_vec()),
            )
            .expect("put");
        // The first entry damaged at rest, as a disk or an older build could leave it.
        let dir = site.dir().to_path_buf();
        let first_seq = crate::testkit::site_sync(&site)
            .outbox(0, 10)
            .expect("outbox")[0]
            .0;
        drop(site);
        {
            let db = redb::Database::open(dir.join("carnet.redb")).expect("db");
            let txn = db.begin_write().expect("txn");
            txn.open_table(carnet_store::replica::tables::OUTBOX)
                .expect("outbox")
                .insert(first_seq, [0xff_u8, 0xff, 0xff].as_slice())
                .expect("damage");
            txn.commit().expect("commit");
        }
        let site = Replica::open(
            &dir,
            &carnet_store::replica::KeySource::File,
            crate::testkit::clock(),
        )
        .expect("reopen");
        round(&host, &site);
        assert!(
            host.read_document(&actor, &second, AccessMode::Normal, None)
                .is_ok()
        );
        assert!(
            host.read_document(&actor, &first, AccessMode::Normal, None)
                .is_err()
        );
        let status = crate::api::Service::new(std::sync::Arc::new(site))
            .status()
            .expect("status");
        assert_eq!(status.pending, 0, "{status:?}");
        assert_eq!(status.withheld.len(), 1, "{status:?}");
        assert_eq!(status.withheld[0].0, first_seq);
        assert!(status.withheld[0].2.contains("undecodable"), "{status:?}");
    }

    #[test]
    fn a_round_pushes_pulls_and_fetches_bodies() {
        let (_t, host, site, ins) = host_and_site();
        let actor = Actor::Professional(doctor());
        // First contact: the site's doctor reaches the host, the dossier enters the scope.
        let first = round(&host, &site);
        assert!(first.pulled > 0, "{first:?}");
        assert!(site.dossier(&ins).is_ok(), "the dossier arrived");
        let at_site = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("site", vec![1; 2_500_000]),
            )
            .expect("site writes");
        let at_host = host
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("host", b"host body".to_vec()),
            )
            .expect("host writes");
        let report = round(&host, &site);
        assert!(
            report.pushed > 0 && report.pulled > 0 && report.bodies >= 1,
            "{report:?}"
        );
        assert_eq!(site.outbox_len().expect("len"), 0, "acknowledged");
        assert_eq!(
            &site
                .read_document(&actor, &at_host, AccessMode::Normal, None)
                .expect("read")
                .body[..],
            b"host body"
        );
        assert_eq!(
            host.read_document(&actor, &at_site, AccessMode::Normal, None)
                .expect("read")
                .body
                .len(),
            2_500_000
        );
        assert_eq!(report.returned, 0);
        // Every trace of the site reached the host (the site wrote, and read nothing yet).
        let site_id = site.config().site_id;
        assert!(report.traces > 0);
        assert_eq!(
            crate::testkit::host_sync(&host)
                .trace_mark(site_id)
                .expect("mark"),
            report.traces
        );
        let at_host = host.audit_entries(Some(&ins)).expect("audit");
        assert!(
            at_host
                .iter()
                .any(|c| c.entry.origin == site_id && c.entry.doc == Some(at_site))
        );
        host.verify_audit()
            .expect("host verifies every chain it holds");
        // A round with nothing new pulls only the host's heartbeat, and no body.
        let quiet = round(&host, &site);
        assert_eq!((quiet.pulled, quiet.bodies), (1, 0), "{quiet:?}");
    }

    #[test]
    fn small_new_bodies_travel_with_their_metadata_and_a_wrong_one_is_asked_for_again() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        let ids: Vec<DocId> = (0..300)
            .map(|i| {
                site.put_document(
                    &actor,
                    AccessMode::Normal,
                    None,
                    &ins,
                    new_doc(&format!("d{i}"), vec![i as u8; 4000]),
                )
                .expect("write")
            })
            .collect();
        // A whole round, counting what crosses: pushes only, several in flight, no PutBodies.
        let mut s = SiteSession::new(signer(&site), Vec::new());
        let mut h = HostSession::new(site.config().site_id, certificate(&site));
        let mut to_host = vec![s.start(crate::testkit::site_sync(&site)).expect("start")];
        let (mut pushes, mut most_in_flight, mut put_bodies) = (0, 0, 0);
        for _ in 0..10_000 {
            if s.is_done() {
                break;
            }
            let in_flight = to_host
                .iter()
                .filter(|m| matches!(m, Msg::Push { .. }))
                .count();
            most_in_flight = most_in_flight.max(in_flight);
            pushes += in_flight;
            put_bodies += to_host
                .iter()
                .filter(|m| matches!(m, Msg::PutBodies(_)))
                .count();
            // Delivered together: the host applies the pushes in one transaction, and still
            // acknowledges each.
            let arrived: Vec<Msg> = to_host.drain(..).map(|m| wire(&m)).collect();
            let to_site = h
                .handle_all(crate::testkit::host_sync(&host), arrived)
                .expect("host");
            assert_eq!(
                to_site
                    .iter()
                    .filter(|m| matches!(m, Msg::PushAck { .. }))
                    .count(),
                in_flight
            );
            for m in to_site {
                to_host.extend(
                    s.handle(crate::testkit::site_sync(&site), wire(&m))
                        .expect("site"),
                );
            }
        }
        assert!(s.is_done(), "the round ended");
        assert_eq!(put_bodies, 0, "every body went with its push");
        assert!(
            pushes >= 3 && most_in_flight > 1,
            "{pushes} {most_in_flight}"
        );
        for id in &ids {
            assert!(host.has_body(id).expect("has"), "{id}");
        }
        assert!(
            crate::testkit::host_sync(&host)
                .bodies_owed_by(site.config().site_id)
                .expect("owed")
                .is_empty()
        );
        // A body that does not match its metadata is not stored: the host asks for it.
        let late = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("late", vec![7; 500]),
            )
            .expect("write");
        let changes = crate::testkit::site_sync(&site)
            .outbox(0, 10)
            .expect("outbox");
        let wrong = BodyPiece {
            doc: late,
            offset: 0,
            total: 500,
            bytes: vec![6; 500],
        };
        crate::testkit::host_sync(&host)
            .apply_remote_batch_with_bodies(site.config().site_id, &changes, &[wrong])
            .expect("applied");
        assert!(!host.has_body(&late).expect("has"));
        assert_eq!(
            crate::testkit::host_sync(&host)
                .bodies_owed_by(site.config().site_id)
                .expect("owed"),
            vec![(late, 0)]
        );
        round(&host, &site);
        assert!(host.has_body(&late).expect("has"));
    }

    /// A whole round in memory, counting the messages of each kind that crossed.
    fn counted_round(
        host: &Replica,
        site: &Replica,
    ) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        observed_round(host, site, |_, m| {
            *counts.entry(m.kind()).or_insert(0) += 1;
        })
        .expect("site");
        counts
    }

    /// Which way a message goes, in `observed_round`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Way {
        ToHost,
        ToSite,
    }

    /// Runs a round in memory, each message through `on_the_way` (which may alter it): one to
    /// the site before the site takes it, one to the host as the site sends it. Until the round
    /// ends, or the site refuses a message.
    fn observed_round(
        host: &Replica,
        site: &Replica,
        mut on_the_way: impl FnMut(Way, &mut Msg),
    ) -> Result<()> {
        let mut s = SiteSession::new(signer(site), Vec::new());
        let mut h = HostSession::new(site.config().site_id, certificate(site));
        let mut hello = s.start(crate::testkit::site_sync(site)).expect("start");
        on_the_way(Way::ToHost, &mut hello);
        let mut to_host = vec![hello];
        for _ in 0..10_000 {
            let mut to_site = Vec::new();
            for m in to_host.drain(..) {
                to_site.extend(
                    h.handle(crate::testkit::host_sync(host), wire(&m))
                        .expect("host"),
                );
            }
            for mut m in to_site {
                on_the_way(Way::ToSite, &mut m);
                for mut out in s.handle(crate::testkit::site_sync(site), wire(&m))? {
                    on_the_way(Way::ToHost, &mut out);
                    to_host.push(out);
                }
            }
            if s.is_done() {
                return Ok(());
            }
        }
        panic!("the round did not end");
    }

    #[test]
    fn small_new_bodies_come_down_with_their_metadata() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        let ids: Vec<DocId> = (0..40)
            .map(|i| {
                host.put_document(
                    &actor,
                    AccessMode::Normal,
                    None,
                    &ins,
                    new_doc(&format!("h{i}"), vec![i as u8; 3000]),
                )
                .expect("write")
            })
            .collect();
        let counts = counted_round(&host, &site);
        assert_eq!(counts.get("GetBody"), None, "{counts:?}");
        for (i, id) in ids.iter().enumerate() {
            let read = site
                .read_document(&actor, id, AccessMode::Normal, None)
                .expect("read offline");
            assert_eq!(&read.body[..], &vec![i as u8; 3000][..]);
        }
        assert_eq!(site.missing_bodies().expect("missing").len(), 0);
        // A larger body is fetched as before.
        let big = host
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("big", vec![1; INLINE_MAX as usize + 1]),
            )
            .expect("write");
        let counts = counted_round(&host, &site);
        assert_eq!(counts.get("GetBody"), Some(&1), "{counts:?}");
        assert!(
            site.read_document(&actor, &big, AccessMode::Normal, None)
                .is_ok()
        );
    }

    /// More small new bodies than one batch carries: each batch ends where its bodies would
    /// pass `CHUNK_MAX`, so every body comes with its metadata (none is asked for), and one
    /// `Pull` brings `PULL_PAGES` batches. A pushed document whose body is too large to go
    /// inline holds the pull back until its body is stored: no pull is asked for and dropped.
    #[test]
    fn a_long_pull_carries_every_small_body_and_asks_once_per_window() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        let docs: Vec<_> = (0..PER_ANSWER + 3)
            .map(|i| (ins.clone(), new_doc(&format!("h{i}"), vec![i as u8; 4096])))
            .collect();
        host.put_documents(&actor, AccessMode::Normal, None, docs)
            .expect("host writes");
        let large = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("large", vec![7; INLINE_MAX as usize + 1]),
            )
            .expect("site writes");
        let counts = counted_round(&host, &site);
        assert_eq!(counts.get("GetBody"), None, "{counts:?}");
        assert_eq!(counts.get("Pull"), Some(&2), "{counts:?}");
        assert_eq!(counts.get("Pulled"), Some(&(PULL_PAGES + 2)), "{counts:?}");
        assert_eq!(counts.get("BodyStored"), Some(&1), "{counts:?}");
        assert!(site.missing_bodies().expect("missing").is_empty());
        assert_eq!(
            site.dossier(&ins).expect("dossier").documents,
            PER_ANSWER + 4
        );
        assert!(
            host.read_document(&actor, &large, AccessMode::Normal, None)
                .is_ok(),
            "the body went after the pull"
        );
    }

    /// Runs a round, each host message through `tamper` (with the number of `Pulled` batches
    /// the site took before it), until the round ends or the site refuses a message: the
    /// number of batches the site had taken when it sent each `Pull`, and how the round ended.
    fn pulls_of_round(
        host: &Replica,
        site: &Replica,
        mut tamper: impl FnMut(usize, &mut Msg),
    ) -> (Vec<usize>, Result<()>) {
        let (mut batches, mut pulls) = (0, Vec::new());
        let ended = observed_round(host, site, |way, m| match way {
            Way::ToSite => {
                tamper(batches, m);
                batches += usize::from(matches!(m, Msg::Pulled { .. }));
            }
            Way::ToHost if matches!(m, Msg::Pull { .. }) => pulls.push(batches),
            Way::ToHost => {}
        });
        (pulls, ended)
    }

    /// New documents of 4 KiB in one `Pulled` batch (`CHUNK_MAX` of inline bodies).
    const PER_BATCH: usize = CHUNK_MAX / 4096;

    /// New documents of 4 KiB in one answer: a small first batch (`FIRST_PAGE_BODIES`), then
    /// full ones.
    const PER_ANSWER: usize = FIRST_PAGE_BODIES as usize / 4096 + PER_BATCH * (PULL_PAGES - 1);

    /// A host holding `answers` full answers of small new documents (and a few more) for the
    /// site of `host_and_site`: the documents it wrote.
    fn long_pull(
        answers: usize,
    ) -> (
        tempfile::TempDir,
        Replica,
        Replica,
        carnet_store::ids::Ins,
        usize,
    ) {
        host_with_new_documents(PER_ANSWER * answers + 3)
    }

    /// The replicas of `host_and_site` after a round, then `written` new documents of 4 KiB
    /// written at the host: what `long_pull` answers.
    fn host_with_new_documents(
        written: usize,
    ) -> (
        tempfile::TempDir,
        Replica,
        Replica,
        carnet_store::ids::Ins,
        usize,
    ) {
        let (t, host, site, ins) = host_and_site();
        round(&host, &site);
        let docs: Vec<_> = (0..written)
            .map(|i| (ins.clone(), new_doc(&format!("h{i}"), vec![i as u8; 4096])))
            .collect();
        host.put_documents(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            docs,
        )
        .expect("host writes");
        (t, host, site, ins, written)
    }

    /// A pull of several answers: the site asks for the next one on the first batch of each
    /// (where the host says the answer ends), not after its last, and every document comes.
    #[test]
    fn a_long_pull_asks_for_the_next_answer_on_the_first_batch_of_each() {
        let (_t, host, site, ins, written) = long_pull(2);
        let before = site.dossier(&ins).expect("dossier").documents;
        let (pulls, ended) = pulls_of_round(&host, &site, |_, _| {});
        ended.expect("the round ends well");
        assert_eq!(pulls, vec![0, 1, 1 + PULL_PAGES]);
        assert_eq!(
            site.dossier(&ins).expect("dossier").documents,
            before + written
        );
        assert!(site.missing_bodies().expect("missing").is_empty());
        // The host's log is all taken: the next round pulls nothing.
        let (pulls, ended) = pulls_of_round(&host, &site, |_, _| {});
        ended.expect("the next round ends well");
        assert!(pulls.len() <= 1, "{pulls:?}");
    }

    /// An answer whose fourth batch reaches the host's head names no end (`next` is `None` in
    /// each batch): nothing is asked ahead, and the round ends with it. Its first batch is
    /// small (`FIRST_PAGE_BODIES`), the others carry `CHUNK_MAX` of bodies.
    #[test]
    fn an_answer_of_four_full_batches_that_reaches_the_head_has_nothing_asked_ahead() {
        let (_t, host, site, ins, written) = host_with_new_documents(PER_ANSWER);
        let before = site.dossier(&ins).expect("dossier").documents;
        let (mut batches, mut inline) = (Vec::new(), Vec::new());
        let (pulls, ended) = pulls_of_round(&host, &site, |_, m| {
            if let Msg::Pulled {
                more, next, bodies, ..
            } = m
            {
                batches.push((*more, *next));
                inline.push(bodies.iter().map(|b| b.bytes.len()).sum::<usize>());
            }
        });
        ended.expect("the round ends well");
        let full = (true, None);
        assert_eq!(
            batches,
            vec![full, full, full, (false, None)],
            "four full batches, the last at the head"
        );
        let first = FIRST_PAGE_BODIES as usize;
        assert_eq!(inline, vec![first, CHUNK_MAX, CHUNK_MAX, CHUNK_MAX]);
        assert_eq!(pulls, vec![0], "nothing asked ahead");
        assert_eq!(
            site.dossier(&ins).expect("dossier").documents,
            before + written
        );
    }

    /// A long pull sent with the `Hello` while the site owes the host a body: no `Pull` goes
    /// ahead on the answer's first batch, nothing of it is applied before the body is stored,
    /// and the pull asked again behind the body's pieces goes ahead as any other.
    #[test]
    fn a_long_pull_while_a_body_is_owed_asks_nothing_ahead_before_the_body() {
        let (_t, host, site, ins, written) = long_pull(2);
        let late = owing_a_body(&host, &site, &ins);
        let before = site.dossier(&ins).expect("dossier").documents;
        let mut s = SiteSession::new(signer(&site), Vec::new());
        let opening = s
            .opening(crate::testkit::site_sync(&site), true, None)
            .expect("opening");
        assert_eq!(opening.len(), 2, "Hello and Pull");
        let (before_body, pulls) =
            round_holding_the_pull_for_a_body(&host, &site, s, opening, |m| m);
        assert_eq!(
            before_body, 2,
            "the Pull of the Hello, and the one asked again behind the body's pieces"
        );
        assert_eq!(pulls, 4, "asked again behind the body, then ahead twice");
        assert!(host.has_body(&late).expect("has"));
        assert_eq!(
            site.dossier(&ins).expect("dossier").documents,
            before + written
        );
    }

    /// A host whose answer does not end where it said: the site applies nothing of the next
    /// answer (its cursor stays where the first one ended) and ends the round.
    #[test]
    fn a_host_whose_answer_ends_elsewhere_than_it_said_gets_nothing_of_the_next_applied() {
        let (_t, host, site, _, _) = long_pull(2);
        let mut end_of_first = None;
        let (pulls, ended) = pulls_of_round(&host, &site, |batches, m| {
            if let Msg::Pulled { items, next, .. } = m
                && batches < PULL_PAGES
            {
                *next = next.map(|n| n - 1);
                end_of_first = items.last().map(|(seq, _)| *seq);
            }
        });
        let e = ended.expect_err("refused");
        assert!(e.to_string().contains("did not end at"), "{e}");
        assert_eq!(pulls, vec![0, 1]);
        assert_eq!(
            crate::testkit::site_sync(&site)
                .pull_cursor()
                .expect("cursor"),
            end_of_first.expect("a first answer")
        );
    }

    /// A host whose answer stops at its head short of where it said it ends: the site takes
    /// nothing of that batch and ends the round.
    #[test]
    fn a_host_whose_answer_stops_short_of_where_it_said_gets_that_batch_refused() {
        let (_t, host, site, _, _) = long_pull(2);
        let mut end_of_batch = None;
        let (_, ended) = pulls_of_round(&host, &site, |batches, m| {
            if let Msg::Pulled { items, more, .. } = m {
                if batches == 0 {
                    end_of_batch = items.last().map(|(seq, _)| *seq);
                } else if batches == 1 {
                    *more = false;
                }
            }
        });
        let e = ended.expect_err("refused");
        assert!(e.to_string().contains("stopped before"), "{e}");
        assert_eq!(
            crate::testkit::site_sync(&site)
                .pull_cursor()
                .expect("cursor"),
            end_of_batch.expect("a first batch")
        );
    }

    /// The shape of `Msg` before `Pulled::next`, up to `Pulled` (variant 9).
    #[derive(Serialize, Deserialize)]
    #[allow(dead_code)] // Only `Pulled` is ever made or read.
    enum Earlier {
        V0,
        V1,
        V2,
        V3,
        V4,
        V5,
        V6,
        V7,
        V8,
        Pulled {
            items: Vec<(u64, PullItem)>,
            more: bool,
            bodies: Vec<BodyPiece>,
        },
    }

    /// A site of this build cannot read an earlier host's batches (`next` is missing): it says
    /// the peer may be of an earlier build, not only that the frame did not decode.
    #[test]
    fn a_site_told_by_a_host_of_the_build_before_says_the_peer_may_be_of_an_earlier_build() {
        let batch = Earlier::Pulled {
            items: Vec::new(),
            more: false,
            bodies: Vec::new(),
        };
        let mut d = crate::frame::FrameDecoder::new();
        d.push(&crate::frame::encode(&batch).expect("encode"));
        let err = d
            .next_message::<Msg>()
            .expect_err("a batch of the earlier shape");
        assert_eq!(err, crate::frame::FrameError::EndsEarly);
        assert!(
            err.to_string().contains("may run an earlier Carnet"),
            "{err}"
        );
    }

    /// A site of the build before `Pulled::next` decodes this build's batches: the field,
    /// appended last, is left unread.
    #[test]
    fn a_site_of_the_build_before_decodes_a_batch_that_names_where_its_answer_ends() {
        let (_t, host, site, _, _) = long_pull(1);
        let mut first = None;
        let (_, ended) = pulls_of_round(&host, &site, |batches, m| {
            if batches == 0 && matches!(m, Msg::Pulled { .. }) {
                first = Some(m.clone());
            }
        });
        ended.expect("the round ends well");
        let Some(Msg::Pulled { items, next, .. }) = &first else {
            panic!("a batch: {first:?}");
        };
        assert!(next.is_some(), "the answer stops before the head");
        let mut d = crate::frame::FrameDecoder::new();
        d.push(&crate::frame::encode(first.as_ref().expect("a batch")).expect("encode"));
        match d.next_message::<Earlier>().expect("decoded") {
            Some(Earlier::Pulled { items: earlier, .. }) => assert_eq!(&earlier, items),
            _ => panic!("not a batch"),
        }
    }

    /// Runs `s`'s round from `first` to its end, each message to the host through `on_the_way`,
    /// checking that the site's pull cursor has not moved when the host stores a body: the
    /// `Pull`s the site sent before the host stored it, and in all.
    fn round_holding_the_pull_for_a_body(
        host: &Replica,
        site: &Replica,
        mut s: SiteSession,
        first: Vec<Msg>,
        on_the_way: impl Fn(Msg) -> Msg,
    ) -> (usize, usize) {
        let cursor = site.pull_cursor().expect("cursor");
        let mut h = HostSession::new(site.config().site_id, certificate(site));
        let mut to_host = first;
        let pulls_in = |msgs: &[Msg]| msgs.iter().filter(|m| m.kind() == "Pull").count();
        let (mut pulls, mut before_body) = (0, None);
        for _ in 0..100 {
            pulls += pulls_in(&to_host);
            let arrived: Vec<Msg> = to_host.drain(..).map(|m| on_the_way(wire(&m))).collect();
            for m in h
                .handle_all(crate::testkit::host_sync(host), arrived)
                .expect("host")
            {
                if m.kind() == "BodyStored" {
                    assert_eq!(
                        site.pull_cursor().expect("cursor"),
                        cursor,
                        "nothing pulled before the body"
                    );
                    before_body.get_or_insert(pulls + pulls_in(&to_host));
                }
                to_host.extend(
                    s.handle(crate::testkit::site_sync(site), wire(&m))
                        .expect("site"),
                );
            }
            if s.is_done() {
                return (before_body.expect("the body was stored"), pulls);
            }
        }
        panic!("the round did not end");
    }

    /// The pull goes out behind the last push; when the host then asks for a body of that
    /// push (here, one spoiled on the way), the site applies nothing of that pull, sends the
    /// body and pulls again: a pull (which may take the dossier, or a document, away from the
    /// site) never comes before a body the site owes.
    #[test]
    fn a_body_asked_for_after_the_pull_went_still_goes_before_the_pull_is_applied() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        let doc = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("offline", vec![7; 500]),
            )
            .expect("write");
        let from_host = host
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("host", vec![8; 500]),
            )
            .expect("write");
        let mut s = SiteSession::new(signer(&site), Vec::new());
        let hello = vec![s.start(crate::testkit::site_sync(&site)).expect("start")];
        let spoil = |m: Msg| match m {
            Msg::Push {
                changes,
                mut bodies,
            } => {
                bodies.iter_mut().for_each(|b| b.bytes[0] ^= 1);
                Msg::Push { changes, bodies }
            }
            m => m,
        };
        let (_, pulls) = round_holding_the_pull_for_a_body(&host, &site, s, hello, spoil);
        assert_eq!(pulls, 2, "asked again after the body");
        assert!(
            host.has_body(&doc).expect("has"),
            "the body reached the host"
        );
        assert!(
            site.read_document(&actor, &from_host, AccessMode::Normal, None)
                .is_ok(),
            "then the pull"
        );
    }

    /// A site with nothing to push that expects news sends its `Pull` with its `Hello`: the
    /// round is one exchange, its trace entries go after the pull; one with something to
    /// push, or expecting nothing, opens with the `Hello` alone.
    #[test]
    fn a_site_expecting_news_with_nothing_to_push_pulls_with_its_hello() {
        let (_t, host, site, ins) = host_and_site();
        let actor = Actor::Professional(doctor());
        let seen = host
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("seen", vec![5; 500]),
            )
            .expect("write");
        round(&host, &site);
        let from_host = host
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("host", vec![8; 500]),
            )
            .expect("write");
        let kinds = |msgs: &[Msg]| msgs.iter().map(Msg::kind).collect::<Vec<_>>();
        let opening = |expect_news| {
            SiteSession::new(signer(&site), Vec::new())
                .opening(crate::testkit::site_sync(&site), expect_news, None)
                .expect("opening")
        };
        assert_eq!(kinds(&opening(false)), ["Hello"]);
        // A read at the site: a trace entry to send, and still nothing to push.
        site.read_document(&actor, &seen, AccessMode::Normal, None)
            .expect("read");
        let trace_head = site.trace_head().expect("head");
        let mut s = SiteSession::new(signer(&site), Vec::new());
        let mut h = HostSession::new(site.config().site_id, certificate(&site));
        let first = s
            .opening(crate::testkit::site_sync(&site), true, None)
            .expect("opening");
        assert_eq!(kinds(&first), ["Hello", "Pull"]);
        let replies = h
            .handle_all(
                crate::testkit::host_sync(&host),
                first.iter().map(wire).collect(),
            )
            .expect("host");
        assert_eq!(kinds(&replies), ["Welcome", "Pulled"]);
        let mut next = Vec::new();
        for r in &replies {
            next = s
                .handle(crate::testkit::site_sync(&site), wire(r))
                .expect("site");
        }
        // The document came with the first exchange; the trace goes after it.
        assert!(
            site.read_document(&actor, &from_host, AccessMode::Normal, None)
                .is_ok()
        );
        assert_eq!(kinds(&next), ["Traces"]);
        let acks = h
            .handle_all(
                crate::testkit::host_sync(&host),
                next.iter().map(wire).collect(),
            )
            .expect("host");
        let last = s
            .handle(crate::testkit::site_sync(&site), wire(&acks[0]))
            .expect("site");
        assert_eq!(last, [Msg::Bye]);
        assert!(
            crate::testkit::host_sync(&host)
                .trace_mark(site.config().site_id)
                .expect("mark")
                >= trace_head
        );
        // Something to push: the pull waits behind the push, as before.
        site.put_document(
            &actor,
            AccessMode::Normal,
            None,
            &ins,
            new_doc("site", vec![9; 500]),
        )
        .expect("write");
        assert_eq!(kinds(&opening(true)), ["Hello"]);
    }

    /// A document written at `site` whose metadata `host` took with a body that does not
    /// match, the push acknowledged: the site owes its body (the host's `Welcome` names it).
    fn owing_a_body(host: &Replica, site: &Replica, ins: &carnet_store::ids::Ins) -> DocId {
        let late = site
            .put_document(
                &Actor::Professional(doctor()),
                AccessMode::Normal,
                None,
                ins,
                new_doc("late", vec![7; 500]),
            )
            .expect("write");
        let changes = crate::testkit::site_sync(site)
            .outbox(0, 10)
            .expect("outbox");
        let wrong = BodyPiece {
            doc: late,
            offset: 0,
            total: 500,
            bytes: vec![6; 500],
        };
        let upto = changes.last().map(|(seq, _)| *seq).expect("a change");
        crate::testkit::host_sync(host)
            .apply_remote_batch_with_bodies(site.config().site_id, &changes, &[wrong])
            .expect("applied");
        crate::testkit::site_sync(site)
            .ack_outbox(upto)
            .expect("the ack the site received");
        late
    }

    /// A round that sends a body the host lacks asks for its pull behind the body's last
    /// pieces, not once the host has stored it; the batches, here arriving before the host's
    /// `BodyStored` (which travels on the body's own stream), are applied only after it.
    #[test]
    fn the_pull_goes_behind_the_last_pieces_of_a_body_and_is_applied_once_it_is_stored() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        let news = crate::testkit::write_doc(&host, &ins, "news", vec![1; 3000]);
        let large =
            crate::testkit::write_doc(&site, &ins, "large", vec![7; INLINE_MAX as usize + 1]);
        let cursor = site.pull_cursor().expect("cursor");
        let mut s = SiteSession::new(signer(&site), Vec::new());
        let mut h = HostSession::new(site.config().site_id, certificate(&site));
        let mut to_host = vec![s.start(crate::testkit::site_sync(&site)).expect("start")];
        let (mut pulls, mut pulls_before_stored, mut held) = (0, None, Vec::new());
        for _ in 0..100 {
            pulls += to_host.iter().filter(|m| m.kind() == "Pull").count();
            let arrived: Vec<Msg> = to_host.drain(..).map(|m| wire(&m)).collect();
            let answers = h
                .handle_all(crate::testkit::host_sync(&host), arrived)
                .expect("host");
            let (stored, mut to_site): (Vec<Msg>, Vec<Msg>) =
                answers.into_iter().partition(|m| m.kind() == "BodyStored");
            held.extend(stored);
            if to_site.is_empty() && !held.is_empty() {
                pulls_before_stored.get_or_insert(pulls);
                assert_eq!(
                    site.pull_cursor().expect("cursor"),
                    cursor,
                    "nothing of the pull applied before the body is stored"
                );
                to_site = std::mem::take(&mut held);
            }
            for m in to_site {
                to_host.extend(
                    s.handle(crate::testkit::site_sync(&site), wire(&m))
                        .expect("site"),
                );
            }
            if s.is_done() {
                break;
            }
        }
        assert!(s.is_done(), "the round ends");
        assert_eq!(
            pulls_before_stored,
            Some(1),
            "the Pull went before the body was stored"
        );
        assert_eq!(pulls, 1, "and once");
        assert!(host.has_body(&large).expect("has"));
        assert!(
            site.read_document(&actor, &news, AccessMode::Normal, None)
                .is_ok(),
            "the pull was applied"
        );
    }

    /// A pull sent with the `Hello`, and the host's `Welcome` names a body this site still
    /// owes: nothing of that pull is applied before the body is stored, and the round asks for
    /// it again behind the body's pieces.
    #[test]
    fn a_pull_sent_with_the_hello_waits_for_the_bodies_the_welcome_names() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        let late = owing_a_body(&host, &site, &ins);
        let from_host = host
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("host", vec![8; 500]),
            )
            .expect("write");
        let mut s = SiteSession::new(signer(&site), Vec::new());
        let opening = s
            .opening(crate::testkit::site_sync(&site), true, None)
            .expect("opening");
        assert_eq!(opening.len(), 2, "Hello and Pull");
        let (before_body, pulls) =
            round_holding_the_pull_for_a_body(&host, &site, s, opening, |m| m);
        assert_eq!(
            before_body, 2,
            "the Pull of the Hello, and the one asked again behind the body's pieces"
        );
        assert_eq!(pulls, 2, "asked again behind the body, once");
        assert!(host.has_body(&late).expect("has"));
        assert!(
            site.read_document(&actor, &from_host, AccessMode::Normal, None)
                .is_ok()
        );
    }

    /// A site says its version in its `Hello`; one the operator's table or page could not show
    /// as it is (markup, control characters, a flood) is refused before anything is kept.
    #[test]
    fn a_hello_with_a_version_unfit_to_show_is_refused() {
        let (_t, host, site, _ins) = host_and_site();
        let hello = |version: &str| {
            let Msg::Hello {
                site: id,
                cursor,
                outbox_acked,
                chain_key,
                about,
                renewal,
            } = SiteSession::new(signer(&site), Vec::new())
                .start(crate::testkit::site_sync(&site))
                .expect("hello")
            else {
                panic!("not a Hello");
            };
            assert_eq!(about.version, env!("CARGO_PKG_VERSION"));
            Msg::Hello {
                site: id,
                cursor,
                outbox_acked,
                chain_key,
                about: SiteAbout {
                    version: version.into(),
                    ..about
                },
                renewal,
            }
        };
        for bad in [
            "<script>alert(1)</script>".to_string(),
            "1.0\n# HELP fake".to_string(),
            "1.0\"} 1\nfake{a=\"".to_string(),
            "9".repeat(VERSION_MAX + 1),
        ] {
            let refused = HostSession::new(site.config().site_id, certificate(&site))
                .handle(crate::testkit::host_sync(&host), wire(&hello(&bad)));
            assert!(
                matches!(&refused, Err(e) if e.to_string().contains("version")),
                "{bad}: {refused:?}"
            );
        }
        let fine = HostSession::new(site.config().site_id, certificate(&site)).handle(
            crate::testkit::host_sync(&host),
            wire(&hello("0.1.0-rc.1+abc")),
        );
        assert!(
            matches!(&fine.as_deref(), Ok([Msg::Welcome { .. }])),
            "{fine:?}"
        );
    }

    #[test]
    fn a_round_with_nothing_new_is_one_exchange_and_renews_the_lease() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let (as_of, _) = site.authority_freshness().expect("freshness");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut s = SiteSession::new(signer(&site), Vec::new());
        let mut h = HostSession::new(site.config().site_id, certificate(&site));
        let welcome = h
            .handle(
                crate::testkit::host_sync(&host),
                wire(&s.start(crate::testkit::site_sync(&site)).expect("hello")),
            )
            .expect("welcome");
        assert!(
            matches!(
                &welcome[..],
                [Msg::Welcome {
                    current: Some(_),
                    ..
                }]
            ),
            "{welcome:?}"
        );
        let answer = s
            .handle(crate::testkit::site_sync(&site), wire(&welcome[0]))
            .expect("site");
        assert_eq!(
            answer,
            vec![Msg::Bye],
            "no Pull, no body: the round is over"
        );
        assert!(s.is_done());
        let (renewed, expired) = site.authority_freshness().expect("freshness");
        assert!(
            renewed > as_of && !expired,
            "the Welcome's heartbeat dates the cache"
        );
        // Behind the host's log, or with something to push, the round goes on.
        crate::testkit::as_host(&host)
            .authority()
            .update_emergency(&ins, |p| p.btg_allowed = false)
            .expect("a new signed record for the dossier");
        let welcome = HostSession::new(site.config().site_id, certificate(&site))
            .handle(
                crate::testkit::host_sync(&host),
                SiteSession::new(signer(&site), Vec::new())
                    .start(crate::testkit::site_sync(&site))
                    .expect("hello"),
            )
            .expect("welcome");
        assert!(
            matches!(&welcome[..], [Msg::Welcome { current: None, .. }]),
            "{welcome:?}"
        );
    }

    #[test]
    fn a_heartbeat_for_a_log_head_the_site_has_not_reached_renews_nothing() {
        let (_t, host, site, ins) = host_and_site();
        let site_id = site.config().site_id;
        round(&host, &site);
        let (as_of, _) = site.authority_freshness().expect("freshness");
        std::thread::sleep(std::time::Duration::from_millis(5));
        // A new record for the site: its log grows, the site has not pulled it.
        crate::testkit::as_host(&host)
            .authority()
            .update_emergency(&ins, |p| p.btg_allowed = false)
            .expect("a new signed record for the dossier");
        let head = crate::testkit::host_sync(&host)
            .log_head(site_id)
            .expect("head");
        assert!(head > site.pull_cursor().expect("cursor"));
        // A Hello that claims the head (a lying or confused site) gets a heartbeat naming it...
        let welcome = HostSession::new(site_id, certificate(&site))
            .handle(
                crate::testkit::host_sync(&host),
                Msg::Hello {
                    site: site_id.0,
                    cursor: head,
                    outbox_acked: 0,
                    chain_key: crate::testkit::site_sync(&site).trace_chain_key(),
                    about: SiteAbout::default(),
                    renewal: None,
                },
            )
            .expect("welcome");
        assert!(
            matches!(
                &welcome[..],
                [Msg::Welcome {
                    current: Some(_),
                    ..
                }]
            ),
            "{welcome:?}"
        );
        // ...which a site whose cursor is behind does not admit: it pulls.
        let mut s = SiteSession::new(signer(&site), Vec::new());
        s.start(crate::testkit::site_sync(&site)).expect("hello");
        let answer = s
            .handle(crate::testkit::site_sync(&site), wire(&welcome[0]))
            .expect("site");
        assert!(
            answer.iter().any(|m| matches!(m, Msg::Pull { .. })),
            "{answer:?}"
        );
        assert_eq!(site.authority_freshness().expect("freshness").0, as_of);
        // A whole round pulls the log to its head, and the last batch's heartbeat renews.
        round(&host, &site);
        assert!(site.authority_freshness().expect("freshness").0 > as_of);
        assert_eq!(site.pull_cursor().expect("cursor"), head);
    }

    #[test]
    fn a_site_cannot_speak_for_another() {
        let (_t, host, site, _) = host_and_site();
        let mut h = HostSession::new(SiteId(site.config().site_id.0 + 1), certificate(&site));
        let hello = SiteSession::new(signer(&site), Vec::new())
            .start(crate::testkit::site_sync(&site))
            .expect("hello");
        assert!(h.handle(crate::testkit::host_sync(&host), hello).is_err());
        let mut h = HostSession::new(site.config().site_id, certificate(&site));
        assert!(
            h.handle(crate::testkit::host_sync(&host), Msg::Pull { after: 0 })
                .is_err(),
            "nothing before Hello"
        );
        // A stream that opens with a body fetch carries body fetches only.
        let mut bodies = HostSession::new(site.config().site_id, certificate(&site));
        let get = Msg::GetBody {
            doc: DocId([9; 16]),
            offset: 0,
        };
        // No such document (or none for this site): answered as a body the host lacks, so
        // the round goes on and nothing is said of it.
        assert_eq!(
            bodies
                .handle(crate::testkit::host_sync(&host), get.clone())
                .expect("answered"),
            vec![Msg::NoBody {
                doc: DocId([9; 16])
            }]
        );
        assert!(
            HostSession::new(site.config().site_id, certificate(&site))
                .handle(crate::testkit::host_sync(&host), get.clone())
                .is_ok(),
            "a GetBody opens a body stream"
        );
        assert!(
            bodies
                .handle(crate::testkit::host_sync(&host), Msg::Pull { after: 0 })
                .expect_err("refused")
                .to_string()
                .contains("body stream")
        );
        let mut s = SiteSession::new(signer(&site), Vec::new());
        assert!(
            s.handle(
                crate::testkit::site_sync(&site),
                Msg::Pulled {
                    items: vec![],
                    more: false,
                    bodies: vec![],
                    next: None,
                }
            )
            .is_err()
        );
        // A host claiming more than the site ever sent (a replica restored from a backup).
        let mut s = SiteSession::new(signer(&site), Vec::new());
        let welcome = Msg::Welcome {
            acked: 1_000,
            traces_acked: 0,
            traces_hash: [0; 32],
            returned: vec![],
            owed: vec![],
            log_head: 0,
            current: None,
            renewed: None,
            hand_over: None,
            host_revocations: vec![],
        };
        assert!(s.handle(crate::testkit::site_sync(&site), welcome).is_err());
        // A host holding another history of the site's trace than the site's own.
        crate::testkit::site_sync(&site)
            .traces_after(0, 10)
            .expect("flushed to the table");
        let ours = crate::testkit::site_sync(&site)
            .own_trace_hash(1)
            .expect("hash")
            .expect("entry 1");
        let welcome = |traces_hash| Msg::Welcome {
            acked: 0,
            traces_acked: 1,
            traces_hash,
            returned: vec![],
            owed: vec![],
            log_head: 0,
            current: None,
            renewed: None,
            hand_over: None,
            host_revocations: vec![],
        };
        assert!(matches!(
            SiteSession::new(signer(&site), Vec::new())
                .handle(crate::testkit::site_sync(&site), welcome([1; 32])),
            Err(Error::Store(carnet_store::Error::Integrity(_)))
        ));
        assert!(
            SiteSession::new(signer(&site), Vec::new())
                .handle(crate::testkit::site_sync(&site), welcome(ours))
                .is_ok()
        );
    }
    #[test]
    fn the_trace_and_the_pushes_travel_in_one_window_and_are_acknowledged_in_order() {
        let (_t, host, site, ins) = host_and_site();
        let actor = Actor::Professional(doctor());
        round(&host, &site);
        // More than one batch of trace entries, and more than one push of documents.
        let docs: Vec<_> = (0..BATCH_MAX + 100)
            .map(|i| (ins.clone(), new_doc(&format!("d{i}"), vec![i as u8; 64])))
            .collect();
        site.put_documents(&actor, AccessMode::Normal, None, docs)
            .expect("writes");
        let site_id = site.config().site_id;
        let (mut s, mut h) = (
            SiteSession::new(signer(&site), Vec::new()),
            HostSession::new(site_id, certificate(&site)),
        );
        let welcome = h
            .handle_all(
                crate::testkit::host_sync(&host),
                vec![wire(
                    &s.start(crate::testkit::site_sync(&site)).expect("hello"),
                )],
            )
            .expect("welcome");
        let window = s
            .handle(crate::testkit::site_sync(&site), wire(&welcome[0]))
            .expect("window");
        let kinds: Vec<_> = window.iter().map(Msg::kind).collect();
        // Sent without waiting for an acknowledgement: the trace first, then the documents,
        // then the pull (nothing more to push, and no body due).
        assert_eq!(kinds, ["Traces", "Traces", "Push", "Push", "Pull"]);
        let replies = h
            .handle_all(
                crate::testkit::host_sync(&host),
                window.iter().map(wire).collect(),
            )
            .expect("the host stores the window");
        let kinds: Vec<_> = replies.iter().map(Msg::kind).collect();
        assert_eq!(
            kinds,
            ["TracesAck", "TracesAck", "PushAck", "PushAck", "Pulled"]
        );
        assert_eq!(
            crate::testkit::host_sync(&host)
                .trace_mark(site_id)
                .expect("mark"),
            site.trace_head().expect("head"),
            "every trace entry is at the host"
        );
        // A read now adds a trace entry: it waits for the next round, behind nothing.
        let first = crate::testkit::site_sync(&site)
            .outbox(0, 1)
            .expect("outbox")[0]
            .1
            .clone();
        let Some(meta) = first.document() else {
            panic!("a document first")
        };
        site.read_document(&actor, &meta.facts.id, AccessMode::Normal, None)
            .expect("read");
        let (acks, pulled) = replies.split_at(4);
        for r in acks {
            let next = s
                .handle(crate::testkit::site_sync(&site), wire(r))
                .expect("acknowledged");
            assert_eq!(next, [], "the pull is answered already");
        }
        assert_eq!(site.outbox_len().expect("len"), 0);
        let next = s
            .handle(crate::testkit::site_sync(&site), wire(&pulled[0]))
            .expect("pulled");
        assert_eq!(next, [Msg::Bye], "nothing to fetch: the round ends");
        assert_eq!(
            crate::testkit::host_sync(&host)
                .trace_mark(site_id)
                .expect("mark")
                + 1,
            site.trace_head().expect("head")
        );
        // Acknowledgements out of turn are refused: of trace entries never sent, of a push
        // while a trace batch is the oldest in flight.
        let (mut s, mut h) = (
            SiteSession::new(signer(&site), Vec::new()),
            HostSession::new(site_id, certificate(&site)),
        );
        let welcome = h
            .handle(
                crate::testkit::host_sync(&host),
                s.start(crate::testkit::site_sync(&site)).expect("hello"),
            )
            .expect("welcome");
        let window = s
            .handle(crate::testkit::site_sync(&site), welcome[0].clone())
            .expect("window");
        assert!(matches!(&window[..], [Msg::Traces { .. }]), "{window:?}");
        let beyond = site.trace_head().expect("head") + 1;
        assert!(
            s.handle(
                crate::testkit::site_sync(&site),
                Msg::TracesAck { upto: beyond }
            )
            .is_err()
        );
        let push_ack = Msg::PushAck {
            upto: 0,
            missing: vec![],
            returned: vec![],
        };
        assert!(
            s.handle(crate::testkit::site_sync(&site), push_ack)
                .is_err()
        );
    }

    #[test]
    fn the_host_takes_trace_entries_only_under_a_head_the_sites_certificate_key_signed() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        site.put_document(
            &actor,
            AccessMode::Normal,
            None,
            &ins,
            new_doc("t", b"x".to_vec()),
        )
        .expect("a traced write");
        let site_id = site.config().site_id;
        let held_before = crate::testkit::host_sync(&host)
            .trace_mark(site_id)
            .expect("mark");
        let records = crate::testkit::site_sync(&site)
            .traces_after(held_before, 100)
            .expect("traces");
        let last = records.last().expect("an entry").clone();
        let me = signer(&site);
        let sign = |who: &Identity, for_site: SiteId, seq: u64, hash: [u8; 32]| SignedTraceHead {
            seq,
            hash,
            signature: pki::sign(who, &SignedTraceHead::message(for_site, seq, &hash))
                .expect("sign"),
        };
        // Another certificate's key, of the same CA or not: the host checks against the
        // certificate of the connection.
        let now = host.now() / 1000;
        let stranger =
            pki::issue_site(&pki::new_ca(now).expect("ca"), site_id.0, now).expect("stranger");
        let mut other_entry = last.hash;
        other_entry[0] ^= 1;
        let refusals = |host: &Replica| {
            host.audit_entries(None)
                .expect("audit")
                .iter()
                .filter(|c| c.entry.action.name() == "trace-head-refused")
                .count()
        };
        let forged = [
            None,
            Some(sign(&me, SiteId(site_id.0 + 1), last.seq, last.hash)),
            Some(sign(&stranger, site_id, last.seq, last.hash)),
            Some(sign(&me, site_id, last.seq, other_entry)),
            Some(sign(&me, site_id, last.seq + 1, last.hash)),
        ];
        for (i, head) in forged.into_iter().enumerate() {
            let mut h = HostSession::new(site_id, certificate(&site));
            h.handle(
                crate::testkit::host_sync(&host),
                SiteSession::new(me.clone(), Vec::new())
                    .start(crate::testkit::site_sync(&site))
                    .expect("hello"),
            )
            .expect("welcome");
            let traces = Msg::Traces {
                records: records.clone(),
                head,
            };
            let refused = h.handle_all(crate::testkit::host_sync(&host), vec![wire(&traces)]);
            assert!(
                matches!(&refused, Err(Error::Store(carnet_store::Error::Integrity(e))) if e.contains("trace head")),
                "forgery {i}: {refused:?}"
            );
            assert_eq!(
                crate::testkit::host_sync(&host).trace_mark(site_id).ok(),
                Some(held_before),
                "forgery {i}"
            );
            assert_eq!(refusals(&host), i + 1, "forgery {i} is traced");
        }
        let before = crate::testkit::host_sync(&host)
            .signed_trace_head(site_id)
            .expect("read");
        assert!(before.is_some_and(|b| b.head.seq == held_before));
        // An honest round: the host keeps the head the site signed, with its certificate, and
        // it verifies for anyone holding it.
        round(&host, &site);
        let held = crate::testkit::host_sync(&host)
            .signed_trace_head(site_id)
            .expect("read")
            .expect("a signed head");
        assert_eq!(
            held.head.seq,
            crate::testkit::host_sync(&host)
                .trace_mark(site_id)
                .expect("mark")
        );
        assert_eq!(held.signer, certificate(&site));
        pki::verify(
            &held.signer,
            &SignedTraceHead::message(site_id, held.head.seq, &held.head.hash),
            &held.head.signature,
        )
        .expect("the held head verifies");
    }

    #[test]
    fn a_body_stream_takes_no_push_even_among_messages_that_arrived_together() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        let id = host
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("host", b"body".to_vec()),
            )
            .expect("host writes");
        let site_id = site.config().site_id;
        // A stream opened by a fetch, or by bodies the site sends.
        for opener in [Msg::GetBody { doc: id, offset: 0 }, Msg::PutBodies(vec![])] {
            let mut h = HostSession::new(site_id, certificate(&site));
            h.handle_all(crate::testkit::host_sync(&host), vec![opener])
                .expect("a body stream");
            let push = Msg::Push {
                changes: vec![],
                bodies: vec![],
            };
            let traces = Msg::Traces {
                records: vec![],
                head: None,
            };
            assert!(
                h.handle_all(crate::testkit::host_sync(&host), vec![push])
                    .is_err()
            );
            assert!(
                h.handle_all(crate::testkit::host_sync(&host), vec![traces])
                    .is_err()
            );
        }
    }
}

#[cfg(test)]
mod news_tests {
    use super::tests::{round, wire};
    use super::*;
    use crate::testkit::{certificate, doctor, host_and_site, new_doc, signer};
    use carnet_store::model::{AccessMode, Actor};
    use carnet_store::replica::Role;

    /// A body transfer, which the driver carries on a stream of its own.
    fn moves_a_body(m: &Msg) -> bool {
        matches!(m, Msg::PutBodies(_) | Msg::GetBody { .. })
    }

    /// In what order the site hears the host's answers on the two kinds of streams.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Answers {
        /// The session stream's first (its acknowledgements before the body transfers').
        SessionFirst,
        /// The body transfers' first: every acknowledgement waits until no body moves.
        BodiesFirst,
    }

    /// Runs `site`'s round as the driver carries it: bodies on a stream of their own, below
    /// the session stream (whatever waits on the session stream reaches the host first), the
    /// host's answers coming back in the order `answers` says. As soon as a body transfer is
    /// under way (sent, not delivered), `write` writes at the site and the session hears of it
    /// (`news`). Answers whether the host held the document written when the next body
    /// transfer reached it, and the round's report.
    fn round_with_a_write_while_a_body_moves(
        host: &Replica,
        site: &Replica,
        answers: Answers,
        write: impl FnOnce() -> DocId,
    ) -> (bool, RoundReport) {
        let mut s = SiteSession::new(signer(site), Vec::new());
        let certificate = certificate(site);
        let mut main = HostSession::new(site.config().site_id, certificate.clone());
        let mut bodies = HostSession::new(site.config().site_id, certificate);
        let mut to_host = vec![s.start(crate::testkit::site_sync(site)).expect("start")];
        assert!(
            s.news(crate::testkit::site_sync(site))
                .expect("news")
                .is_empty(),
            "nothing is pushed before the Welcome says where pushing resumes"
        );
        let mut body_transfers: std::collections::VecDeque<Msg> = Default::default();
        let mut held_back: Vec<Msg> = Vec::new();
        let (mut write, mut written, mut held_first) = (Some(write), None, None);
        for _ in 0..1_000 {
            let (session, transfers): (Vec<Msg>, Vec<Msg>) =
                to_host.drain(..).partition(|m| !moves_a_body(m));
            body_transfers.extend(transfers);
            if !body_transfers.is_empty()
                && let Some(write) = write.take()
            {
                written = Some(write());
                let news = s.news(crate::testkit::site_sync(site)).expect("news");
                to_host.extend(news.into_iter().filter(|m| !moves_a_body(m)));
                to_host.extend(session);
                continue;
            }
            let replies = if !session.is_empty() {
                let arrived = session.iter().map(wire).collect();
                let replies = main
                    .handle_all(crate::testkit::host_sync(host), arrived)
                    .expect("host");
                // The session stream delivers in order: behind what it holds back already.
                let hold = !body_transfers.is_empty() || !held_back.is_empty();
                if answers == Answers::BodiesFirst && hold {
                    held_back.extend(replies);
                    Vec::new()
                } else {
                    replies
                }
            } else if let Some(transfer) = body_transfers.pop_front() {
                if let (Some(doc), None) = (written, held_first) {
                    held_first = Some(host.has_body(&doc).expect("has"));
                }
                bodies
                    .handle(crate::testkit::host_sync(host), wire(&transfer))
                    .expect("host")
            } else if !held_back.is_empty() {
                std::mem::take(&mut held_back)
            } else {
                panic!("the round waits for nothing");
            };
            for m in replies {
                to_host.extend(
                    s.handle(crate::testkit::site_sync(site), wire(&m))
                        .expect("site"),
                );
            }
            if s.is_done() {
                assert!(held_back.is_empty(), "the round ended before its answers");
                return (
                    held_first.expect("a body moved after the write"),
                    s.report(),
                );
            }
        }
        panic!("the round did not end");
    }

    /// A document written at the site while an image moves between the host and it (written
    /// at `image_at`, the site or the host) leaves at once, on the session stream, and the
    /// host holds it before the image's next piece moves; the round ends with the image at
    /// both ends, the document (its body too: one of `size` bytes goes after its push, as
    /// owed) and the trace of its writing at the host, and nothing left in the outbox.
    fn a_document_written_while_an_image_moves(image_at: Role, answers: Answers, size: usize) {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let write = |at: &Replica, title: &str, body: Vec<u8>| {
            crate::testkit::write_doc(at, &ins, title, body)
        };
        let image = match image_at {
            Role::Site => write(&site, "image", vec![3; 3 * CHUNK_MAX]),
            Role::Host => write(&host, "image", vec![4; 3 * CHUNK_MAX]),
        };
        let mut written = None;
        let (held, report) = round_with_a_write_while_a_body_moves(&host, &site, answers, || {
            *written.get_or_insert(write(&site, "ordonnance", vec![5; size]))
        });
        let written = written.expect("written");
        assert_eq!(
            held,
            size as u64 <= INLINE_MAX,
            "a small body goes with its push, ahead of the image"
        );
        let site_sync = crate::testkit::site_sync(&site);
        assert_eq!(report.pushed, site_sync.outbox_issued().expect("issued"));
        assert!(site_sync.outbox(0, 1).expect("outbox").is_empty());
        assert_eq!(report.traces, site.trace_head().expect("trace head"));
        for doc in [image, written] {
            assert!(host.has_body(&doc).expect("body"));
            assert!(site.has_body(&doc).expect("body"));
        }
    }

    #[test]
    fn a_prescription_written_while_an_image_goes_up_is_pushed_ahead_of_it() {
        a_document_written_while_an_image_moves(Role::Site, Answers::SessionFirst, 300);
    }

    /// A mobile unit fetching an image: the prescription goes up in the middle of the fetch.
    #[test]
    fn a_prescription_written_while_an_image_comes_down_is_pushed_meanwhile() {
        a_document_written_while_an_image_moves(Role::Host, Answers::SessionFirst, 300);
    }

    /// The acknowledgement of a document written meanwhile, whose body is too large to go with
    /// its push, comes after the image's transfer is done: the round waits for it, then sends
    /// that body, before it ends.
    #[test]
    fn a_large_document_written_while_an_image_goes_up_is_sent_after_its_late_acknowledgement() {
        let size = 2 * INLINE_MAX as usize;
        a_document_written_while_an_image_moves(Role::Site, Answers::BodiesFirst, size);
    }

    /// A body the host does not hold yet (its author's round was cut before it went up) is
    /// asked for once in a round, and counted once as waiting, though the round fetches again
    /// after sending the body of a large document written meanwhile.
    #[test]
    fn a_body_the_host_lacks_is_asked_for_once_in_a_round_that_fetches_twice() {
        let (t, host, site, ins) = host_and_site();
        round(&host, &site);
        let other = crate::testkit::another_site(&t.path().join("other"), &host, 6);
        round(&host, &other);
        let actor = Actor::Professional(doctor());
        let large = || vec![6; 2 * INLINE_MAX as usize];
        let lacking = other
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("scan", large()),
            )
            .expect("write");
        super::resume_tests::cut_round(&host, &other, 0);
        assert!(!host.has_body(&lacking).expect("has"), "the body went up");
        let mut written = None;
        let (_, report) =
            round_with_a_write_while_a_body_moves(&host, &site, Answers::BodiesFirst, || {
                *written.get_or_insert(
                    site.put_document(
                        &actor,
                        AccessMode::Normal,
                        None,
                        &ins,
                        new_doc("report", large()),
                    )
                    .expect("write"),
                )
            });
        assert_eq!(report.bodies_waiting, 1, "{report:?}");
        assert!(host.has_body(&written.expect("written")).expect("has"));
        assert!(!site.has_body(&lacking).expect("has"));
    }

    #[test]
    fn a_large_document_written_while_an_image_comes_down_is_sent_after_its_late_acknowledgement() {
        let size = 2 * INLINE_MAX as usize;
        a_document_written_while_an_image_moves(Role::Host, Answers::BodiesFirst, size);
    }
}

#[cfg(test)]
mod resume_tests {
    use super::tests::round;
    use super::*;
    use crate::testkit::{certificate, doctor, host_and_site, new_doc, signer};
    use carnet_store::model::{AccessMode, Actor};

    /// A round whose link is cut once `cut_after` body pieces (`PutBodies` or `Body`) have been
    /// delivered: what was delivered is handled, the rest is lost. Answers the body bytes
    /// delivered.
    pub(super) fn cut_round(host: &Replica, site: &Replica, cut_after: usize) -> u64 {
        let mut s = SiteSession::new(signer(site), Vec::new());
        let mut h = HostSession::new(site.config().site_id, certificate(site));
        let mut to_host = vec![s.start(crate::testkit::site_sync(site)).expect("start")];
        let (mut pieces, mut bytes) = (0, 0u64);
        for _ in 0..10_000 {
            let mut to_site = Vec::new();
            for m in to_host.drain(..) {
                if let Msg::PutBodies(ps) = &m {
                    if pieces == cut_after {
                        return bytes;
                    }
                    pieces += ps.len();
                    bytes += ps.iter().map(|p| p.bytes.len() as u64).sum::<u64>();
                }
                to_site.extend(h.handle(crate::testkit::host_sync(host), m).expect("host"));
            }
            for m in to_site {
                if let Msg::Body { bytes: b, .. } = &m {
                    if pieces == cut_after {
                        return bytes;
                    }
                    pieces += 1;
                    bytes += b.len() as u64;
                }
                to_host.extend(s.handle(crate::testkit::site_sync(site), m).expect("site"));
            }
            if s.is_done() {
                return bytes;
            }
        }
        panic!("the round did not end");
    }

    /// Writes a `size`-byte body at the site (pushed) or at the host (fetched), runs a round
    /// cut after `cut` pieces, then a whole round: nothing crosses twice, the receiver never
    /// serves the partial body, the host keeps asking for what it lacks, and the body reads
    /// back whole.
    fn cut_then_resume(written_at_site: bool, size: usize, cut: usize) {
        let (_t, host, site, ins) = host_and_site();
        let actor = Actor::Professional(doctor());
        round(&host, &site);
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let (writer, receiver) = if written_at_site {
            (&site, &host)
        } else {
            (&host, &site)
        };
        let id = writer
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("big", body.clone()),
            )
            .expect("write");
        let first = cut_round(&host, &site, cut);
        assert_eq!(first, (cut * CHUNK_MAX) as u64);
        assert_eq!(receiver.body_progress(&id).expect("progress"), first);
        assert!(
            receiver
                .read_document(&actor, &id, AccessMode::Normal, None)
                .is_err(),
            "a partial body is never served"
        );
        if written_at_site {
            // The host applied the metadata and, in the same transaction, recorded the body as
            // owed: it asks for the rest at every Welcome until it holds it.
            assert_eq!(
                crate::testkit::host_sync(&host)
                    .bodies_owed_by(site.config().site_id)
                    .expect("owed"),
                vec![(id, first)]
            );
        }
        let second = cut_round(&host, &site, usize::MAX);
        assert_eq!(first + second, size as u64, "no byte sent twice");
        assert_eq!(site.outbox_len().expect("outbox"), 0);
        assert_eq!(
            receiver.body_progress(&id).expect("progress"),
            0,
            "pieces moved in"
        );
        let read = receiver
            .read_document(&actor, &id, AccessMode::Normal, None)
            .expect("read");
        assert_eq!(&read.body[..], &body[..]);
    }

    #[test]
    fn a_body_push_cut_midway_resumes_where_it_stopped() {
        cut_then_resume(true, 5 * CHUNK_MAX + 1234, 3);
    }

    #[test]
    fn a_body_fetch_cut_midway_resumes_where_it_stopped() {
        cut_then_resume(false, 4 * CHUNK_MAX + 17, 2);
    }

    #[test]
    fn bad_pieces_change_nothing_and_a_corrupt_body_starts_over() {
        let (_t, host, site, ins) = host_and_site();
        let actor = Actor::Professional(doctor());
        round(&host, &site);
        // Too large to travel inline with its metadata.
        let n = INLINE_MAX + 3000;
        let fresh = site
            .put_document(
                &actor,
                AccessMode::Normal,
                None,
                &ins,
                new_doc("f", vec![9; n as usize]),
            )
            .expect("write");
        // Push the metadata only: a round cut before any body piece; the host now says, at
        // every Welcome, that the site owes this body.
        cut_round(&host, &site, 0);
        assert_eq!(
            crate::testkit::host_sync(&host)
                .bodies_owed_by(site.config().site_id)
                .expect("owed"),
            vec![(fresh, 0)]
        );
        let from = |site_id: u32, offset: u64, total: u64, bytes: Vec<u8>| {
            crate::testkit::host_sync(&host)
                .receive_pieces_from(
                    SiteId(site_id),
                    &[BodyPiece {
                        doc: fresh,
                        offset,
                        total,
                        bytes,
                    }],
                )
                .map(|done| done == [true])
        };
        let owner = site.config().site_id.0;
        assert!(from(owner, 0, n - 1, vec![9; 10]).is_err(), "wrong total");
        assert!(from(owner, 10, n, vec![9; 10]).is_err(), "a gap");
        assert!(
            from(owner, 0, n, vec![9; n as usize + 1]).is_err(),
            "past the end"
        );
        assert_eq!(host.body_progress(&fresh).expect("p"), 0, "nothing kept");
        assert!(!from(owner, 0, n, vec![9; 1000]).expect("piece"));
        assert!(
            !from(owner, 0, n, vec![9; 1000]).expect("again"),
            "a repeat is ignored"
        );
        assert_eq!(host.body_progress(&fresh).expect("p"), 1000);
        // Another site owes nothing of it: even the right bytes are refused, and nothing of
        // what the owing site sent is lost.
        let err = from(owner + 1, 1000, n, vec![9; n as usize - 1000]).expect_err("not owed");
        assert!(err.to_string().contains("owes no body"), "{err}");
        assert_eq!(host.body_progress(&fresh).expect("p"), 1000);
        // The host takes pieces from a site only: it has no way to take the host's own
        // (`receive_body_piece` is a site's, `SiteSync`; the store's tests check the refusal
        // inside it).
        assert!(host.as_site().is_none());
        // Wrong bytes: the hash check fails at the end and the transfer starts over; the body
        // is still owed by the site, which is asked for it again.
        assert!(from(owner, 1000, n, vec![8; n as usize - 1000]).is_err());
        assert_eq!(host.body_progress(&fresh).expect("p"), 0);
        assert!(!host.has_body(&fresh).expect("has"));
        assert_eq!(
            crate::testkit::host_sync(&host)
                .bodies_owed_by(site.config().site_id)
                .expect("owed"),
            vec![(fresh, 0)],
            "a corrupt body resets the progress, never the debt"
        );
        assert!(from(owner, 0, n, vec![9; n as usize]).expect("whole"));
        assert!(host.has_body(&fresh).expect("has"));
        // The body is no longer owed by the site.
        assert!(
            crate::testkit::host_sync(&host)
                .bodies_owed_by(site.config().site_id)
                .expect("owed")
                .is_empty()
        );
    }
}

#[cfg(test)]
mod quarantine_tests {
    use super::*;
    use crate::testkit::{certificate, doctor, host_and_site, new_doc, signer};
    use carnet_store::model::{AccessMode, Actor};

    use super::tests::round;

    #[test]
    fn a_document_written_for_a_dossier_closed_meanwhile_is_kept_in_quarantine() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        site.put_document(
            &actor,
            AccessMode::Normal,
            None,
            &ins,
            new_doc("written offline", b"offline body".to_vec()),
        )
        .expect("write");
        crate::testkit::as_host(&host)
            .authority()
            .close_dossier(&ins, "the holder closed it", false)
            .expect("close");
        let report = round(&host, &site);
        assert_eq!(report.returned, 1, "{report:?}");
        assert_eq!(report.purged, 1, "{report:?}");
        let kept = site.quarantined().expect("quarantine");
        assert_eq!(kept.len(), 1);
        assert_eq!(
            *crate::testkit::as_site(&site)
                .local()
                .quarantined_body(&Actor::Professional(doctor()), &kept[0].id)
                .expect("author reads"),
            b"offline body"
        );
        assert!(
            !site.has_dossier_key(&ins).expect("key"),
            "the dossier itself is purged"
        );
        // The purge receipt the pull made goes in the same round, once the pull is done.
        assert_eq!(site.outbox_len().expect("len"), 0);
        assert_eq!(
            crate::testkit::as_host(&host)
                .oversight()
                .site_purge_receipts(&ins)
                .expect("receipts")
                .len(),
            1
        );
    }

    #[test]
    fn a_closure_imported_before_the_push_quarantines_the_pending_document() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        site.put_document(
            &actor,
            AccessMode::Normal,
            None,
            &ins,
            new_doc("pending", b"pending body".to_vec()),
        )
        .expect("write");
        crate::testkit::as_host(&host)
            .authority()
            .close_dossier(&ins, "closed", false)
            .expect("close");
        site.import_authority(&host.export_authority().expect("export"))
            .expect("import");
        let kept = site.quarantined().expect("quarantine");
        assert_eq!(kept.len(), 1, "never dropped");
        assert_eq!(
            *crate::testkit::as_site(&site)
                .local()
                .quarantined_body(&Actor::Professional(doctor()), &kept[0].id)
                .expect("author reads"),
            b"pending body"
        );
        // The next round does not trip on the purged document.
        round(&host, &site);
    }

    /// After a first round, the host no longer binds the doctor to the site: it refuses the
    /// dossier the doctor opens there for the walk-in, whose INS this answers.
    fn doctor_unbound(host: &Replica, site: &Replica) -> carnet_store::ids::Ins {
        round(host, site);
        crate::testkit::as_host(host)
            .authority()
            .bind_professional(site.config().site_id, &doctor(), false)
            .expect("unbind");
        carnet_store::ids::Ins::from_body("2900101123456").expect("ins")
    }

    /// The doctor opens the walk-in's dossier at the site.
    fn open_walk_in(site: &Replica, walk_in: &carnet_store::ids::Ins) {
        crate::testkit::as_site(site)
            .local()
            .open_dossier_here(
                crate::testkit::new_dossier(walk_in),
                &Actor::Professional(doctor()),
            )
            .expect("open here");
    }

    /// A round run until the host answers a push: the site's session, and that PushAck, not
    /// delivered.
    fn round_until_its_push_ack(host: &Replica, site: &Replica) -> (SiteSession, Msg) {
        let mut s = SiteSession::new(signer(site), Vec::new());
        let mut h = HostSession::new(site.config().site_id, certificate(site));
        let mut to_host = vec![s.start(crate::testkit::site_sync(site)).expect("start")];
        for _ in 0..100 {
            let mut to_site = Vec::new();
            for m in to_host.drain(..) {
                for reply in h.handle(crate::testkit::host_sync(host), m).expect("host") {
                    if matches!(reply, Msg::PushAck { .. }) {
                        return (s, reply);
                    }
                    to_site.push(reply);
                }
            }
            for m in to_site {
                to_host.extend(s.handle(crate::testkit::site_sync(site), m).expect("site"));
            }
        }
        panic!("the round pushed nothing");
    }

    #[test]
    fn a_dossier_the_host_refuses_goes_on_the_push_ack_and_on_the_welcome_that_repeats_it() {
        let (_t, host, site, _) = host_and_site();
        let walk_in = doctor_unbound(&host, &site);
        let actor = Actor::Professional(doctor());
        let local = crate::testkit::as_site(&site).local();
        let open_and_write = |title: &str| {
            open_walk_in(&site, &walk_in);
            site.put_document(
                &actor,
                AccessMode::Normal,
                None,
                &walk_in,
                new_doc(title, b"kept".to_vec()),
            )
            .expect("write");
        };
        // Refused on a push whose PushAck is lost: the next Welcome tells it again, with the
        // host's mark past the proposal.
        open_and_write("first");
        round_until_its_push_ack(&host, &site);
        assert_eq!(
            local.local_dossiers().expect("local"),
            std::slice::from_ref(&walk_in)
        );
        round(&host, &site);
        assert!(local.local_dossiers().expect("local").is_empty());
        assert_eq!(site.quarantine_len().expect("quarantine"), 1);
        // Opened again and refused on its PushAck, the mark of that push past the proposal.
        open_and_write("second");
        round(&host, &site);
        assert!(local.local_dossiers().expect("local").is_empty());
        assert_eq!(site.quarantine_len().expect("quarantine"), 2);
    }

    #[test]
    fn a_push_ack_past_what_was_sent_is_refused_before_it_takes_a_dossier() {
        let (_t, host, site, _) = host_and_site();
        let walk_in = doctor_unbound(&host, &site);
        let local = crate::testkit::as_site(&site).local();
        open_walk_in(&site, &walk_in);
        // The host's refusal, acknowledging far past what the site sent.
        let (mut s, ack) = round_until_its_push_ack(&host, &site);
        let Msg::PushAck {
            missing, returned, ..
        } = ack
        else {
            panic!("{ack:?}");
        };
        assert!(!returned.is_empty(), "the host refuses the dossier");
        let forged = Msg::PushAck {
            upto: u64::MAX,
            missing,
            returned,
        };
        assert!(s.handle(crate::testkit::site_sync(&site), forged).is_err());
        assert_eq!(
            local.local_dossiers().expect("local"),
            std::slice::from_ref(&walk_in)
        );
        assert_eq!(site.quarantine_len().expect("quarantine"), 0);
    }

    #[test]
    fn a_lost_push_ack_loses_no_returned_document() {
        let (_t, host, site, ins) = host_and_site();
        round(&host, &site);
        let actor = Actor::Professional(doctor());
        site.put_document(
            &actor,
            AccessMode::Normal,
            None,
            &ins,
            new_doc("offline", b"kept".to_vec()),
        )
        .expect("write");
        crate::testkit::as_host(&host)
            .authority()
            .close_dossier(&ins, "closed", false)
            .expect("close");
        // A round cut right after the host applied the push: its PushAck never arrives.
        round_until_its_push_ack(&host, &site);
        assert!(site.quarantined().expect("q").is_empty());
        // The next round: the host repeats what it returned before anything is acknowledged.
        round(&host, &site);
        let kept = site.quarantined().expect("quarantine");
        assert_eq!(kept.len(), 1, "never dropped");
        assert_eq!(
            *crate::testkit::as_site(&site)
                .local()
                .quarantined_body(&Actor::Professional(doctor()), &kept[0].id)
                .expect("author reads"),
            b"kept"
        );
        // The site's next Hello says it acknowledged its outbox past the return: the host stops
        // repeating it (a Welcome does not grow with every return ever made).
        let site_id = site.config().site_id;
        assert_eq!(
            crate::testkit::host_sync(&host)
                .returned_to(site_id)
                .expect("returned")
                .len(),
            1
        );
        // A site that has not acknowledged as far as the host applied keeps hearing of it.
        crate::testkit::host_sync(&host)
            .forget_returned(site_id, 0)
            .expect("forget");
        assert_eq!(
            crate::testkit::host_sync(&host)
                .returned_to(site_id)
                .expect("returned")
                .len(),
            1
        );
        let welcome = HostSession::new(site_id, certificate(&site))
            .handle(
                crate::testkit::host_sync(&host),
                SiteSession::new(signer(&site), Vec::new())
                    .start(crate::testkit::site_sync(&site))
                    .expect("hello"),
            )
            .expect("welcome");
        assert!(
            matches!(&welcome[..], [Msg::Welcome { returned, .. }] if returned.is_empty()),
            "{welcome:?}"
        );
        assert!(
            crate::testkit::host_sync(&host)
                .returned_to(site_id)
                .expect("returned")
                .is_empty()
        );
    }
}

#[cfg(test)]
mod pipelined_tests {
    use super::tests::{round, wire};
    use super::*;
    use crate::testkit::{certificate, doctor, host_and_site, new_doc, signer};
    use carnet_store::model::{AccessMode, Actor};

    /// Runs the round `s` opened with `first` to its end; answers the exchanges it took (each
    /// the site's messages out and the host's answers back), or the site's error.
    fn exchanges(
        host: &Replica,
        site: &Replica,
        s: &mut SiteSession,
        first: Vec<Msg>,
    ) -> Result<usize> {
        let mut h = HostSession::new(site.config().site_id, certificate(site));
        let mut to_host = first;
        for exchange in 1..1_000 {
            let arrived = to_host.drain(..).map(|m| wire(&m)).collect();
            for m in h
                .handle_all(crate::testkit::host_sync(host), arrived)
                .expect("host")
            {
                to_host.extend(s.handle(crate::testkit::site_sync(site), wire(&m))?);
            }
            if s.is_done() {
                return Ok(exchange);
            }
        }
        panic!("the round did not end");
    }

    /// A round from its opening, with `held` (`SiteSession::opening`): the session, the
    /// messages it opened with, and the exchanges it took.
    fn round_from(
        host: &Replica,
        site: &Replica,
        held: Option<HostHeld>,
    ) -> (SiteSession, Vec<&'static str>, Result<usize>) {
        let mut s = SiteSession::new(signer(site), Vec::new());
        let first = s
            .opening(crate::testkit::site_sync(site), false, held)
            .expect("opening");
        let kinds = first.iter().map(Msg::kind).collect();
        let took = exchanges(host, site, &mut s, first);
        (s, kinds, took)
    }

    fn write(r: &Replica, ins: &carnet_store::ids::Ins, title: &str) -> DocId {
        r.put_document(
            &Actor::Professional(doctor()),
            AccessMode::Normal,
            None,
            ins,
            new_doc(title, vec![9; 300]),
        )
        .expect("write")
    }

    /// After a round that ended well, the next one on the same connection sends what the site
    /// wrote since right behind its `Hello`, the `Pull` behind it: one exchange where waiting
    /// for the `Welcome` takes two; the host holds the document, and the round says what the
    /// host holds for the next one.
    #[test]
    fn a_round_after_one_that_ended_well_pushes_behind_its_hello_in_one_exchange() {
        let (_t, host, site, ins) = host_and_site();
        let (first, _, took) = round_from(&host, &site, None);
        took.expect("first round");
        let held = first
            .host_held()
            .expect("held after a round that ended well");

        write(&site, &ins, "waiting for the Welcome");
        let (s, kinds, took) = round_from(&host, &site, None);
        assert_eq!(kinds, ["Hello"]);
        assert_eq!(took.expect("round"), 2);
        let held_after = s.host_held().expect("held");
        assert!(held_after.changes > held.changes && held_after.traces > held.traces);

        let doc = write(&site, &ins, "behind the Hello");
        let (s, kinds, took) = round_from(&host, &site, Some(held_after));
        assert_eq!(kinds, ["Hello", "Traces", "Push", "Pull"]);
        assert_eq!(took.expect("round"), 1);
        assert!(host.has_body(&doc).expect("body"));
        let sync = crate::testkit::site_sync(&site);
        assert!(sync.outbox(0, 1).expect("outbox").is_empty());
        assert_eq!(
            s.host_held(),
            Some(HostHeld {
                changes: sync.outbox_issued().expect("issued"),
                traces: site.trace_head().expect("head"),
            })
        );
        // Nothing new: a Hello alone, as without `held`.
        let (_, kinds, _) = round_from(&host, &site, s.host_held());
        assert_eq!(kinds, ["Hello"]);
    }

    /// Marks that moved since (another round ran meanwhile): the `Welcome` says other marks,
    /// the round fails, and the next, waiting for its `Welcome`, ends with everything at the
    /// host once.
    #[test]
    fn a_round_pushed_behind_its_hello_from_marks_that_moved_fails_and_loses_nothing() {
        let (_t, host, site, ins) = host_and_site();
        let (first, _, took) = round_from(&host, &site, None);
        took.expect("first round");
        let stale = first.host_held().expect("held");
        write(&site, &ins, "pushed by another round");
        round(&host, &site);
        let late = write(&site, &ins, "behind the Hello");
        let (_, kinds, took) = round_from(&host, &site, Some(stale));
        assert_eq!(kinds, ["Hello", "Traces", "Push", "Pull"]);
        let e = took.expect_err("the Welcome names other marks");
        assert!(
            e.to_string().contains("as at the end of the last round"),
            "{e}"
        );
        let (s, _, took) = round_from(&host, &site, None);
        took.expect("the next round");
        assert!(host.has_body(&late).expect("body"));
        let sync = crate::testkit::site_sync(&site);
        assert!(sync.outbox(0, 1).expect("outbox").is_empty());
        assert_eq!(
            s.host_held().map(|h| h.changes),
            Some(sync.outbox_issued().expect("issued"))
        );
        let listed = host
            .list_documents(&Actor::Professional(doctor()), &ins)
            .expect("list");
        assert_eq!(listed.len(), 2, "each document once");
    }
}
