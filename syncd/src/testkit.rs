//! Test helpers: a host and an enrolled site replica with one dossier and a treating doctor.
//! Compiled outside tests too, for the fuzz targets' fixture (`fuzzing`); the helpers that
//! make temporary folders (`tempfile`, a dev-dependency) are test-only.

use std::sync::Arc;

use carnet_store::ids::{Ins, InsKind, Rpps};
use carnet_store::model::{
    DocClass, GrantBasis, GrantState, HolderKind, Identity, IdentityStatus, Profession,
    Professional, Sex,
};
use carnet_store::replica::{InitOptions, KeySource, NewDocument, NewDossier, Replica, Role};

pub fn doctor() -> Rpps {
    Rpps::parse("10000000001").expect("rpps")
}

pub fn clock() -> carnet_store::replica::Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

/// Where a test replica keeps its tables: a host in a PostgreSQL database of its own when
/// `CARNET_TEST_HOST_STORAGE=postgres` (the suite's second run in `.ci/run`), else its folder.
fn storage_for(role: Role) -> carnet_store::replica::Storage {
    #[cfg(test)]
    if role == Role::Host
        && std::env::var(carnet_store::replica::HOST_STORAGE_ENV).as_deref() == Ok("postgres")
    {
        return carnet_store::replica::Storage::postgres(carnet_testpg::database());
    }
    let _ = role;
    carnet_store::replica::Storage::File
}

pub fn init(
    dir: &std::path::Path,
    role: Role,
    site: Option<u32>,
    host_key: Option<[u8; 32]>,
) -> Replica {
    Replica::init_on(
        dir,
        &storage_for(role),
        InitOptions {
            role,
            name: role.as_str().into(),
            site_id: site.map(carnet_store::ids::SiteId),
            key: KeySource::File,
            host_key,
            lease_hours: None,
        },
        clock(),
    )
    .expect("init")
}

pub fn new_doc(title: &str, body: Vec<u8>) -> NewDocument {
    NewDocument {
        class: DocClass::parse("10").expect("class"),
        type_code: "11488-4".into(),
        title: title.into(),
        format: "application/octet-stream".into(),
        body,
        unique_id: None,
        service_start: None,
        service_end: None,
    }
}

/// A new document of dossier `ins` written at `at` by `doctor`, with `body` (`new_doc`).
pub fn write_doc(at: &Replica, ins: &Ins, title: &str, body: Vec<u8>) -> carnet_store::ids::DocId {
    let actor = carnet_store::model::Actor::Professional(doctor());
    at.put_document(
        &actor,
        carnet_store::model::AccessMode::Normal,
        None,
        ins,
        new_doc(title, body),
    )
    .expect("write")
}

/// The INS of the fixture's dossier.
pub fn ins() -> Ins {
    Ins::from_body("2840575123456").expect("ins")
}

/// A dossier for `ins`, of a synthetic adult.
pub fn new_dossier(ins: &Ins) -> NewDossier {
    NewDossier {
        ins: ins.clone(),
        ins_kind: InsKind::TestNir,
        identity: Identity {
            birth_name: "TEST".into(),
            first_names: "Alex".into(),
            birth_date: "1984-05-07".into(),
            sex: Sex::Female,
            birthplace: None,
            status: IdentityStatus::Qualified,
        },
        holder: HolderKind::Adult,
        representatives: vec![],
        mask_new_by_default: false,
    }
}

/// The doctor (`doctor()`) as a professional a replica registers.
fn the_doctor() -> Professional {
    Professional {
        rpps: doctor(),
        profession: Profession::Medecin,
        specialty: None,
        name: None,
    }
}

/// A database disk in memory for tests: every write fails with ENOSPC while `full` is set, and
/// takes `delay_ms` first.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct TestDisk {
    inner: std::sync::Arc<redb::backends::InMemoryBackend>,
    pub full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[cfg(test)]
impl redb::StorageBackend for TestDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        std::thread::sleep(std::time::Duration::from_millis(
            self.delay_ms.load(Ordering::SeqCst),
        ));
        if self.full.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        self.inner.write(offset, data)
    }
}

/// A host (dossier, doctor treating) and a site registering the doctor, pinned to the host.
#[cfg(test)]
pub fn host_and_site() -> (tempfile::TempDir, Replica, Replica, Ins) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (host, site, ins) = host_and_site_in(tmp.path());
    (tmp, host, site, ins)
}

/// `host_and_site` in `dir/host` and `dir/site`.
pub fn host_and_site_in(dir: &std::path::Path) -> (Replica, Replica, Ins) {
    host_and_site_with(dir, init(&dir.join("host"), Role::Host, None, None))
}

