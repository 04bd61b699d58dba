//! Criterion micro-benchmarks of the store's hot paths: sealing a 4 KiB body, the trace
//! chain hash, the access decision, and a metadata merge.

use carnet_store::crypto::Key;
use carnet_store::model::{
    AccessMode, DossierStatus, EmergencyPrefs, HabilitationMatrix, HolderKind, Profession,
};
use carnet_store::policy::{self, Action, DossierView, Request, Who};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn benches(c: &mut Criterion) {
    let key = Key::random().expect("os randomness");
    let body = vec![7u8; 4096];
    c.bench_function("seal 4 KiB", |b| {
        b.iter(|| key.seal(b"aad", black_box(&body)))
    });
    let sealed = key.seal(b"aad", &body).expect("seal");
    c.bench_function("open 4 KiB", |b| {
        b.iter(|| key.open(b"aad", black_box(&sealed)))
    });
    let entry = vec![1u8; 200];
    c.bench_function("trace chain hash (200 B entry)", |b| {
        b.iter(|| carnet_store::audit::chain_hash(&[1; 32], black_box(&entry), &[0; 32]))
    });
    let matrix = HabilitationMatrix::default_matrix();
    let who = Who::Professional {
        rpps: carnet_store::ids::Rpps::parse("10000000001").expect("rpps"),
        profession: Profession::Pharmacien,
    };
    let view = DossierView {
        status: DossierStatus::Active,
        holder: HolderKind::Adult,
        representatives: &[],
        grant: Some((carnet_store::model::GrantState::Active, false)),
        grant_ended: false,
        emergency: EmergencyPrefs::default(),
        matrix: &matrix,
        lease_expired: false,
    };
    let req = Request {
        who: &who,
        action: Action::List,
        mode: AccessMode::Normal,
        reason: None,
        doc: None,
        new_class: None,
    };
    c.bench_function("policy decide", |b| {
        b.iter(|| policy::decide(black_box(&req), black_box(&view)))
    });
}

criterion_group!(store, benches);
criterion_main!(store);
