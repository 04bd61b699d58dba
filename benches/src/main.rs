//! `carnet-bench`: the macro benchmarks of DESIGN §6, measured as ratios against physical
//! floors taken in the same run on the same disk.
//!
//! `carnet-bench store` prints: encrypted ingest of 4 KiB documents (seal + trace + outbox)
//! against raw redb inserts of the same bytes, batched and one per transaction; and audited
//! reads per second with 1, 8 and 64 concurrent readers against the fsync rate.
//! `carnet-bench sync` (module `sync`): sync between a host daemon and a site.
//! `carnet-bench idle [--seconds N]` (module `idle`): the CPU and memory of a host and two site
//! daemons with nothing to do.
//! `carnet-bench host [--sites N] [--seconds S] [--docs A,B] [--storage redb|postgres]`
//! (module `host`): the host's round latency, CPU and memory with a fleet of sites and with the
//! documents it stores, its tables in redb or in PostgreSQL.
//! `carnet-bench handover [--reps N]` (module `handover`): a dossier handed over from one site to
//! another over `carnet-peer/1`, against a raw QUIC stream of the same bytes.
//! `carnet-bench link [--full] [--rate …] [--delay …] [--loss …] [--workload …]` (module `link`):
//! sync across an emulated rural link, against a raw QUIC stream over the same link.
//! `carnet-bench sim [--seeds N] [--first S] [--steps T]` (module `sim`): seeded worlds of the simulator (`carnet-sim`),
//! seeds per second and the failing seeds.
//! Everything runs in a temporary folder that is removed at the end.

/// The test suite's UDP fault proxy, an emulated link for `link`.
#[allow(dead_code)]
#[path = "../../tests/it/fault_proxy.rs"]
mod fault_proxy;
mod handover;
mod host;
mod idle;
mod link;
mod segments;
mod sim;
mod sync;
mod tmp;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carnet_store::ids::{DocId, Ins, InsKind, Rpps};
use carnet_store::model::{
    AccessMode, Actor, DocClass, GrantBasis, GrantState, HolderKind, Identity, IdentityStatus,
    Profession, Professional, Sex,
};
use carnet_store::replica::{
    InitOptions, KeySource, NewDocument, NewDossier, Replica, Role, system_clock,
};
use redb::{Database, TableDefinition};

