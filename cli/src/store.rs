//! The replica as the commands see it: typed calls that go through the daemon's local API when
//! it runs, or to the store opened in this process when it does not (`api::local::Handle`).
//! Each method is one `Request`; the commands never touch `Replica` directly.

use std::collections::BTreeMap;

use carnet_store::audit::ChainedEntry;
use carnet_store::authority::Bundle;
use carnet_store::ids::{DocId, Ins, RepresentativeId, Rpps};
use carnet_store::merge::DocumentMeta;
use carnet_store::model::{
    AccessMode, Actor, EmergencyPrefs, Grant, GrantBasis, GrantState, Professional,
};
use carnet_store::policy::Action;
use carnet_store::replica::backup::BackupInfo;
use carnet_store::replica::{
    Conflict, DossierExport, DossierInfo, Emergency, ImportReport, NewDocument, NewDossier,
    NewRepresentative, Notification, QuarantineEntry, ReadOutcome, ReplicaConfig, SiteRequest,
};
use carnet_store::time::Millis;
use carnet_syncd::api::local::Handle;
use carnet_syncd::api::{PkiHostStatus, Request, Response, SyncStatus};
use carnet_syncd::enrol::{Renewal, SiteRecord};
use carnet_syncd::fleet::SiteOverview;
use carnet_syncd::pki::Identity;
use carnet_syncd::session::RoundReport;

use zeroize::Zeroizing;

use crate::commands::Failure;

type Result<T> = std::result::Result<T, Failure>;

/// A replica reached through its daemon or opened here.
#[derive(Debug)]
pub struct Store(pub Handle);

