//! `carnet-bench segments` (issue "Sync at the speed of the wire", §3): what storing 10,000
//! bodies of 4 KiB costs on this disk, three ways, in batches of 500 (a host's push window)
//! and in one batch: values in a redb table (as the replica's `BODIES` holds them now);
//! appended to segment files (`carnet_store::segments`), synced, and their 16-byte locations
//! in a redb table; the same bytes written to one file and synced once (the disk's floor).
//! Each commit is durable, as the host's are.

use std::time::Instant;

use carnet_store::segments::Segments;
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::{Res, random_bytes};

const BODIES: usize = 10_000;
const BODY: usize = 4096;
const VALUES: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("values");

pub fn run() -> Res<()> {
    let bodies: Vec<Vec<u8>> = (0..BODIES).map(|i| random_bytes(BODY, i as u64)).collect();
    println!(
        "carnet-bench segments — {BODIES} bodies of {} KiB, durable commits\n",
        BODY >> 10
    );
    println!("| batches | redb values | segments + redb locations | one file, one sync (floor) |");
    println!("|---|---:|---:|---:|");
    for batch in [500, BODIES] {
        let values = in_redb(&bodies, batch)?;
        let segments = in_segments(&bodies, batch)?;
        let floor = one_file(&bodies)?;
        println!(
            "| {} of {batch} | {values:.3} s | {segments:.3} s | {floor:.3} s |",
            BODIES / batch
        );
    }
    Ok(())
}

/// Keys in no useful order, as stored document ids are.
fn key(i: usize) -> [u8; 16] {
    let mut x = (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    x ^= x >> 61;
    x.to_le_bytes()
}

fn in_redb(bodies: &[Vec<u8>], batch: usize) -> Res<f64> {
    let dir = crate::tmp::tempdir()?;
    let db = Database::create(dir.path().join("values.redb"))?;
    let start = Instant::now();
    for (n, chunk) in bodies.chunks(batch).enumerate() {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(VALUES)?;
            for (i, body) in chunk.iter().enumerate() {
                table.insert(&key(n * batch + i), body.as_slice())?;
            }
        }
        txn.commit()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    check(&db, bodies, |v| Ok(v.to_vec()))?;
    Ok(seconds)
}

fn in_segments(bodies: &[Vec<u8>], batch: usize) -> Res<f64> {
    let dir = crate::tmp::tempdir()?;
    let db = Database::create(dir.path().join("index.redb"))?;
    let segments = Segments::in_folder(&dir.path().join("segments"))?;
    let start = Instant::now();
    for (n, chunk) in bodies.chunks(batch).enumerate() {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(VALUES)?;
            for (i, body) in chunk.iter().enumerate() {
                let at = segments.append(body)?;
                table.insert(&key(n * batch + i), at.encode().as_slice())?;
            }
        }
        segments.sync()?;
        txn.commit()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let view = segments.view()?;
    check(&db, bodies, |v| {
        Ok(view.read(carnet_store::segments::Location::decode(v)?)?)
    })?;
    Ok(seconds)
}

fn one_file(bodies: &[Vec<u8>]) -> Res<f64> {
    use std::io::Write;
    let dir = crate::tmp::tempdir()?;
    let start = Instant::now();
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.path().join("bodies"))?);
    for body in bodies {
        file.write_all(body)?;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_data()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Every body reads back as written, through `value` (what the table holds → the body).
fn check(db: &Database, bodies: &[Vec<u8>], value: impl Fn(&[u8]) -> Res<Vec<u8>>) -> Res<()> {
    let txn = db.begin_read()?;
    let table = txn.open_table(VALUES)?;
    for (i, body) in bodies.iter().enumerate() {
        let stored = table.get(&key(i))?.ok_or("a body is missing")?;
        if value(stored.value())? != *body {
            return Err(format!("body {i} did not read back").into());
        }
    }
    Ok(())
}