/// The allocator `carnet-syncd` runs with, so the store is measured as the daemon runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DOC_BYTES: usize = 4096;
const BATCH: usize = 1000;
const BATCHES: usize = 10;
const SINGLES: usize = 300;
const RAW: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("raw");

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    // As `carnet-syncd` runs: the site this process plays, and the floors measured here.
    if let Err(e) = carnet_syncd::memory::use_small_pages() {
        eprintln!("transparent huge pages stay on: {e}");
    }
    let what = std::env::args().nth(1).unwrap_or_default();
    let result = match what.as_str() {
        "store" => store(),
        "sync" => sync::run(),
        "idle" => idle::run(),
        "sim" => sim::run(),
        "host" => host::run(),
        "handover" => handover::run(),
        "link" => link::run(),
        "segments" => segments::run(),
        // Only the initial sync, for profiling it alone.
        "sync-initial" => sync::initial_only(),
        // Only the raw QUIC floor, with the CPU both its ends take.
        "quic-floor" => sync::quic_floor_only(),
        // Only the batched ingest, for profiling it alone.
        "ingest" => ingest_only(),
        // Only the 64-reader audited reads, for profiling them alone.
        "reads" => reads_only(),
        _ => {
            eprintln!(
                "usage: carnet-bench store|sync|idle [--seconds N]|sim [--seeds N] [--first S] [--steps T]|host [--sites N] [--seconds S] [--docs A,B] [--storage redb|postgres]|handover [--reps N]|link [--full] [--rate R]… [--delay MS]… [--loss PCT]… [--workload W]…|segments"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The subcommand's one option `flag`, a whole number above 0 (`default` when not given);
/// `usage` is the subcommand's usage line.
fn count_option(flag: &str, default: u64, usage: &str) -> Res<u64> {
    let mut args = std::env::args().skip(2);
    let mut value = default;
    while let Some(a) = args.next() {
        if a != flag {
            return Err(format!("unknown argument '{a}': {usage}").into());
        }
        value = args
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{flag} takes a whole number above 0: {usage}"))?;
    }
    Ok(value)
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible, deterministic, no dependency; started from the seed mixed
    // (splitmix64), so that no two seeds give the same or related bytes (a compressed frame
    // would otherwise carry two bodies for the price of one).
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x = (x ^ (x >> 31)) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// fsyncs per second of 4 KiB writes in `dir`: `(appended, rewritten in place)`. Appending
/// also makes the sync record the new file size; rewriting a block in place is the fastest
/// sync there is.
fn fsync_rates(dir: &Path) -> Res<(f64, f64)> {
    use std::os::unix::fs::FileExt;
    let block = random_bytes(DOC_BYTES, 7);
    let n = 500;
    let path = dir.join("fsync-probe-append");
    let mut f = std::fs::File::create(&path)?;
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&block)?;
        f.sync_data()?;
    }
    let appended = per_sec(n, start.elapsed());
    std::fs::remove_file(path)?;
    let path = dir.join("fsync-probe-in-place");
    let f = std::fs::File::create(&path)?;
    f.write_all_at(&block, 0)?;
    f.sync_all()?;
    let start = Instant::now();
    for _ in 0..n {
        f.write_all_at(&block, 0)?;
        f.sync_data()?;
    }
    let in_place = per_sec(n, start.elapsed());
    std::fs::remove_file(path)?;
    Ok((appended, in_place))
}

/// Keys minted like Carnet's document ids (time-ordered), so the floor gets the same B-tree
/// insert pattern.
fn raw_key() -> [u8; 16] {
    DocId::mint(
        std::time::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_millis() as i64),
    )
    .0
}

/// Seconds raw redb takes to insert `n` values of `DOC_BYTES`, `BATCH` per transaction, into a
/// new database at `path`.
fn raw_redb_batched_seconds(path: &Path, n: usize) -> Res<f64> {
    let db = Database::create(path)?;
    let body = random_bytes(DOC_BYTES, 1);
    let start = Instant::now();
    for first in (0..n).step_by(BATCH) {
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(RAW)?;
            for _ in first..n.min(first + BATCH) {
                t.insert(&raw_key(), body.as_slice())?;
            }
        }
        txn.commit()?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Raw redb inserts of `DOC_BYTES` values: (batched rate, one-per-transaction rate).
fn raw_redb(dir: &Path) -> Res<(f64, f64)> {
    let n = BATCH * BATCHES;
    let batched = n as f64 / raw_redb_batched_seconds(&dir.join("raw.redb"), n)?;
    let db = Database::open(dir.join("raw.redb"))?;
    let body = random_bytes(DOC_BYTES, 1);
    let start = Instant::now();
    for _ in 0..SINGLES {
        let txn = db.begin_write()?;
        txn.open_table(RAW)?.insert(&raw_key(), body.as_slice())?;
        txn.commit()?;
    }
    let single = per_sec(SINGLES, start.elapsed());
    Ok((batched, single))
}

fn doctor() -> Res<Rpps> {
    Ok(Rpps::parse("10000000001")?)
}

/// A new host replica in `dir`.
fn new_host(dir: &Path) -> Res<Replica> {
    new_host_on(dir, &carnet_store::replica::Storage::File)
}

/// A new host replica in `dir`, its tables on `storage`.
fn new_host_on(dir: &Path, storage: &carnet_store::replica::Storage) -> Res<Replica> {
    Ok(Replica::init_on(
        dir,
        storage,
        InitOptions {
            role: Role::Host,
            name: "bench".into(),
            site_id: None,
            key: KeySource::File,
            host_key: None,
            lease_hours: None,
        },
        system_clock(),
    )?)
}

/// The bench's doctor, as registered at each replica.
fn doctor_professional() -> Res<Professional> {
    Ok(Professional {
        rpps: doctor()?,
        profession: Profession::Medecin,
        specialty: None,
        name: None,
    })
}

fn setup_replica(dir: &Path) -> Res<(Replica, Ins)> {
    let r = new_host(dir)?;
    r.add_professional(&doctor_professional()?)?;
    let ins = create_dossier(&r)?;
    decides(&r)?.set_grant(
        &ins,
        &doctor()?,
        GrantState::Active,
        GrantBasis::Treating,
        None,
    )?;
    Ok((r, ins))
}

/// A bench replica's settings: named `bench`, its key in a file.
fn bench_options(
    role: Role,
    site_id: Option<carnet_store::ids::SiteId>,
    host_key: Option<[u8; 32]>,
) -> InitOptions {
    InitOptions {
        role,
        name: "bench".into(),
        site_id,
        key: KeySource::File,
        host_key,
        lease_hours: None,
    }
}

/// On the host `host`: `rpps` treats the patient of dossier `ins`.
fn treats(host: &Replica, ins: &Ins, rpps: &Rpps) -> Res<()> {
    decides(host)?.set_grant(ins, rpps, GrantState::Active, GrantBasis::Treating, None)?;
    Ok(())
}

/// The host's decisions of `r`, a bench's host replica.
fn decides(r: &Replica) -> Res<carnet_store::replica::HostAuthority<'_>> {
    Ok(r.as_host().ok_or("not the host's replica")?.authority())
}

/// The bench's (synthetic) dossier, on a host.
fn create_dossier(r: &Replica) -> Res<Ins> {
    open_dossier(r, Ins::from_body("1840575123456")?)
}

/// Opens a dossier for `ins` (a synthetic identity) on the host `r`.
fn open_dossier(r: &Replica, ins: Ins) -> Res<Ins> {
    decides(r)?.create_dossier(NewDossier {
        ins: ins.clone(),
        ins_kind: InsKind::TestNir,
        identity: Identity {
            birth_name: "BENCH".into(),
            first_names: "Synthetic".into(),
            birth_date: "1980-01-01".into(),
            sex: Sex::Female,
            birthplace: None,
            status: IdentityStatus::Qualified,
        },
        holder: HolderKind::Adult,
        representatives: vec![],
        mask_new_by_default: false,
    })?;
    Ok(ins)
}

fn new_doc(i: usize) -> Res<NewDocument> {
    Ok(NewDocument {
        class: DocClass::parse("10")?,
        type_code: "11488-4".into(),
        title: format!("report {i}"),
        format: "application/pdf".into(),
        body: random_bytes(DOC_BYTES, i as u64 + 100),
        unique_id: None,
        service_start: None,
        service_end: None,
    })
}

/// Encrypted ingest: (batched rate, one-per-transaction rate, ids written).
fn carnet_put(r: &Replica, ins: &Ins) -> Res<(f64, f64, Vec<DocId>)> {
    let actor = Actor::Professional(doctor()?);
    let mut ids = Vec::new();
    let mut batches = Vec::new();
    for b in 0..BATCHES {
        batches.push(
            (0..BATCH)
                .map(|i| new_doc(b * BATCH + i).map(|d| (ins.clone(), d)))
                .collect::<Res<Vec<_>>>()?,
        );
    }
    let start = Instant::now();
    for batch in batches {
        ids.extend(r.put_documents(&actor, AccessMode::Normal, None, batch)?);
    }
    let batched = per_sec(BATCH * BATCHES, start.elapsed());
    let singles = (0..SINGLES)
        .map(|i| new_doc(1_000_000 + i))
        .collect::<Res<Vec<_>>>()?;
    let start = Instant::now();
    for d in singles {
        r.put_document(&actor, AccessMode::Normal, None, ins, d)?;
    }
    let single = per_sec(SINGLES, start.elapsed());
    Ok((batched, single, ids))
}

/// Audited reads per second with `readers` threads, each reading `per_reader` documents.
fn audited_reads(
    r: &Arc<Replica>,
    ids: &Arc<Vec<DocId>>,
    readers: usize,
    per_reader: usize,
) -> Res<f64> {
    let actor = Actor::Professional(doctor()?);
    let start = Instant::now();
    let threads: Vec<_> = (0..readers)
        .map(|t| {
            let (r, ids, actor) = (r.clone(), ids.clone(), actor.clone());
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..per_reader {
                    let id = ids[(t * 7919 + i * 104_729) % ids.len()];
                    r.read_document(&actor, &id, AccessMode::Normal, None)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "reader thread panicked")??;
    }
    Ok(per_sec(readers * per_reader, start.elapsed()))
}

/// Audited reads per second with `readers` concurrent asynchronous tasks on a two-thread
/// runtime, as the daemon's local API serves them (`read_document_async`).
fn audited_reads_async(
    r: &Arc<Replica>,
    ids: &Arc<Vec<DocId>>,
    readers: usize,
    per_reader: usize,
) -> Res<f64> {
    let actor = Actor::Professional(doctor()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    // The committer thread, as the daemon runs it.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let committer = {
        let (r, running) = (r.clone(), running.clone());
        std::thread::spawn(move || r.run_trace_committer(&running))
    };
    let start = Instant::now();
    let done = runtime.block_on(async {
        let tasks: Vec<_> = (0..readers)
            .map(|t| {
                let (r, ids, actor) = (r.clone(), ids.clone(), actor.clone());
                tokio::spawn(async move {
                    for i in 0..per_reader {
                        let id = ids[(t * 7919 + i * 104_729) % ids.len()];
                        r.read_document_async(&actor, &id, AccessMode::Normal, None)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.map_err(|_| "reader task panicked")??;
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    let rate = per_sec(readers * per_reader, start.elapsed());
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    committer.thread().unpark();
    committer.join().map_err(|_| "the committer panicked")?;
    done?;
    Ok(rate)
}

fn ingest_only() -> Res<()> {
    let tmp = crate::tmp::tempdir()?;
    let (replica, ins) = setup_replica(&tmp.path().join("replica"))?;
    let (batched, _, _) = carnet_put(&replica, &ins)?;
    println!("carnet put, 1000 per transaction: {batched:.0}/s");
    Ok(())
}

fn reads_only() -> Res<()> {
    let tmp = crate::tmp::tempdir()?;
    let (replica, ins) = setup_replica(&tmp.path().join("replica"))?;
    let (_, _, ids) = carnet_put(&replica, &ins)?;
    let (replica, ids) = (Arc::new(replica), Arc::new(ids));
    let start = Instant::now();
    let readers: usize = std::env::var("READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let cpu_before = cpu_seconds();
    let rate = if std::env::var("READ_THREADS").is_ok() {
        audited_reads(&replica, &ids, readers, 64_000 / readers)?
    } else {
        audited_reads_async(&replica, &ids, readers, 64_000 / readers)?
    };
    let wall = start.elapsed().as_secs_f64();
    println!(
        "audited reads, {readers} readers: {rate:.0}/s ({wall:.2}s, {:.0}% CPU)",
        100.0 * (cpu_seconds() - cpu_before) / wall
    );
    Ok(())
}

/// User plus system CPU time of this process so far, from `/proc/self/stat` (0 elsewhere).
fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// User plus system CPU time of process `pid` ("self" for this one) so far, from
/// `/proc/PID/stat` (0 elsewhere).
fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')': utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: f64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// Milliseconds since the Unix epoch.
fn unix_millis() -> Res<u64> {
    Ok(u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "BELOW BUDGET" }
}

fn store() -> Res<()> {
    let tmp = crate::tmp::tempdir()?;
    println!("carnet-bench store — 4 KiB documents, temporary folder on the same disk\n");
    // The disk of a shared machine drifts: probe the fsync floor before and after, keep the
    // faster (stricter) of each kind.
    let (append_before, in_place_before) = fsync_rates(tmp.path())?;
    let (raw_batched, raw_single) = raw_redb(tmp.path())?;
    let (replica, ins) = setup_replica(&tmp.path().join("replica"))?;
    let (put_batched, put_single, ids) = carnet_put(&replica, &ins)?;
    let (replica, ids) = (Arc::new(replica), Arc::new(ids));
    // Readers as threads (`read_document`), then as tasks on a two-thread runtime with the
    // trace committer thread (`read_document_async`), as the daemon serves them.
    let mut reads = Vec::new();
    for (readers, per) in [(1, 1500), (8, 1500), (64, 400)] {
        reads.push((
            readers,
            "threads",
            audited_reads(&replica, &ids, readers, per)?,
        ));
    }
    for (readers, per) in [(8, 1500), (64, 1000)] {
        reads.push((
            readers,
            "tasks",
            audited_reads_async(&replica, &ids, readers, per)?,
        ));
    }
    let (append_after, in_place_after) = fsync_rates(tmp.path())?;
    let fsync_append = append_before.max(append_after);
    let fsync_in_place = in_place_before.max(in_place_after);

    let row = |name: &str, rate: f64, ratio: String, budget: &str| {
        println!("{name:<56} {rate:>11.0} {ratio:>10} {budget:>12}");
    };
    println!(
        "{:<56} {:>11} {:>10} {:>12}",
        "measure", "per second", "ratio", "budget"
    );
    row(
        "fsync of a 4 KiB append (floor)",
        fsync_append,
        String::new(),
        "",
    );
    row(
        "fsync of a 4 KiB rewrite in place (floor)",
        fsync_in_place,
        String::new(),
        "",
    );
    row(
        "raw redb insert, 1000 per transaction (floor)",
        raw_batched,
        String::new(),
        "",
    );
    row(
        "raw redb insert, 1 per transaction (floor)",
        raw_single,
        String::new(),
        "",
    );
    let rb = put_batched / raw_batched;
    row(
        "carnet put (seal+trace+outbox), 1000 per transaction",
        put_batched,
        format!("{:.0}%", rb * 100.0),
        verdict(rb >= 0.5),
    );
    let rs = put_single / raw_single;
    row(
        "carnet put (seal+trace+outbox), 1 per transaction",
        put_single,
        format!("{:.0}%", rs * 100.0),
        verdict(rs >= 0.5),
    );
    for (readers, kind, rate) in &reads {
        let x = rate / fsync_append;
        row(
            &format!("audited reads, {readers} concurrent reader {kind}"),
            *rate,
            format!("{x:.1}x"),
            if *readers == 64 && *kind == "tasks" {
                verdict(x >= 10.0)
            } else {
                ""
            },
        );
    }
    println!(
        "\nratios: ingest against raw redb inserts of the same bytes; audited reads against the \
         fsync of a 4 KiB append\n(against the in-place rewrite, 64 readers reach {:.1}x)\n\
         budgets (DESIGN §6): ingest >= 50%; audited reads with concurrent readers >= 10x",
        reads.last().map_or(0.0, |(_, _, r)| r / fsync_in_place)
    );
    Ok(())
}