/// Takes the expected variant out of a response.
macro_rules! expect {
    ($response:expr, $variant:ident) => {
        match $response {
            Response::$variant(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    };
}

fn unexpected(r: &Response) -> Failure {
    Failure::Sync(carnet_syncd::Error::Invalid(format!(
        "unexpected answer from the daemon ({r:?}): is carnet-syncd the same version as carnet?"
    )))
}

impl Store {
    fn call(&self, request: Request) -> Result<Response> {
        Ok(self.0.call(request)?)
    }

    fn done(&self, request: Request) -> Result<()> {
        match self.call(request)? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// True when a daemon serves the calls.
    pub fn via_daemon(&self) -> bool {
        self.0.via_daemon()
    }

    pub fn config(&self) -> Result<ReplicaConfig> {
        expect!(self.call(Request::Config)?, Config)
    }

    pub fn add_professional(&self, p: &Professional) -> Result<()> {
        self.done(Request::AddProfessional {
            professional: p.clone(),
        })
    }

    pub fn professionals(&self) -> Result<Vec<Professional>> {
        expect!(self.call(Request::Professionals)?, Professionals)
    }

    /// Creates a dossier (at a site, opened there by `creator`) and answers it as stored.
    pub fn create_dossier(
        &self,
        dossier: NewDossier,
        creator: Option<Actor>,
    ) -> Result<DossierInfo> {
        expect!(
            self.call(Request::CreateDossier { dossier, creator })?,
            Dossier
        )
        .map(|d| *d)
    }

    pub fn qualify_dossier(&self, ins: &Ins, rpps: &Rpps) -> Result<()> {
        self.done(Request::QualifyDossier {
            ins: ins.clone(),
            rpps: rpps.clone(),
        })
    }

    /// One dossier as `actor` may see it (`None`: the host's operator).
    pub fn show_dossier(&self, ins: &Ins, actor: Option<Actor>) -> Result<DossierInfo> {
        expect!(
            self.call(Request::Dossier {
                ins: ins.clone(),
                actor
            })?,
            Dossier
        )
        .map(|d| *d)
    }

    /// The dossiers `actor` may see (`None`: the host's operator).
    pub fn list_dossiers(&self, actor: Option<Actor>) -> Result<Vec<DossierInfo>> {
        expect!(self.call(Request::Dossiers { actor })?, Dossiers)
    }

    /// A dossier's grants, revocations and blocks as `actor` may see them (`None`: the host's
    /// operator).
    pub fn grants(&self, ins: &Ins, actor: Option<Actor>) -> Result<Vec<Grant>> {
        expect!(
            self.call(Request::Grants {
                ins: ins.clone(),
                actor
            })?,
            Grants
        )
    }

    /// Whether this replica holds dossier `ins`.
    pub fn holds_dossier(&self, ins: &Ins) -> Result<bool> {
        expect!(
            self.call(Request::HoldsDossier { ins: ins.clone() })?,
            Holds
        )
    }

    /// A dossier's trace as `actor` may read it (`None`: the host's operator).
    pub fn read_trace(&self, ins: &Ins, actor: Option<Actor>) -> Result<Vec<ChainedEntry>> {
        expect!(
            self.call(Request::ReadTrace {
                ins: ins.clone(),
                actor
            })?,
            Audit
        )
    }

    /// Closes a dossier (host); answers the dossier.
    pub fn close_dossier(
        &self,
        ins: &Ins,
        reason: &str,
        deletion_requested: bool,
    ) -> Result<DossierInfo> {
        expect!(
            self.call(Request::CloseDossier {
                ins: ins.clone(),
                reason: reason.to_string(),
                deletion_requested,
            })?,
            Dossier
        )
        .map(|d| *d)
    }

    /// Records the holder's deletion request on a closed dossier (host); answers the dossier.
    pub fn request_deletion(&self, ins: &Ins) -> Result<DossierInfo> {
        expect!(
            self.call(Request::RequestDeletion { ins: ins.clone() })?,
            Dossier
        )
        .map(|d| *d)
    }

    /// Reopens a closed dossier (host); answers the dossier.
    pub fn reopen_dossier(&self, ins: &Ins, reason: &str) -> Result<DossierInfo> {
        expect!(
            self.call(Request::ReopenDossier {
                ins: ins.clone(),
                reason: reason.to_string(),
            })?,
            Dossier
        )
        .map(|d| *d)
    }

    /// Records a legal representative (host) and answers the dossier as stored.
    pub fn add_representative(
        &self,
        ins: &Ins,
        representative: NewRepresentative,
    ) -> Result<DossierInfo> {
        expect!(
            self.call(Request::AddRepresentative {
                ins: ins.clone(),
                representative,
            })?,
            Dossier
        )
        .map(|d| *d)
    }

    /// Ends a legal representative (host) and answers the dossier as stored.
    pub fn remove_representative(&self, ins: &Ins, id: RepresentativeId) -> Result<DossierInfo> {
        expect!(
            self.call(Request::RemoveRepresentative {
                ins: ins.clone(),
                id,
            })?,
            Dossier
        )
        .map(|d| *d)
    }

    pub fn purge_dossier(&self, ins: &Ins) -> Result<()> {
        self.done(Request::PurgeDossier { ins: ins.clone() })
    }

    pub fn set_grant(
        &self,
        ins: &Ins,
        rpps: &Rpps,
        state: GrantState,
        basis: Option<GrantBasis>,
        until: Option<Millis>,
    ) -> Result<Grant> {
        let mut set = expect!(
            self.call(Request::SetGrant {
                ins: ins.clone(),
                rpps: rpps.clone(),
                state,
                basis,
                until,
            })?,
            Grants
        )?;
        set.pop()
            .ok_or_else(|| carnet_store::Error::NotFound("grant".into()).into())
    }

    pub fn pending_grant(&self, ins: &Ins, rpps: &Rpps) -> Result<()> {
        self.done(Request::PendingGrant {
            ins: ins.clone(),
            rpps: rpps.clone(),
        })
    }

    /// Changes the preferences given (`None` keeps one) and answers those now in force.
    pub fn update_emergency(
        &self,
        ins: &Ins,
        samu: Option<bool>,
        btg: Option<bool>,
        masked: Option<bool>,
    ) -> Result<EmergencyPrefs> {
        expect!(
            self.call(Request::UpdateEmergency {
                ins: ins.clone(),
                samu,
                btg,
                masked
            })?,
            Emergency
        )
    }

    pub fn import_fhir(&self, json: String) -> Result<Vec<carnet_syncd::fhir::Imported>> {
        expect!(self.call(Request::ImportFhir { json })?, FhirImported)
    }

    pub fn put_document(
        &self,
        actor: &Actor,
        mode: AccessMode,
        reason: Option<&str>,
        ins: &Ins,
        document: NewDocument,
    ) -> Result<DocId> {
        expect!(
            self.call(Request::PutDocument {
                actor: actor.clone(),
                mode,
                reason: reason.map(str::to_string),
                ins: ins.clone(),
                document,
            })?,
            DocId
        )
    }

    pub fn read_document(
        &self,
        actor: &Actor,
        id: &DocId,
        mode: AccessMode,
        reason: Option<&str>,
    ) -> Result<ReadOutcome> {
        expect!(
            self.call(Request::ReadDocument {
                actor: actor.clone(),
                id: *id,
                mode,
                reason: reason.map(str::to_string),
            })?,
            Read
        )
        .map(|r| *r)
    }

    pub fn list_documents(&self, actor: &Actor, ins: &Ins) -> Result<Vec<DocumentMeta>> {
        expect!(
            self.call(Request::ListDocuments {
                actor: actor.clone(),
                ins: ins.clone()
            })?,
            Documents
        )
    }

    pub fn update_document(
        &self,
        actor: &Actor,
        id: &DocId,
        action: Action,
    ) -> Result<DocumentMeta> {
        expect!(
            self.call(Request::UpdateDocument {
                actor: actor.clone(),
                id: *id,
                action
            })?,
            Document
        )
        .map(|d| *d)
    }

    pub fn replace_document(
        &self,
        actor: &Actor,
        id: &DocId,
        document: NewDocument,
    ) -> Result<DocId> {
        expect!(
            self.call(Request::ReplaceDocument {
                actor: actor.clone(),
                id: *id,
                document
            })?,
            DocId
        )
    }

    /// Checks every chain: answers (chains, entries).
    pub fn verify_audit(&self) -> Result<(usize, u64)> {
        match self.call(Request::VerifyAudit)? {
            Response::Verified { chains, entries } => Ok((chains, entries)),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads every stored body and checks it against its document: the damaged ones.
    pub fn damaged_bodies(&self) -> Result<Vec<DocId>> {
        match self.call(Request::CheckBodies)? {
            Response::DamagedBodies(ids) => Ok(ids),
            other => Err(unexpected(&other)),
        }
    }

    /// Re-wraps every key under a new key file, or under `passphrase`.
    pub fn rotate_master_key(&self, passphrase: Option<String>) -> Result<()> {
        self.done(Request::RotateMasterKey { passphrase })
    }

    pub fn export_dossier(&self, actor: &Actor, ins: &Ins) -> Result<DossierExport> {
        expect!(
            self.call(Request::ExportDossier {
                actor: actor.clone(),
                ins: ins.clone()
            })?,
            Export
        )
        .map(|e| *e)
    }

    pub fn export_authority(&self) -> Result<Bundle> {
        expect!(self.call(Request::ExportAuthority)?, Authority)
    }

    pub fn import_authority(&self, bundle: &Bundle) -> Result<ImportReport> {
        expect!(
            self.call(Request::ImportAuthority {
                bundle: bundle.clone()
            })?,
            Imported
        )
    }

    pub fn host_key(&self) -> Result<Option<[u8; 32]>> {
        expect!(self.call(Request::HostKey)?, HostKey)
    }

    /// Site: asks for (or lets go) a dossier; host, with `site`: decides that site's pin.
    pub fn pin(&self, ins: &Ins, on: bool, site: Option<u32>) -> Result<()> {
        self.done(Request::Pin {
            ins: ins.clone(),
            on,
            site,
        })
    }

    pub fn emergency_fetch(
        &self,
        ins: &Ins,
        rpps: &Rpps,
        mode: AccessMode,
        reason: &str,
    ) -> Result<()> {
        self.done(Request::EmergencyFetch {
            ins: ins.clone(),
            rpps: rpps.clone(),
            mode,
            reason: reason.to_string(),
        })
    }

    pub fn bind_professional(&self, site: u32, rpps: &Rpps, on: bool) -> Result<()> {
        self.done(Request::BindProfessional {
            site,
            rpps: rpps.clone(),
            on,
        })
    }

    pub fn site_professionals(&self, site: u32) -> Result<Vec<Rpps>> {
        expect!(self.call(Request::SiteProfessionals { site })?, Bound)
    }

    pub fn site_requests(&self) -> Result<Vec<SiteRequest>> {
        expect!(self.call(Request::SiteRequests)?, SiteRequests)
    }

    /// Keeps `keep`, one branch of `doc` in conflict, as `actor`.
    pub fn resolve_conflict(&self, actor: &Actor, doc: &DocId, keep: &DocId) -> Result<()> {
        self.done(Request::ResolveConflict {
            actor: actor.clone(),
            doc: *doc,
            keep: *keep,
        })
    }

    /// The quarantined documents, with what became of each.
    pub fn quarantined(&self) -> Result<Vec<QuarantineEntry>> {
        expect!(self.call(Request::Quarantine)?, Quarantine)
    }

    pub fn quarantined_one(&self, id: &DocId) -> Result<QuarantineEntry> {
        expect!(self.call(Request::QuarantineShow { id: *id })?, Quarantined).map(|q| *q)
    }

    /// A quarantined document's body, read as `actor` (traced).
    pub fn quarantined_body(&self, actor: &Actor, id: &DocId) -> Result<Zeroizing<Vec<u8>>> {
        match self.call(Request::QuarantineBody {
            actor: actor.clone(),
            id: *id,
        })? {
            Response::QuarantinedBody { body } => Ok(body),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a quarantined document again into `ins`, as `actor`; answers the new id.
    pub fn refile_quarantined(&self, actor: &Actor, id: &DocId, ins: &Ins) -> Result<DocId> {
        expect!(
            self.call(Request::QuarantineRefile {
                actor: actor.clone(),
                id: *id,
                ins: ins.clone(),
            })?,
            DocId
        )
    }

    /// Host: the emergencies judged there (`pending`: only those not reviewed).
    pub fn emergencies(&self, pending: bool) -> Result<Vec<Emergency>> {
        expect!(self.call(Request::Emergencies { pending })?, Emergencies)
    }

    /// Host: records `by`'s review of emergency `id`.
    pub fn review_emergency(&self, id: u64, by: &str, note: &str) -> Result<Emergency> {
        let mut list = expect!(
            self.call(Request::ReviewEmergency {
                id,
                by: by.to_string(),
                note: note.to_string(),
            })?,
            Emergencies
        )?;
        list.pop().ok_or_else(|| {
            Failure::Sync(carnet_syncd::Error::Invalid(
                "the daemon answered no emergency".into(),
            ))
        })
    }

    /// Host: its notifications (of `dossier` only, if given); traced.
    pub fn notifications(&self, dossier: Option<Ins>) -> Result<Vec<Notification>> {
        expect!(
            self.call(Request::Notifications { dossier })?,
            Notifications
        )
    }

    /// The documents in conflict (of `dossier` only, if given), with their branches.
    pub fn conflicts(&self, dossier: Option<Ins>) -> Result<Vec<Conflict>> {
        expect!(self.call(Request::Conflicts { dossier })?, Conflicts)
    }

    pub fn backup(&self, path: std::path::PathBuf) -> Result<BackupInfo> {
        expect!(self.call(Request::Backup { path })?, Backup)
    }

    /// Site: what in the inbox needs a person.
    pub fn inbox(&self) -> Result<carnet_syncd::inbox::InboxState> {
        expect!(self.call(Request::Inbox)?, Inbox).map(|s| *s)
    }

    /// Site: moves a refused file back into the inbox; answers the files moved.
    pub fn inbox_retry(&self, name: &str) -> Result<Vec<String>> {
        expect!(
            self.call(Request::InboxRetry {
                name: name.to_string()
            })?,
            InboxRetried
        )
    }

    pub fn sync_status(&self) -> Result<SyncStatus> {
        expect!(self.call(Request::SyncStatus)?, SyncStatus).map(|s| *s)
    }

    pub fn handover(
        &self,
        peer: &str,
        ins: &Ins,
        by: &Rpps,
        reason: Option<&str>,
    ) -> Result<carnet_syncd::peer::HandoverOutcome> {
        expect!(
            self.call(Request::Handover {
                peer: peer.to_string(),
                ins: ins.clone(),
                by: by.clone(),
                reason: reason.map(str::to_string),
            })?,
            HandedOver
        )
        .map(|o| *o)
    }

    pub fn ask_handover(
        &self,
        peer: &str,
        ins: &Ins,
        by: &Rpps,
        reason: Option<&str>,
    ) -> Result<carnet_syncd::peer::AskOutcome> {
        expect!(
            self.call(Request::AskHandover {
                peer: peer.to_string(),
                ins: ins.clone(),
                by: by.clone(),
                reason: reason.map(str::to_string),
            })?,
            Asked
        )
        .map(|o| *o)
    }

    pub fn sync_now(&self) -> Result<RoundReport> {
        expect!(self.call(Request::SyncNow)?, Synced)
    }

    pub fn pki_init(&self, offline_ca: Option<Identity>) -> Result<()> {
        let ca_in_replica = offline_ca.is_none();
        self.done(Request::PkiInit {
            offline_ca,
            ca_in_replica,
        })
    }

    /// Enrols a site: answers its id, name and the bundle's bytes.
    pub fn pki_enrol(
        &self,
        name: &str,
        finess: &str,
        host_address: &str,
        pros: Vec<Rpps>,
        ca: Option<Identity>,
        days: Option<i64>,
    ) -> Result<(u32, String, Vec<u8>)> {
        enrolled(self.call(Request::PkiEnrol {
            name: name.to_string(),
            finess: finess.to_string(),
            host_address: host_address.to_string(),
            pros,
            ca,
            days,
        })?)
    }

    /// Renews a site's certificate: answers its id, name and the renewal bundle's bytes.
    pub fn pki_renew(
        &self,
        site: u32,
        host_address: Option<String>,
        retire_old: bool,
        ca: Option<Identity>,
    ) -> Result<(u32, String, Vec<u8>)> {
        enrolled(self.call(Request::PkiRenew {
            site,
            host_address,
            retire_old,
            ca,
        })?)
    }

    /// Renews the host's certificate: answers the end of its validity.
    /// Renews the host's certificate, prepares a new key (`new_key`) or switches to it
    /// (`switch`): answers what was done (`Certificate`, `HostKeyPrepared`, `HostKeySwitched`).
    pub fn pki_renew_host(
        &self,
        new_key: bool,
        switch: bool,
        ca: Option<Identity>,
    ) -> Result<Response> {
        match self.call(Request::PkiRenewHost {
            new_key,
            switch,
            ca,
        })? {
            r @ (Response::Certificate { .. }
            | Response::HostKeyPrepared { .. }
            | Response::HostKeySwitched { .. }) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Host: the CA revokes the host key `pin`; answers the revocation file's bytes.
    pub fn pki_revoke_host(&self, pin: [u8; 32], ca: Option<Identity>) -> Result<Vec<u8>> {
        match self.call(Request::PkiRevokeHost { pin, ca })? {
            Response::HostKeyRevoked { file, .. } => Ok(file),
            other => Err(unexpected(&other)),
        }
    }

    /// Installs a renewal bundle or a host key revocation at a site: answers what was done
    /// (`Certificate`, `RevocationInstalled`).
    pub fn pki_install(&self, bundle: Vec<u8>) -> Result<Response> {
        match self.call(Request::PkiInstall { bundle })? {
            r @ (Response::Certificate { .. } | Response::RevocationInstalled { .. }) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    pub fn pki_host(&self) -> Result<PkiHostStatus> {
        expect!(self.call(Request::PkiHost)?, PkiHost)
    }

    pub fn pki_revoke(&self, site: u32) -> Result<()> {
        self.done(Request::PkiRevoke { site })
    }

    pub fn pki_sites(&self) -> Result<BTreeMap<u32, SiteRecord>> {
        expect!(self.call(Request::PkiSites)?, Sites)
    }

    pub fn fleet(&self, site: Option<u32>) -> Result<Vec<SiteOverview>> {
        expect!(self.call(Request::Fleet { site })?, Fleet)
    }

    /// Host: the renewals sites asked for over sync, not used yet.
    pub fn pki_renewals(&self) -> Result<Vec<Renewal>> {
        expect!(self.call(Request::PkiRenewals)?, Renewals)
    }

    /// Host: signs the renewals waiting for the CA; answers those signed.
    pub fn pki_sign_pending(&self, ca: Option<Identity>) -> Result<Vec<Renewal>> {
        expect!(self.call(Request::PkiSignPending { ca })?, Renewals)
    }
}

fn enrolled(response: Response) -> Result<(u32, String, Vec<u8>)> {
    match response {
        Response::Enrolled {
            site_id,
            name,
            bundle,
        } => Ok((site_id, name, bundle)),
        other => Err(unexpected(&other)),
    }
}
