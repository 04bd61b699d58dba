//! Sync through the host (DESIGN §3, star topology), store side: the host keeps each site's
//! *scope* and a *change log* per site (fan-out on write); a site pulls its log after its cursor
//! and applies it.
//!
//! A site's scope is the dossiers where a professional the host binds to it holds an active
//! grant, where it wrote a document, or that the host pinned for it (`site_access`). When a
//! document or a signed record of a dossier changes on the host, an entry naming it is appended
//! to the log of every site whose scope holds the dossier; a dossier entering a scope, or whose
//! grant or pin now lets the site receive more of it, is logged as `Enter` (the site receives
//! what `site_view` lets it have), one leaving as `Leave` (the site purges it), one that stays
//! when a reason other than the site's own writing ended as `Withdraw` (the site deletes what
//! it may no longer hold: `withdrawal`). Entries name
//! things; what travels is their state at pull time, decided for that site at pull time.
//!
//! Every batch a site pulls ends with the host's heartbeat, read in the snapshot the batch was
//! read from: its sequence is the last log entry the batch covers (entries the site may no
//! longer receive included, so the cursor passes them), and it names the site and its log
//! head. The site is current, and its lease renewed, only when its cursor reaches that head
//! (`authority`'s module documentation says why the head is what a heartbeat vouches for). A
//! site whose cursor is the head is told so at `Hello` the same way (`site_heartbeat`), so a
//! round with nothing new needs no pull.
//!
//! Invariants: the log of a site grows only, so a pull costs what changed for that site, not the
//! size of the store; every host change that touches a dossier is logged in the same transaction
//! as the change; a site applies a pulled batch and advances its cursor in one transaction, and
//! applying the same batch twice changes nothing (merge and record admission are idempotent);
//! signed records are verified under the pinned host key before use, and one dated ahead of the
//! site's clock (`MAX_SKEW`) refuses the whole batch.

use crate::kv::{ReadTransaction, ReadableTable, WriteTransaction};
use ed25519_dalek::VerifyingKey;

use super::authority_ops::{Holding, Lease};
use super::tables::*;
use super::{Replica, Role, lock_err};
use crate::authority::{self, AuthorityRecord, Covers, SignedRecord};
use crate::error::{Error, Result};
use crate::ids::{DocId, Ins, Rpps, SiteId};
use crate::merge::DocumentMeta;
use crate::model::GrantState;

/// What a site receives from the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PullItem {
    /// A record signed by the host (verified by the site before use).
    Authority(SignedRecord),
    /// A document's metadata (its body is fetched on its own).
    Document(Box<DocumentMeta>),
    /// The dossier left the site's scope: purge it.
    Leave(Ins),
    /// The dossier stays in the site's scope, but these documents of it are no longer the
    /// site's to hold: delete them (`withdrawal`).
    Withdraw {
        /// The dossier.
        ins: Ins,
        /// Its documents the site may no longer hold, as the host decides at pull time.
        docs: Vec<DocId>,
    },
}

/// What `apply_pull` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Items applied.
    pub applied: usize,
    /// Dossiers purged (closure or scope exit).
    pub purged: usize,
    /// Documents deleted because the host withdrew them (`PullItem::Withdraw`).
    pub withdrawn: usize,
    /// What the batch's heartbeat did to the lease (`None`: the batch carried none).
    pub lease: Option<Lease>,
}

/// Pulled items with their log sequence.
type PullItems = Vec<(u64, PullItem)>;

/// One batch of a site's log, as the host sends it (`pull_page`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPage {
    /// Items with their log sequence, ending with the host's heartbeat (see the module
    /// documentation).
    pub items: Vec<(u64, PullItem)>,
    /// The log goes on after this batch.
    pub more: bool,
}
impl Replica {
    // ---- host ----

    fn require_host(&self) -> Result<()> {
        match self.config.role {
            Role::Host => Ok(()),
            Role::Site => Err(Error::invalid(
                "only the national host keeps the sites' logs",
            )),
        }
    }

    /// Appends `item` to `site`'s log, sealed (registry key) and bound to its place.
    fn log_append(&self, txn: &WriteTransaction, site: u32, item: &LogItem) -> Result<()> {
        let mut log = txn.open_table(SITE_LOG)?;
        let seq = log
            .range((site, 0)..=(site, u64::MAX))?
            .next_back()
            .transpose()?
            .map_or(0, |(k, _)| k.value().1)
            + 1;
        let sealed = self
            .keys
            .registry
            .seal(&site_log_aad(site, seq), &postcard::to_stdvec(item)?)?;
        log.put((site, seq), sealed.as_slice())?;
        Ok(())
    }

