//! Several host daemons over one PostgreSQL database: two `carnet-syncd --role host` processes
//! serve three sites at once; what a site pushes through one reaches the sites of the other at
//! their next round; a daemon killed in the middle of a round loses nothing, and its sites
//! carry on through the other.

use std::time::{Duration, Instant};

use carnet_store::kv::{Database, ReadableTable, ReadableTableMetadata};
use carnet_store::replica::tables::PARTIAL_PROGRESS;

use crate::daemon::{enrolled_site, free_port, start_daemon, sync_until_ok, wait_for_socket};
use crate::support::*;

/// A second daemon's folder: the first one's key, joined to the database at `url`.
fn joined_daemon(first: &Carnet, url: &str, address: &str) -> Carnet {
    let second = Carnet::empty();
    std::fs::create_dir_all(&second.data).expect("folder");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&second.data, std::fs::Permissions::from_mode(0o700))
            .expect("0700");
    }
    std::fs::copy(
        first.path("data/master.key"),
        second.path("data/master.key"),
    )
    .expect("key");
    let joined = second.ok(&[
        "init",
        "--role",
        "host",
        "--listen",
        address,
        "--storage",
        url,
        "--join",
    ]);
    assert!(joined.stdout.contains("daemon 1"), "{}", joined.stdout);
    second
}

/// Points `site` at the host daemons at `addresses`, in that order.
fn host_addresses(site: &Carnet, addresses: &[&str]) {
    let path = site.path("data/carnet.toml");
    let toml = std::fs::read_to_string(&path).expect("carnet.toml");
    let list = addresses
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let rewritten: String = toml
        .lines()
        .map(|l| {
            if l.starts_with("host_address") {
                format!("host_address = [{list}]\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(rewritten, toml, "carnet.toml names the host");
    std::fs::write(&path, rewritten).expect("write carnet.toml");
}

/// Bytes of bodies the host has received in part, in `db`.
fn partial_bytes(db: &Database) -> u64 {
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(PARTIAL_PROGRESS).expect("table");
    if table.is_empty().expect("len") {
        return 0;
    }
    table
        .iter()
        .expect("iter")
        .map(|row| row.expect("row").1.value())
        .sum()
}

#[test]
fn two_host_daemons_serve_three_sites_and_a_kill_loses_nothing() {
    let url = carnet_testpg::database();
    let first_address = format!("127.0.0.1:{}", free_port());
    let second_address = format!("127.0.0.1:{}", free_port());
    let first = Carnet::empty();
    first.ok(&[
        "init",
        "--role",
        "host",
        "--listen",
        &first_address,
        "--storage",
        &url,
    ]);
    first.ok(&["pki", "init", "--ca-in-replica"]);
    let ins = first.doctor_dossier();
    let second = joined_daemon(&first, &url, &second_address);
    let sites = [(); 3].map(|()| enrolled_site(&first, &first_address, &[DOCTOR]));
    // Sites 0 and 2 reach the first daemon first, site 1 the second.
    for (n, site) in sites.iter().enumerate() {
        site.pro(DOCTOR, "medecin");
        if n == 1 {
            host_addresses(site, &[&second_address, &first_address]);
        } else {
            host_addresses(site, &[&first_address, &second_address]);
        }
    }
    let mut first_daemon = start_daemon(&first);
    let _second_daemon = start_daemon(&second);
    wait_for_socket(&first);
    wait_for_socket(&second);
    // Each site takes the dossier, through the daemon it reaches first.
    for site in &sites {
        sync_until_ok(site, Duration::from_secs(60));
    }

    // All three write and sync at the same time, through both daemons.
    let written: Vec<(String, Vec<u8>)> = std::thread::scope(|scope| {
        let runs: Vec<_> = sites
            .iter()
            .enumerate()
            .map(|(n, site)| {
                let ins = &ins;
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for k in 0..3 {
                        let body = format!("note {k} of site {n} (synthetic)").into_bytes();
                        let id = site.add_doc(ins, DOCTOR, "10", "11488-4", "Note", &body);
                        sync_until_ok(site, Duration::from_secs(60));
                        mine.push((id, body));
                    }
                    mine
                })
            })
            .collect();
        runs.into_iter()
            .flat_map(|r| r.join().expect("site thread"))
            .collect()
    });
    assert_eq!(written.len(), 9);

    // A body large enough that the first daemon is killed while it arrives.
    let big_body = crate::support::incompressible(24 << 20, 24);
    let big = sites[2].add_doc(&ins, DOCTOR, "10", "11488-4", "Imagerie", &big_body);
    // Each look is a snapshot of the database: a round trip that paces the wait.
    let db = Database::Pg(carnet_store::kv::pg::PgStore::open(&url).expect("open"));
    std::thread::scope(|scope| {
        let pushing = scope.spawn(|| sites[2].run(&["--json", "sync", "now"]));
        let deadline = Instant::now() + Duration::from_secs(60);
        while partial_bytes(&db) == 0 {
            assert!(
                Instant::now() < deadline && !pushing.is_finished(),
                "the body never began to arrive"
            );
            std::thread::yield_now();
        }
        first_daemon.0.kill().expect("kill -9 the first daemon");
        let _ = first_daemon.0.wait();
        let _ = pushing.join().expect("round");
    });

    // Every site goes on through the second daemon, and ends up with everything.
    for _ in 0..2 {
        for site in &sites {
            sync_until_ok(site, Duration::from_secs(90));
        }
    }
    for site in &sites {
        for (id, body) in &written {
            assert_eq!(&site.body(id, DOCTOR), body, "every note everywhere");
        }
        assert_eq!(
            site.body(&big, DOCTOR),
            big_body,
            "the body cut by the kill"
        );
    }
    // The host's trace chains, one per daemon, verify; the first daemon's folder reads the
    // same database without its daemon.
    let verified = second.json(&["audit", "verify"]);
    assert_eq!(
        verified["chains"], 5,
        "the two daemons' and the three sites': {verified}"
    );
    assert_eq!(first.body(&big, DOCTOR), big_body);
}
