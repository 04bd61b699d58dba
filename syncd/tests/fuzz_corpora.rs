//! Replays every committed fuzz corpus (`fuzz/corpus/TARGET/`) through its target's function
//! (`carnet_syncd::fuzzing`), on stable: an input that once made a target panic is kept in its
//! corpus, so the defect coming back fails here. The corpora are minimised (a few hundred small
//! files each), so a replay takes seconds.
//!
//! `cargo test -p carnet-syncd --test fuzz_corpora -- --ignored` writes the seed inputs
//! (`fuzzing::seeds`, real encodings) into the corpora, for `cargo fuzz cmin` to minimise.

use std::path::{Path, PathBuf};

use carnet_syncd::fuzzing;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of `target`'s corpus through `run`; fails naming each file that panicked.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = corpus(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    let mut panicked = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("corpus file");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            panicked.push(file.display().to_string());
        }
    }
    assert!(
        panicked.is_empty(),
        "{} of {} inputs of the {target} corpus panic: {panicked:#?}",
        panicked.len(),
        files.len()
    );
}

#[test]
fn the_frame_corpus_replays_without_a_panic() {
    replay("frame", fuzzing::frame);
}

#[test]
fn the_session_corpus_replays_without_a_panic_and_the_replicas_stay_sound() {
    replay("session", |data| fuzzing::session_checked(data, true));
}

#[test]
fn the_authority_bundle_corpus_replays_without_a_panic() {
    replay("authority_bundle", fuzzing::authority_bundle);
}

#[test]
fn the_inbox_sidecar_corpus_replays_without_a_panic() {
    replay("inbox_sidecar", fuzzing::inbox_sidecar);
}

#[test]
fn the_api_request_corpus_replays_without_a_panic() {
    replay("api_request", fuzzing::api_request);
}

#[test]
fn the_config_corpus_replays_without_a_panic() {
    replay("config", fuzzing::config);
}

#[test]
fn the_fhir_corpus_replays_without_a_panic() {
    replay("fhir", fuzzing::fhir);
}

#[test]
fn every_target_has_a_replayed_corpus() {
    for (target, _) in fuzzing::TARGETS {
        assert!(corpus(target).is_dir(), "no corpus for {target}");
    }
    let fuzz_targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets");
    let count = std::fs::read_dir(fuzz_targets)
        .expect("fuzz targets")
        .count();
    assert_eq!(
        count,
        fuzzing::TARGETS.len(),
        "a fuzz target without its replay"
    );
}

/// Writes the seed inputs into the corpora (run by hand, then `cargo fuzz cmin TARGET`).
#[test]
#[ignore = "writes fuzz/corpus: run by hand before minimising"]
fn write_seed_corpora() {
    for (target, name, bytes) in fuzzing::seeds() {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).expect("corpus folder");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed");
    }
}
