//! `carnet-bench`: the macro benchmarks of DESIGN §6, measured as ratios against physical
//! floors taken in the same run on the same disk.
//!
//! `carnet-bench store` prints: encrypted ingest of 4 KiB documents (seal + trace + outbox)
//! against raw redb inserts of the same bytes, batched and one per transaction; and audited
//! reads per second with 1, 8 and 64 concurrent readers against the fsync rate.
//! Everything runs in a temporary folder that is removed at the end.

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

const DOC_BYTES: usize = 4096;
const BATCH: usize = 1000;
const BATCHES: usize = 10;
const SINGLES: usize = 300;
const RAW: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("raw");

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    let result = match what.as_str() {
        "store" => store(),
        // Only the batched ingest, for profiling it alone.
        "ingest" => ingest_only(),
        // Only the 64-reader audited reads, for profiling them alone.
        "reads" => reads_only(),
        _ => {
            eprintln!("usage: carnet-bench store");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible enough, deterministic, no dependency.
    let mut x = seed | 1;
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

/// fsyncs per second of a 4 KiB write, in `dir`: the block is rewritten in place, so no file
/// size change slows the sync (the fastest, hence strictest, floor).
fn fsync_rate(dir: &Path) -> Res<f64> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = random_bytes(DOC_BYTES, 7);
    f.write_all(&block)?;
    f.sync_all()?;
    let n = 500;
    let start = Instant::now();
    for _ in 0..n {
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&block)?;
        f.sync_data()?;
    }
    let rate = per_sec(n, start.elapsed());
    std::fs::remove_file(path)?;
    Ok(rate)
}

/// Raw redb inserts of `DOC_BYTES` values: (batched rate, one-per-transaction rate).
fn raw_redb(dir: &Path) -> Res<(f64, f64)> {
    let db = Database::create(dir.join("raw.redb"))?;
    let body = random_bytes(DOC_BYTES, 1);
    // Keys minted like Carnet's document ids (time-ordered), so the floor gets the same
    // B-tree insert pattern.
    let key = || {
        DocId::mint(
            std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.as_millis() as i64),
        )
        .0
    };
    let start = Instant::now();
    for _ in 0..BATCHES {
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(RAW)?;
            for _ in 0..BATCH {
                t.insert(&key(), body.as_slice())?;
            }
        }
        txn.commit()?;
    }
    let batched = per_sec(BATCH * BATCHES, start.elapsed());
    let start = Instant::now();
    for _ in 0..SINGLES {
        let txn = db.begin_write()?;
        txn.open_table(RAW)?.insert(&key(), body.as_slice())?;
        txn.commit()?;
    }
    let single = per_sec(SINGLES, start.elapsed());
    Ok((batched, single))
}

fn doctor() -> Res<Rpps> {
    Ok(Rpps::parse("10000000001")?)
}

fn setup_replica(dir: &Path) -> Res<(Replica, Ins)> {
    let r = Replica::init(
        dir,
        InitOptions {
            role: Role::Host,
            name: "bench".into(),
            site_id: None,
            key: KeySource::File,
            host_key: None,
        },
        system_clock(),
    )?;
    r.add_professional(&Professional {
        rpps: doctor()?,
        profession: Profession::Medecin,
        specialty: None,
        name: None,
    })?;
    let ins = Ins::from_body("1840575123456")?;
    r.create_dossier(NewDossier {
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
    r.set_grant(&ins, &doctor()?, GrantState::Active, GrantBasis::Treating)?;
    Ok((r, ins))
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

fn ingest_only() -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let (replica, ins) = setup_replica(&tmp.path().join("replica"))?;
    let (batched, _, _) = carnet_put(&replica, &ins)?;
    println!("carnet put, 1000 per transaction: {batched:.0}/s");
    Ok(())
}

fn reads_only() -> Res<()> {
    let tmp = tempfile::tempdir()?;
    let (replica, ins) = setup_replica(&tmp.path().join("replica"))?;
    let (_, _, ids) = carnet_put(&replica, &ins)?;
    let (replica, ids) = (Arc::new(replica), Arc::new(ids));
    let start = Instant::now();
    let readers: usize = std::env::var("READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rate = audited_reads(&replica, &ids, readers, 64_000 / readers)?;
    println!(
        "audited reads, 64 readers: {rate:.0}/s ({:.2}s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "BELOW BUDGET" }
}

fn store() -> Res<()> {
    let tmp = tempfile::tempdir()?;
    println!("carnet-bench store — 4 KiB documents, temporary folder on the same disk\n");
    let fsync = fsync_rate(tmp.path())?;
    let (raw_batched, raw_single) = raw_redb(tmp.path())?;
    let (replica, ins) = setup_replica(&tmp.path().join("replica"))?;
    let (put_batched, put_single, ids) = carnet_put(&replica, &ins)?;
    let (replica, ids) = (Arc::new(replica), Arc::new(ids));
    let mut reads = Vec::new();
    for (readers, per) in [(1, 1500), (8, 1500), (64, 400)] {
        reads.push((readers, audited_reads(&replica, &ids, readers, per)?));
    }
    println!(
        "{:<58} {:>12} {:>10} {:>8}",
        "measure", "per second", "ratio", "budget"
    );
    println!("{:<58} {:>12.0}", "fsync of 4 KiB (floor)", fsync);
    println!(
        "{:<58} {:>12.0}",
        "raw redb insert, 1000 per transaction (floor)", raw_batched
    );
    println!(
        "{:<58} {:>12.0}",
        "raw redb insert, 1 per transaction (floor)", raw_single
    );
    let rb = put_batched / raw_batched;
    println!(
        "{:<58} {:>12.0} {:>9.0}% {:>8}",
        "carnet put (seal+trace+outbox), 1000 per transaction",
        put_batched,
        rb * 100.0,
        verdict(rb >= 0.5)
    );
    let rs = put_single / raw_single;
    println!(
        "{:<58} {:>12.0} {:>9.0}% {:>8}",
        "carnet put (seal+trace+outbox), 1 per transaction",
        put_single,
        rs * 100.0,
        verdict(rs >= 0.5)
    );
    for (readers, rate) in &reads {
        let x = rate / fsync;
        let budget = if *readers >= 8 {
            verdict(x >= 10.0)
        } else {
            "-"
        };
        println!(
            "{:<58} {:>12.0} {:>8.1}x {:>8}",
            format!("audited reads, {readers} concurrent reader(s) (x fsync rate)"),
            rate,
            x,
            budget
        );
    }
    println!(
        "\nbudgets (DESIGN §6): ingest >= 50% of raw redb; audited reads >= 10x the fsync rate (concurrent readers)"
    );
    Ok(())
}