/// `host_and_site_in` with `host`, a host replica just made.
pub fn host_and_site_with(dir: &std::path::Path, host: Replica) -> (Replica, Replica, Ins) {
    let pro = the_doctor();
    host.add_professional(&pro).expect("pro");
    let ins = ins();
    crate::testkit::as_host(&host)
        .authority()
        .create_dossier(new_dossier(&ins))
        .expect("dossier");
    crate::testkit::as_host(&host)
        .authority()
        .set_grant(
            &ins,
            &doctor(),
            GrantState::Active,
            GrantBasis::Treating,
            None,
        )
        .expect("grant");
    let site = init(
        &dir.join("site"),
        Role::Site,
        Some(5),
        host.host_key().expect("key"),
    );
    site.add_professional(&pro).expect("pro");
    install_test_identity(&site);
    crate::testkit::as_host(&host)
        .authority()
        .bind_professional(carnet_store::ids::SiteId(5), &doctor(), true)
        .expect("bind");
    (host, site, ins)
}

/// Another site of `host_and_site_in`'s host (`site_id`, in `dir`), registering and bound to
/// the same doctor.
#[cfg(test)]
pub fn another_site(dir: &std::path::Path, host: &Replica, site_id: u32) -> Replica {
    let site = init(
        dir,
        Role::Site,
        Some(site_id),
        host.host_key().expect("key"),
    );
    site.add_professional(&the_doctor()).expect("pro");
    install_test_identity(&site);
    crate::testkit::as_host(host)
        .authority()
        .bind_professional(carnet_store::ids::SiteId(site_id), &doctor(), true)
        .expect("bind");
    site
}

/// A site replica created from an enrolment bundle, with the doctor registered.
pub fn site_from_bundle(dir: &std::path::Path, bundle: &crate::enrol::Bundle) -> Replica {
    let site = init(dir, Role::Site, Some(bundle.site_id), Some(bundle.host_key));
    crate::enrol::install_site(&site, bundle).expect("install");
    site.add_professional(&the_doctor()).expect("pro");
    site
}

/// Now, in Unix seconds, by the system clock.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Gives `site` a TLS identity for its site id, under a CA of its own (the in-memory sessions
/// sign trace heads with it; no connection is made).
fn install_test_identity(site: &Replica) {
    let now = now_secs();
    let ca = crate::pki::new_ca(now).expect("ca");
    let identity = crate::pki::issue_site(&ca, site.config().site_id.0, now).expect("site");
    crate::enrol::save_site_tls(
        site,
        &crate::enrol::SiteTls {
            ca_cert_der: ca.cert_der,
            identity,
            host_address: "127.0.0.1:1".into(),
            host_pins: None,
            revoked_host_pins: Vec::new(),
        },
    )
    .expect("identity");
}

/// The certificate and key `site` connects with.
pub fn signer(site: &Replica) -> crate::pki::Identity {
    crate::enrol::site_tls(site).expect("enrolled").identity
}

/// The certificate `site` connects with (DER).
pub fn certificate(site: &Replica) -> Vec<u8> {
    signer(site).cert_der
}

/// A host whose treating doctor listed the dossier's documents there: one notification (his
/// first access), not spooled yet.
#[cfg(test)]
pub fn host_with_notification() -> (tempfile::TempDir, Replica) {
    let (tmp, host, _site, ins) = host_and_site();
    host.list_documents(&carnet_store::model::Actor::Professional(doctor()), &ins)
        .expect("list");
    (tmp, host)
}

/// The host's operations of `host`, a test's host replica.
pub fn as_host(host: &Replica) -> carnet_store::replica::Host<'_> {
    host.as_host().expect("a host replica")
}

/// The site's operations of `site`, a test's site replica.
pub fn as_site(site: &Replica) -> carnet_store::replica::Site<'_> {
    site.as_site().expect("a site replica")
}

/// What the host's session takes of `host`, a test's host replica.
pub fn host_sync(host: &Replica) -> carnet_store::replica::HostSync<'_> {
    as_host(host).sync()
}

/// What the site's session takes of `site`, a test's site replica.
pub fn site_sync(site: &Replica) -> carnet_store::replica::SiteSync<'_> {
    as_site(site).sync()
}

/// A QUIC endpoint on 127.0.0.1 with `config` that echoes every stream of every connection
/// (up to 1 MiB each), and its address.
#[cfg(test)]
pub fn echo_host(config: quinn::ServerConfig) -> (quinn::Endpoint, std::net::SocketAddr) {
    let endpoint =
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let local = endpoint.local_addr().expect("local");
    let server = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let got = recv.read_to_end(1 << 20).await.unwrap_or_default();
                        let _ = send.write_all(&got).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    (endpoint, local)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suite's second run really keeps its hosts in PostgreSQL, and sites in their files.
    #[test]
    fn test_hosts_live_where_the_run_says() {
        let in_postgres =
            std::env::var(carnet_store::replica::HOST_STORAGE_ENV).as_deref() == Ok("postgres");
        let tmp = tempfile::tempdir().expect("tmp");
        let host_dir = tmp.path().join("host");
        init(&host_dir, Role::Host, None, None);
        assert_eq!(
            host_dir.join(carnet_store::replica::DB_FILE).exists(),
            !in_postgres
        );
        assert_eq!(
            host_dir.join(carnet_store::replica::POSTGRES_MARK).exists(),
            in_postgres
        );
        let site_dir = tmp.path().join("site");
        init(&site_dir, Role::Site, Some(7), None);
        assert!(site_dir.join(carnet_store::replica::DB_FILE).exists());
    }
}