    /// Opens an entry of `site`'s log sealed by `log_append`.
    fn open_log_item(&self, site: u32, seq: u64, sealed: &[u8]) -> Result<LogItem> {
        let plain = self
            .keys
            .registry
            .open(&site_log_aad(site, seq), sealed)
            .map_err(|_| {
                Error::integrity(format!("entry {seq} of site {site}'s log was altered"))
            })?;
        Ok(postcard::from_bytes(&plain)?)
    }

    fn sites_holding(&self, txn: &WriteTransaction, bi: &[u8; 32]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        for row in txn.open_table(SCOPE_SITES)?.range(bi.as_slice()..)? {
            let (k, _) = row?;
            let Some(site) = k.value().strip_prefix(bi.as_slice()) else {
                break;
            };
            let site: [u8; 4] = site.try_into().map_err(|_| Error::integrity("scope key"))?;
            out.push(u32::from_be_bytes(site));
        }
        Ok(out)
    }

    /// Every site known to the host (one that registered a professional).
    fn known_sites(&self, txn: &WriteTransaction) -> Result<Vec<u32>> {
        let mut out: Vec<u32> = Vec::new();
        for row in txn.open_table(SITE_PROS)?.iter()? {
            let (k, _) = row?;
            let site: [u8; 4] = k
                .value()
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::integrity("site key"))?;
            let site = u32::from_be_bytes(site);
            if out.last() != Some(&site) {
                out.push(site);
            }
        }
        Ok(out)
    }

    /// Sets or clears one reason for `bi` being in `site`'s scope; logs `Enter`/`Leave` when the
    /// dossier enters or leaves the scope.
    pub(super) fn set_scope(
        &self,
        txn: &WriteTransaction,
        site: u32,
        bi: &[u8; 32],
        bit: u8,
        on: bool,
    ) -> Result<()> {
        let key = site_key(site, bi);
        let mut scope = self.digested(txn, SCOPE)?;
        let old = scope.get(key.as_slice())?.map_or(0, |v| v.value());
        let new = if on { old | bit } else { old & !bit };
        if new == old {
            return Ok(());
        }
        let mut by_dossier = self.digested(txn, SCOPE_SITES)?;
        let mut reverse = bi.to_vec();
        reverse.extend_from_slice(&site.to_be_bytes());
        if new == 0 {
            scope.remove(key.as_slice())?;
            by_dossier.remove(reverse.as_slice())?;
        } else {
            scope.insert(key.as_slice(), new)?;
            by_dossier.insert(reverse.as_slice(), ())?;
        }
        drop((scope, by_dossier));
        match (old, new) {
            (0, _) => {
                // What the site traced about it before it entered is told now.
                self.release_held_notifications(txn, site, bi)?;
                self.log_append(txn, site, &LogItem::Enter(*bi))
            }
            (_, 0) => self.log_append(txn, site, &LogItem::Leave(*bi)),
            // A grant or an accepted pin may let the site receive more of a dossier it held
            // for another reason: all of it is sent again, as the host now decides it.
            _ if new & !old & (scope_bit::GRANT | scope_bit::PINNED | scope_bit::EMERGENCY)
                != 0 =>
            {
                self.log_append(txn, site, &LogItem::Enter(*bi))
            }
            // One of them ended while the dossier stays (the site wrote in it): what it may no
            // longer hold is withdrawn, as the host decides when the site pulls.
            _ if old & !new & (scope_bit::GRANT | scope_bit::PINNED | scope_bit::EMERGENCY)
                != 0 =>
            {
                self.log_withdrawal(txn, site, bi)
            }
            _ => Ok(()),
        }
    }

    /// Logs for `site` a withdrawal of what it may no longer hold of `bi` (`withdrawal`).
    pub(super) fn log_withdrawal(
        &self,
        txn: &WriteTransaction,
        site: u32,
        bi: &[u8; 32],
    ) -> Result<()> {
        self.log_append(txn, site, &LogItem::Withdraw(*bi))
    }

    /// The reasons `bi` is in `site`'s scope (`scope_bit`), 0 when it is not.
    fn scope_bits(&self, txn: &WriteTransaction, site: u32, bi: &[u8; 32]) -> Result<u8> {
        Ok(txn
            .open_table(SCOPE)?
            .get(site_key(site, bi).as_slice())?
            .map_or(0, |v| v.value()))
    }

    /// Sets the grant reason of `bi` in `site`'s scope; when it was set already (another
    /// professional's grant), the dossier is sent again all the same: the new professional may
    /// read more of it.
    fn grant_scope_widened(&self, txn: &WriteTransaction, site: u32, bi: &[u8; 32]) -> Result<()> {
        if self.scope_bits(txn, site, bi)? & scope_bit::GRANT != 0 {
            self.log_append(txn, site, &LogItem::Enter(*bi))
        } else {
            self.set_scope(txn, site, bi, scope_bit::GRANT, true)
        }
    }

    /// Recomputes the grant reason of `bi` in `site`'s scope from the grants in force.
    fn recompute_grant_scope(
        &self,
        txn: &WriteTransaction,
        site: u32,
        bi: &[u8; 32],
    ) -> Result<()> {
        let prefix = subject_key(tag::GRANT, Some(bi), None);
        let mut granted = false;
        {
            let authority = txn.open_table(AUTHORITY)?;
            let site_pros = txn.open_table(SITE_PROS)?;
            for row in authority.range(prefix.as_slice()..)? {
                let (k, v) = row?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let signed = self.open_signed(k.value(), v.value())?;
                if let AuthorityRecord::Grant(g) = authority::decode(&signed)?.record
                    && g.state == GrantState::Active
                    && site_pros
                        .get(site_key(site, &self.rpps_index(&g.rpps)).as_slice())?
                        .is_some()
                {
                    granted = true;
                    break;
                }
            }
        }
        self.set_scope(txn, site, bi, scope_bit::GRANT, granted)
    }

    /// Host: a document of `bi` changed (written here, or received from `origin`).
    pub(super) fn host_document_changed(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        doc: &DocId,
        origin: Option<SiteId>,
    ) -> Result<()> {
        if let Some(o) = origin {
            self.set_scope(txn, o.0, bi, scope_bit::WROTE, true)?;
        }
        for site in self.sites_holding(txn, bi)? {
            if Some(SiteId(site)) != origin {
                self.log_append(txn, site, &LogItem::Document(doc.0))?;
            }
        }
        Ok(())
    }

    /// Host: `host_document_changed` for a document `origin` pushed, in a batch: the origin's
    /// scope reason and the sites holding the dossier are looked up once per dossier and batch
    /// (`holders`; nothing but the first document of a dossier changes them, and the batch
    /// forgets them at any item that may change a scope).
    pub(super) fn host_pushed_document(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
        doc: &DocId,
        origin: SiteId,
        holders: &mut std::collections::HashMap<[u8; 32], Vec<u32>>,
    ) -> Result<()> {
        let sites = match holders.entry(*bi) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                self.set_scope(txn, origin.0, bi, scope_bit::WROTE, true)?;
                slot.insert(self.sites_holding(txn, bi)?)
            }
        };
        for &site in sites.iter() {
            if site != origin.0 {
                self.log_append(txn, site, &LogItem::Document(doc.0))?;
            }
        }
        Ok(())
    }

    /// Host: dossier `bi` was reopened (its new active head issued in `txn`). Every site whose
    /// scope holds it receives it whole again, as a dossier entering the scope (`Enter`): the
    /// sites purged their copy at the closure, and the log entries since named a closed
    /// dossier. The purge receipts they returned answer a closure no longer in force: dropped.
    pub(super) fn host_dossier_reopened(
        &self,
        txn: &WriteTransaction,
        bi: &[u8; 32],
    ) -> Result<()> {
        self.require_host()?;
        for site in self.sites_holding(txn, bi)? {
            self.log_append(txn, site, &LogItem::Enter(*bi))?;
        }
        let mut receipts = self.digested(txn, SITE_RECEIPTS)?;
        let answered: Vec<Vec<u8>> = receipts
            .range(bi.as_slice()..)?
            .map(|r| r.map(|(k, _)| k.value().to_vec()))
            .take_while(|k| k.as_ref().map_or(true, |k| k.starts_with(bi)))
            .collect::<std::result::Result<_, _>>()?;
        for key in answered {
            receipts.remove(key.as_slice())?;
        }
        Ok(())
    }

    /// Host: `site` says it was restored from a backup taken at `taken_at` (its say-so: it
    /// only decides what the host traces and sends it again). Traces it, for the operator, and
    /// enters every dossier of the site's scope in its log again, so the site's next pull
    /// brings back everything it may hold, its own documents written after the backup among
    /// them (`site_view` decides what, as for any pull). Answers the dossiers entered again.
    pub(crate) fn record_site_restore(
        &self,
        site: SiteId,
        taken_at: crate::time::Millis,
    ) -> Result<usize> {
        self.require_host()?;
        let txn = self.begin_write()?;
        let prefix = site.0.to_be_bytes();
        let dossiers: Vec<[u8; 32]> = {
            let scope = txn.open_table(SCOPE)?;
            let mut out = Vec::new();
            for row in scope.range(prefix.as_slice()..)? {
                let (k, _) = row?;
                let Some(bi) = k.value().strip_prefix(prefix.as_slice()) else {
                    break;
                };
                out.push(bi.try_into().map_err(|_| Error::integrity("scope key"))?);
            }
            out
        };
        for bi in &dossiers {
            self.log_append(&txn, site.0, &LogItem::Enter(*bi))?;
        }
        txn.trace(vec![self.admin_entry(
            "site-restored",
            None,
            Some(&format!(
                "site {site} was restored from a backup taken on {}; {} dossiers sent again",
                crate::time::format_rfc3339(taken_at),
                dossiers.len()
            )),
        )]);
        txn.commit()?;
        Ok(dossiers.len())
    }

    /// Host: a signed record changed; logs it for the sites concerned and follows grants.
    pub(super) fn host_authority_changed(
        &self,
        txn: &WriteTransaction,
        record: &AuthorityRecord,
        subject: &[u8],
    ) -> Result<()> {
        if self.config.role != Role::Host {
            return Ok(());
        }
        let item = LogItem::Authority(subject.to_vec());
        match record.ins() {
            Some(ins) => {
                let bi = self.blind(ins);
                if let AuthorityRecord::Grant(g) = record {
                    self.consent_answered(txn, &bi, &g.rpps)?;
                    let mut sites = Vec::new();
                    let prefix = self.rpps_index(&g.rpps);
                    for row in txn.open_table(PRO_SITES)?.range(prefix.as_slice()..)? {
                        let (k, _) = row?;
                        let Some(site) = k.value().strip_prefix(prefix.as_slice()) else {
                            break;
                        };
                        let Ok(site) = <[u8; 4]>::try_from(site) else {
                            break;
                        };
                        sites.push(u32::from_be_bytes(site));
                    }
                    for site in sites {
                        if g.state == GrantState::Active {
                            self.grant_scope_widened(txn, site, &bi)?;
                        } else {
                            self.recompute_grant_scope(txn, site, &bi)?;
                        }
                    }
                }
                for site in self.sites_holding(txn, &bi)? {
                    self.log_append(txn, site, &item)?;
                }
            }
            None => {
                for site in self.known_sites(txn)? {
                    self.log_append(txn, site, &item)?;
                }
            }
        }
        Ok(())
    }

    /// Host: records that `rpps` practises at `site` and brings into that site's scope the
    /// dossiers where it holds an active grant.
    pub(super) fn register_site_professional(
        &self,
        txn: &WriteTransaction,
        site: SiteId,
        rpps: &Rpps,
    ) -> Result<()> {
        let new_site = !self.known_sites(txn)?.contains(&site.0);
        let pro = self.rpps_index(rpps);
        self.digested(txn, SITE_PROS)?
            .insert(site_key(site.0, &pro).as_slice(), ())?;
        if new_site {
            // A site joining gets the records that concern every site (the matrix, the refused
            // site certificates).
            for t in [tag::MATRIX, tag::REFUSED_CERTIFICATES] {
                let subject = subject_key(t, None, None);
                if txn
                    .open_table(AUTHORITY)?
                    .get(subject.as_slice())?
                    .is_some()
                {
                    self.log_append(txn, site.0, &LogItem::Authority(subject))?;
                }
            }
        }
        self.digested(txn, PRO_SITES)?
            .insert(pro_site_key(&pro, site).as_slice(), ())?;
        for bi in self.granted_dossiers(txn, rpps)? {
            self.grant_scope_widened(txn, site.0, &bi)?;
        }
        Ok(())
    }

    /// Host: `rpps` no longer practises at `site`; the dossiers their grants brought into its
    /// scope stay only for another reason.
    pub(super) fn unregister_site_professional(
        &self,
        txn: &WriteTransaction,
        site: SiteId,
        rpps: &Rpps,
    ) -> Result<()> {
        let pro = self.rpps_index(rpps);
        self.digested(txn, SITE_PROS)?
            .remove(site_key(site.0, &pro).as_slice())?;
        self.digested(txn, PRO_SITES)?
            .remove(pro_site_key(&pro, site).as_slice())?;
        for bi in self.granted_dossiers(txn, rpps)? {
            self.recompute_grant_scope(txn, site.0, &bi)?;
        }
        Ok(())
    }

    /// Host: the dossiers where `rpps` holds an active grant.
    fn granted_dossiers(&self, txn: &WriteTransaction, rpps: &Rpps) -> Result<Vec<[u8; 32]>> {
        let mut dossiers = Vec::new();
        let pro = self.rpps_index(rpps);
        let authority = txn.open_table(AUTHORITY)?;
        for row in authority.range([tag::GRANT].as_slice()..[tag::GRANT + 1].as_slice())? {
            let (k, v) = row?;
            let key = k.value();
            if key.len() == 1 + 32 + 32 && key.ends_with(&pro) {
                let signed = self.open_signed(key, v.value())?;
                if let AuthorityRecord::Grant(g) = authority::decode(&signed)?.record
                    && g.state == GrantState::Active
                {
                    dossiers.push(self.blind(&g.ins));
                }
            }
        }
        Ok(dossiers)
    }

    /// Host: the last sequence of `site`'s log (0 when empty).
    pub(crate) fn log_head(&self, site: SiteId) -> Result<u64> {
        self.require_host()?;
        Self::log_head_in(&*self.begin_read()?, site)
    }

    fn log_head_in(txn: &ReadTransaction, site: SiteId) -> Result<u64> {
        let log = txn.open_table(SITE_LOG)?;
        let last = log
            .range((site.0, 0)..=(site.0, u64::MAX))?
            .next_back()
            .transpose()?;
        Ok(last.map_or(0, |(k, _)| k.value().1))
    }

    /// Host: the head of `site`'s log and, when the site's `cursor` is at it, a heartbeat that
    /// says so (`Covers::Log`), both read in one snapshot: the answer to a site's `Hello`. Costs
    /// one lookup, whatever the site holds.
    pub(crate) fn site_heartbeat(
        &self,
        site: SiteId,
        cursor: u64,
    ) -> Result<(u64, Option<SignedRecord>)> {
        self.require_host()?;
        // Read before the snapshot: everything committed before `at` is in it.
        let at = self.now();
        let txn = self.begin_read()?;
        let log_head = Self::log_head_in(&txn, site)?;
        let current = if cursor == log_head {
            Some(self.sign_heartbeat_in(&txn, at, Covers::Log { site, log_head })?)
        } else {
            None
        };
        Ok((log_head, current))
    }

    /// Host: `site`'s log after `after`, at most `limit` entries, as the site will apply it
    /// (without a heartbeat: `pull_page` is what a session sends).
    pub(crate) fn pull(
        &self,
        site: SiteId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, PullItem)>> {
        self.require_host()?;
        let (txn, generation) = self.snapshot()?;
        Ok(self.pull_in(&txn, generation, site, after, limit)?.0)
    }

    /// Host: one batch of `site`'s log after `after`: at most `max_items` items (an entry that
    /// alone brings more, a dossier entering the scope, goes whole; an entry is never split),
    /// then the heartbeat, read in the same snapshot. The heartbeat's sequence is the last entry
    /// the batch covers, so the site's cursor passes the entries it no longer receives.
    pub(crate) fn pull_page(&self, site: SiteId, after: u64, max_items: usize) -> Result<PullPage> {
        self.pull_page_within(site, after, max_items, u64::MAX, &|_| 0)
    }

    /// `pull_page`, the batch also ending before the first entry that would take its items'
    /// `weigh` past `max_weight` (the first entry goes whole, whatever it weighs).
    pub(crate) fn pull_page_within(
        &self,
        site: SiteId,
        after: u64,
        max_items: usize,
        max_weight: u64,
        weigh: &dyn Fn(&PullItem) -> u64,
    ) -> Result<PullPage> {
        self.require_host()?;
        let at = self.now();
        let (txn, generation) = self.snapshot()?;
        let log_head = Self::log_head_in(&txn, site)?;
        let (mut items, examined) =
            self.pull_in(&txn, generation, site, after, max_items.saturating_add(1))?;
        let covered = match (items.first(), items.get(max_items)) {
            (Some(&(first, _)), Some(&(cut, _))) => {
                let keep_to = if cut == first { first } else { cut - 1 };
                items.retain(|(seq, _)| *seq <= keep_to);
                keep_to
            }
            _ => examined.unwrap_or(after).max(after),
        };
        // Then at most `max_weight`.
        let mut weight = 0u64;
        let first = items.first().map(|(seq, _)| *seq);
        let heavy = items.iter().find_map(|(seq, item)| {
            weight = weight.saturating_add(weigh(item));
            (weight > max_weight && Some(*seq) != first).then_some(*seq)
        });
        let covered = match heavy {
            Some(cut) => {
                items.retain(|(seq, _)| *seq < cut);
                cut - 1
            }
            None => covered,
        };
        let heartbeat = self.sign_heartbeat_in(&txn, at, Covers::Log { site, log_head })?;
        items.push((covered, PullItem::Authority(heartbeat)));
        Ok(PullPage {
            items,
            more: covered < log_head,
        })
    }

    /// `site`'s log after `after`, at most `limit` entries, in `txn`; with the last entry read.
    fn pull_in(
        &self,
        txn: &ReadTransaction,
        generation: super::Generation,
        site: SiteId,
        after: u64,
        limit: usize,
    ) -> Result<(PullItems, Option<u64>)> {
        let mut out = Vec::new();
        let entries: Vec<(u64, LogItem)> = {
            let log = txn.open_table(SITE_LOG)?;
            let mut v = Vec::new();
            for row in log
                .range((site.0, after.saturating_add(1))..=(site.0, u64::MAX))?
                .take(limit)
            {
                let (k, val) = row?;
                let seq = k.value().1;
                v.push((seq, self.open_log_item(site.0, seq, val.value())?));
            }
            v
        };
        let examined = entries.last().map(|(seq, _)| *seq);
        // Only what is in the site's scope *now* is sent: an entry logged before the dossier
        // left (or never reached) the scope is skipped.
        let scope = txn.open_table(SCOPE)?;
        let in_scope = |bi: &[u8]| -> Result<bool> {
            Ok(scope.get(site_key(site.0, bi).as_slice())?.is_some())
        };
        let authority = txn.open_table(AUTHORITY)?;
        // What the site may receive of a dossier in its scope is decided here, again.
        let mut view = self.site_view(txn, site)?;
        // Dossiers this batch tells the site to leave.
        let mut left = std::collections::HashSet::new();
        let grant_seen = |view: &super::site_view::SiteView, subject: &[u8]| {
            subject.first() != Some(&tag::GRANT)
                || subject
                    .get(33..)
                    .and_then(|pro| pro.try_into().ok())
                    .is_some_and(|pro| view.sees_grant_of(pro))
        };
        let signed_at = |subject: &[u8]| -> Result<Option<SignedRecord>> {
            match authority.get(subject)? {
                Some(v) => Ok(Some(self.open_signed(subject, v.value())?)),
                None => Ok(None),
            }
        };
        for (seq, entry) in entries {
            match entry {
                LogItem::Document(id) => {
                    // A document of a dossier purged since is simply gone.
                    if let Ok((stored, _, meta)) = self.load_doc(txn, generation, &DocId(id))
                        && in_scope(&stored.dossier)?
                        && self.site_sees_document(txn, &mut view, &stored.dossier, &meta)?
                    {
                        out.push((seq, PullItem::Document(Box::new(meta))));
                    }
                }
                LogItem::Authority(subject) => {
                    let dossier_bound = matches!(
                        subject.first(),
                        Some(&tag::DOSSIER) | Some(&tag::GRANT) | Some(&tag::EMERGENCY)
                    );
                    if dossier_bound && !in_scope(subject.get(1..33).unwrap_or_default())?
                        || !grant_seen(&view, &subject)
                    {
                        continue;
                    }
                    if let Some(s) = signed_at(&subject)? {
                        out.push((seq, PullItem::Authority(s)));
                    }
                }
                LogItem::Enter(bi) if !in_scope(&bi)? => {}
                LogItem::Enter(bi) => {
                    for t in [tag::DOSSIER, tag::EMERGENCY] {
                        if let Some(s) = signed_at(&subject_key(t, Some(&bi), None))? {
                            out.push((seq, PullItem::Authority(s)));
                        }
                    }
                    let prefix = subject_key(tag::GRANT, Some(&bi), None);
                    for row in authority.range(prefix.as_slice()..)? {
                        let (k, v) = row?;
                        if !k.value().starts_with(&prefix) {
                            break;
                        }
                        if grant_seen(&view, k.value()) {
                            out.push((
                                seq,
                                PullItem::Authority(self.open_signed(k.value(), v.value())?),
                            ));
                        }
                    }
                    for id in self.dossier_doc_ids(txn, &bi)? {
                        let (_, _, meta) = self.load_doc(txn, generation, &id)?;
                        if self.site_sees_document(txn, &mut view, &bi, &meta)? {
                            out.push((seq, PullItem::Document(Box::new(meta))));
                        }
                    }
                    // Back after a `Leave` of this batch: the site keeps the dossier instead of
                    // purging it (`apply_pull`), so what it held then and may no longer hold
                    // is withdrawn here.
                    if left.contains(&bi)
                        && let Some(s) = signed_at(&subject_key(tag::DOSSIER, Some(&bi), None))?
                        && let Some(ins) = authority::decode(&s)?.record.ins().cloned()
                    {
                        let docs = self.withdrawn_from(txn, generation, &mut view, &bi)?;
                        if !docs.is_empty() {
                            out.push((seq, PullItem::Withdraw { ins, docs }));
                        }
                    }
                }
                LogItem::Leave(bi) => {
                    if let Some(s) = signed_at(&subject_key(tag::DOSSIER, Some(&bi), None))?
                        && let Some(ins) = authority::decode(&s)?.record.ins().cloned()
                    {
                        out.push((seq, PullItem::Leave(ins)));
                        left.insert(bi);
                    }
                }
                LogItem::Withdraw(bi) if !in_scope(&bi)? => {}
                LogItem::Withdraw(bi) => {
                    let docs = self.withdrawn_from(txn, generation, &mut view, &bi)?;
                    if !docs.is_empty()
                        && let Some(s) = signed_at(&subject_key(tag::DOSSIER, Some(&bi), None))?
                        && let Some(ins) = authority::decode(&s)?.record.ins().cloned()
                    {
                        out.push((seq, PullItem::Withdraw { ins, docs }));
                    }
                }
            }
        }
        Ok((out, examined))
    }

    /// Host: a body for `site`, only if its dossier is in that site's scope.
    pub(crate) fn body_for_site(
        &self,
        site: SiteId,
        id: &DocId,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        self.require_host()?;
        let (txn, generation) = self.snapshot()?;
        let (stored, key, meta) = self.load_doc(&txn, generation, id)?;
        let in_scope = txn
            .open_table(SCOPE)?
            .get(site_key(site.0, &stored.dossier).as_slice())?
            .is_some();
        let mut view = self.site_view(&txn, site)?;
        if !in_scope || !self.site_sees_document(&txn, &mut view, &stored.dossier, &meta)? {
            return Err(Error::not_found(format!("no document {id} for this site")));
        }
        match self.get_body(&self.bodies_read(&txn)?, &key, &meta) {
            Ok(body) => Ok(Some(body)),
            // Not received from its author yet.
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// True when this replica holds the body of `id`.
    pub fn has_body(&self, id: &DocId) -> Result<bool> {
        let txn = self.begin_read()?;
        self.bodies_read(&txn)?.holds(&self.stored_id(id))
    }

    // ---- site ----

    /// Site: the host log sequence applied up to.
    pub fn pull_cursor(&self) -> Result<u64> {
        let txn = self.begin_read()?;
        Self::cursor_in(&txn)
    }

    fn cursor_in(txn: &ReadTransaction) -> Result<u64> {
        let meta = txn.open_table(META)?;
        let v = meta.get(meta_key::PULL_CURSOR)?;
        Ok(super::read_u64(v.as_ref().map(|g| g.value())))
    }

    /// Site: applies a pulled batch (signed records verified under the pinned host key,
    /// documents merged, scope exits purged) and advances the cursor, in one transaction; then
    /// purges what the batch closed or took out of scope. The batch's last heartbeat renews the
    /// lease only when it names this site and the cursor the batch reaches (`PullReport::lease`).
    /// A signed time ahead of this replica's clock refuses the whole batch.
    pub(crate) fn apply_pull(&self, items: &[(u64, PullItem)]) -> Result<PullReport> {
        self.apply_pull_with_bodies(items, &[])
    }

    /// `apply_pull`, with the whole bodies (offset 0) of some of the pulled documents: each is
    /// checked against its document's size and content hash and stored with the metadata, in
    /// the same transaction (one that does not match is left out: the body is then fetched).
    pub(crate) fn apply_pull_with_bodies(
        &self,
        items: &[(u64, PullItem)],
        bodies: &[super::sync::BodyPiece],
    ) -> Result<PullReport> {
        let inline = super::sync::InlineBodies::new(bodies);
        if self.config.role != Role::Site {
            return Err(Error::invalid(
                "only a site applies what it pulls from the host",
            ));
        }
        let host_key: VerifyingKey =
            (*self.host_key.read().map_err(lock_err)?).ok_or_else(|| {
                Error::invalid("this site trusts no host key yet (enrol it, or import a bundle)")
            })?;
        let mut report = PullReport::default();
        let mut purges: Vec<(Ins, u64)> = Vec::new();
        let txn = self.begin_write()?;
        let mut cursor = {
            let meta = txn.open_table(META)?;
            let v = meta.get(meta_key::PULL_CURSOR)?;
            super::read_u64(v.as_ref().map(|g| g.value()))
        };
        let mut dossiers = super::sync::ActiveDossiers::default();
        let mut tables = super::sync::DocTables::new(self, &txn);
        let now = self.now();
        let mut heartbeat = None;
        for (seq, item) in items {
            if !matches!(item, PullItem::Document(_)) {
                // A signed record or a scope exit may change what is active here, and write
                // to the documents' tables itself.
                dossiers.clear();
                tables.close();
            }
            match item {
                PullItem::Authority(signed) => {
                    let v = authority::verify(&host_key, signed)?;
                    // Dated ahead of this clock: the whole batch is refused.
                    authority::check_not_ahead(&v, now)?;
                    if v.record.is_heartbeat() {
                        // Checked once the batch is applied, against the cursor it reaches.
                        heartbeat = Some((v, signed));
                        report.applied += 1;
                        cursor = cursor.max(*seq);
                        continue;
                    }
                    // The dossier (re-)entered the scope after a `Leave` in this batch: keep it.
                    if let AuthorityRecord::Dossier(h) = &v.record
                        && h.status == crate::model::DossierStatus::Active
                    {
                        purges.retain(|(ins, cause)| !(*cause == 0 && ins == &h.ins));
                        self.digested(&txn, PENDING_PURGES)?
                            .remove(&self.blind(&h.ins))?;
                    }
                    let (admitted, purge) = self.admit(&txn, signed, &v)?;
                    // A newer active head (a reopening) supersedes a closure earlier in the
                    // batch: the dossier is not purged for it.
                    if admitted
                        && let AuthorityRecord::Dossier(h) = &v.record
                        && h.status == crate::model::DossierStatus::Active
                    {
                        purges.retain(|(ins, cause)| !(ins == &h.ins && *cause < v.seq));
                    }
                    purges.extend(purge);
                }
                PullItem::Document(meta) => {
                    let body = inline.for_doc(meta);
                    self.merge_remote_document(&txn, meta, None, body, &mut dossiers, &mut tables)?;
                }
                PullItem::Leave(ins) => {
                    // Recorded with the cursor: a crash before the purge resumes it at open.
                    let bi = self.blind(ins);
                    let sealed = self
                        .keys
                        .registry
                        .seal(&pending_purge_aad(&bi), ins.matricule().as_bytes())?;
                    self.digested(&txn, PENDING_PURGES)?
                        .insert(&bi, sealed.as_slice())?;
                    purges.push((ins.clone(), 0));
                }
                PullItem::Withdraw { ins, docs } => {
                    report.withdrawn += self.withdraw_documents(&txn, ins, docs)?;
                }
            }
            report.applied += 1;
            cursor = cursor.max(*seq);
        }
        drop(tables);
        Self::bump_meta_u64(&txn, meta_key::PULL_CURSOR, Some(cursor))?;
        if let Some((v, signed)) = heartbeat {
            let lease = self.admit_heartbeat(&txn, &v, Holding::Cursor(cursor))?;
            if lease != Lease::NotVouched {
                self.keep_relayable_heartbeat(&txn, signed, &v)?;
            }
            report.lease = Some(lease);
        }
        txn.commit()?;
        self.reload_held()?;
        for (ins, cause) in purges {
            if self.purge_rows(&ins, cause)? {
                report.purged += 1;
            }
        }
        Ok(report)
    }
}
