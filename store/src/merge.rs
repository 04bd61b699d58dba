//! Document metadata as a join-semilattice: replicas that have seen the same set of changes hold
//! the same value, whatever the order in which the changes arrived.
//!
//! A document is its immutable `DocumentFacts` plus a multi-value register of `DocState`s: the
//! set of versions no other known version causally dominates. `merge` unites the two sets and
//! keeps the maximal versions; it is **commutative, associative and idempotent** (the property
//! tests below prove it on random histories). The *effective* state joins the surviving
//! versions: restrictive flags win, the higher availability wins, successors are united, so two
//! concurrent replacements both survive and are reported as a conflict. A local update replaces
//! every surviving version by one that dominates them all, so a later unmask does undo a mask
//! it has seen, while a concurrent unmask does not.

use serde::{Deserialize, Serialize};

use crate::clock::{Causality, VersionVector};
use crate::error::{Error, Result};
use crate::ids::SiteId;
use crate::model::{DocState, DocumentFacts};

/// A document's metadata: facts plus its versioned state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentMeta {
    /// Immutable facts.
    pub facts: DocumentFacts,
    /// Maximal versions, sorted by clock; never empty.
    versions: Vec<(VersionVector, DocState)>,
}

impl DocumentMeta {
    /// A new document written at `site` with its first state.
    pub fn new(facts: DocumentFacts, site: SiteId, state: DocState) -> Self {
        let mut clock = VersionVector::new();
        clock.bump(site);
        DocumentMeta {
            facts,
            versions: vec![(clock, state)],
        }
    }

    /// A document's metadata from its versions as `versions` lists them (the local API's
    /// decoding); `None` when there is none or a counter is implausible (`is_sane`).
    pub fn from_versions(
        facts: DocumentFacts,
        versions: Vec<(VersionVector, DocState)>,
    ) -> Option<Self> {
        let meta = DocumentMeta { facts, versions };
        meta.is_sane().then_some(meta)
    }

    /// The state users see: the join of the surviving versions.
    pub fn state(&self) -> DocState {
        let mut iter = self.versions.iter().map(|(_, s)| s);
        let first = iter.next().cloned().unwrap_or_default();
        iter.fold(first, |acc, s| acc.join(s))
    }

    /// The merged clock of every surviving version.
    pub fn clock(&self) -> VersionVector {
        let mut clock = VersionVector::new();
        for (v, _) in &self.versions {
            clock.merge(v);
        }
        clock
    }

    /// True when the value is plausible as received from a peer: at least one version, and
    /// counters far from overflow.
    pub fn is_sane(&self) -> bool {
        !self.versions.is_empty() && self.versions.iter().all(|(c, _)| c.is_sane())
    }

    /// The surviving versions: each one's clock and state.
    pub fn versions(&self) -> &[(VersionVector, DocState)] {
        &self.versions
    }

    /// Number of concurrent versions still standing (1 when there is no concurrency).
    pub fn concurrent_versions(&self) -> usize {
        self.versions.len()
    }

    /// True when replacements of this one were made concurrently: a conflict to show to
    /// people (`DocState::has_replacement_conflict`).
    pub fn has_replacement_conflict(&self) -> bool {
        self.state().has_replacement_conflict()
    }

    /// The version vector the next local change at `site` (`update`) will carry.
    pub fn next_clock(&self, site: SiteId) -> VersionVector {
        let mut clock = self.clock();
        clock.bump(site);
        clock
    }

    /// Applies a local change at `site`: the new version dominates every surviving one.
    pub fn update(&mut self, site: SiteId, change: impl FnOnce(&mut DocState)) {
        let mut state = self.state();
        change(&mut state);
        let mut clock = self.clock();
        clock.bump(site);
        self.versions = vec![(clock, state)];
    }

    /// Merges another replica's metadata of the same document.
    ///
    /// Fails (and changes nothing) when the immutable facts differ: two documents claiming one
    /// id is corruption or forgery, never something to merge.
    pub fn merge(&mut self, other: &DocumentMeta) -> Result<()> {
        if self.facts != other.facts {
            return Err(Error::integrity(format!(
                "document {} arrived with different immutable facts",
                self.facts.id
            )));
        }
        let mut all: Vec<(VersionVector, DocState)> = Vec::new();
        for (clock, state) in self.versions.iter().chain(other.versions.iter()) {
            if let Some(same) = all.iter_mut().find(|(c, _)| c == clock) {
                // The same clock names the same update; join keeps this deterministic even if
                // a faulty peer sent two states under one clock.
                same.1 = same.1.join(state);
            } else {
                all.push((clock.clone(), state.clone()));
            }
        }
        let maximal: Vec<(VersionVector, DocState)> = all
            .iter()
            .filter(|(c, _)| !all.iter().any(|(d, _)| d.compare(c) == Causality::After))
            .cloned()
            .collect();
        let mut versions = maximal;
        versions.sort();
        self.versions = versions;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DocId, Ins, Rpps};
    use crate::model::{Author, Availability, DocClass, Profession};
    use proptest::prelude::*;

    fn facts() -> DocumentFacts {
        DocumentFacts {
            id: DocId([7; 16]),
            unique_id: "urn:test".into(),
            ins: Ins::from_body("1840575123456").expect("valid"),
            class: DocClass::parse("10").expect("class"),
            type_code: "11488-4".into(),
            format: "text/plain".into(),
            title: "t".into(),
            author: Author::Professional {
                rpps: Rpps::parse("10000000001").expect("rpps"),
                profession: Profession::Medecin,
            },
            author_site: SiteId(1),
            created_at: 0,
            service_start: 0,
            service_end: None,
            content_hash: [0; 32],
            size: 0,
            replaces: None,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Mask(bool),
        HidePatient,
        Avail(u8),
        Replace(u8),
        /// Replica i pulls replica j's state.
        Sync(usize, usize),
    }

    fn arb_op() -> impl Strategy<Value = (usize, Op)> {
        let op = prop_oneof![
            any::<bool>().prop_map(Op::Mask),
            Just(Op::HidePatient),
            (0u8..4).prop_map(Op::Avail),
            (0u8..3).prop_map(Op::Replace),
            (0usize..3, 0usize..3).prop_map(|(a, b)| Op::Sync(a, b)),
        ];
        (0usize..3, op)
    }

    /// Runs a history on 3 replicas; returns every state ever held (for the laws) and the
    /// final replicas.
    fn run(ops: &[(usize, Op)]) -> (Vec<DocumentMeta>, Vec<DocumentMeta>) {
        let base = DocumentMeta::new(facts(), SiteId(0), DocState::default());
        let mut replicas = vec![base.clone(), base.clone(), base];
        let mut seen = replicas.clone();
        for (at, op) in ops {
            let site = SiteId(*at as u32);
            match op {
                Op::Mask(m) => replicas[*at].update(site, |s| s.flags.masque_ps = *m),
                Op::HidePatient => replicas[*at].update(site, |s| s.flags.invisible_patient = true),
                Op::Avail(a) => replicas[*at].update(site, |s| {
                    s.availability = Some(Availability::ALL[*a as usize])
                }),
                Op::Replace(n) => {
                    let recorded_at = replicas[*at].next_clock(site);
                    replicas[*at].update(site, |s| {
                        s.successors.entry(DocId([*n; 16])).or_insert(recorded_at);
                    })
                }
                Op::Sync(i, j) => {
                    let other = replicas[*j].clone();
                    replicas[*i].merge(&other).expect("same facts");
                }
            }
            seen.push(replicas[*at].clone());
        }
        (seen, replicas)
    }

    fn merged(a: &DocumentMeta, b: &DocumentMeta) -> DocumentMeta {
        let mut m = a.clone();
        m.merge(b).expect("same facts");
        m
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(
            ops in proptest::collection::vec(arb_op(), 0..40),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 3),
        ) {
            let (seen, _) = run(&ops);
            let a = &seen[picks[0].index(seen.len())];
            let b = &seen[picks[1].index(seen.len())];
            let c = &seen[picks[2].index(seen.len())];
            prop_assert_eq!(merged(a, b), merged(b, a));
            prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
            prop_assert_eq!(merged(a, a), a.clone());
        }

        #[test]
        fn any_delivery_order_converges(
            ops in proptest::collection::vec(arb_op(), 0..40),
            order in Just(()).prop_perturb(|_, mut rng| {
                let mut v: Vec<usize> = (0..3).collect();
                for i in (1..v.len()).rev() { v.swap(i, rng.random_range(0..=i)); }
                v
            }),
        ) {
            let (_, replicas) = run(&ops);
            let mut forward = replicas[0].clone();
            for r in &replicas[1..] { forward.merge(r).expect("facts"); }
            let mut shuffled = replicas[order[0]].clone();
            for &i in &order[1..] { shuffled.merge(&replicas[i]).expect("facts"); }
            // Delivering duplicates changes nothing either.
            shuffled.merge(&replicas[order[2]]).expect("facts");
            prop_assert_eq!(forward.state(), shuffled.state());
            prop_assert_eq!(forward, shuffled);
        }
    }

    #[test]
    fn concurrent_mask_and_unmask_converge_to_masked() {
        let base = DocumentMeta::new(facts(), SiteId(0), DocState::default());
        let mut a = base.clone();
        a.update(SiteId(0), |s| s.flags.masque_ps = true);
        let mut b = a.clone();
        let mut c = a.clone();
        // b unmasks having seen the mask; c masks again concurrently.
        b.update(SiteId(1), |s| s.flags.masque_ps = false);
        assert!(
            !b.state().flags.masque_ps,
            "a sequential unmask undoes the mask"
        );
        c.update(SiteId(2), |s| s.flags.masque_ps = true);
        let m = merged(&b, &c);
        assert!(
            m.state().flags.masque_ps,
            "restrictive flag wins on concurrency"
        );
        assert_eq!(m.concurrent_versions(), 2);
    }

    #[test]
    fn concurrent_replacements_are_a_conflict() {
        let base = DocumentMeta::new(facts(), SiteId(0), DocState::default());
        let mut a = base.clone();
        let mut b = base;
        replace(&mut a, SiteId(1), 1);
        replace(&mut b, SiteId(2), 2);
        let mut m = merged(&a, &b);
        assert!(m.has_replacement_conflict());
        assert_eq!(m.state().successors.len(), 2);
        // A later change that has seen both (a mask) leaves one version: still a conflict.
        m.update(SiteId(1), |s| s.flags.masque_ps = true);
        assert_eq!(m.concurrent_versions(), 1);
        assert!(m.has_replacement_conflict(), "only a resolution ends it");
    }

    /// Records at `site` that document `[n; 16]` replaces `m`, as `replace_document` does.
    fn replace(m: &mut DocumentMeta, site: SiteId, n: u8) {
        let recorded_at = m.next_clock(site);
        m.update(site, |s| {
            s.successors.insert(DocId([n; 16]), recorded_at);
        });
    }

    /// Records at `site` that replacement `[n; 16]` of `m` is kept.
    fn resolve(m: &mut DocumentMeta, site: SiteId, n: u8) {
        let recorded_at = m.next_clock(site);
        m.update(site, |s| {
            s.resolutions.insert(DocId([n; 16]), recorded_at);
        });
    }

    #[test]
    fn a_resolution_ends_the_conflict_it_saw_and_concurrent_ones_converge() {
        let base = DocumentMeta::new(facts(), SiteId(0), DocState::default());
        let (mut a, mut b) = (base.clone(), base);
        replace(&mut a, SiteId(1), 1);
        replace(&mut b, SiteId(2), 2);
        let m = merged(&a, &b);
        assert!(m.has_replacement_conflict());
        // Two replicas that saw both resolve it differently, concurrently.
        let (mut r1, mut r2) = (m.clone(), m.clone());
        resolve(&mut r1, SiteId(1), 1);
        resolve(&mut r2, SiteId(2), 2);
        assert!(!r1.has_replacement_conflict() && !r2.has_replacement_conflict());
        assert_eq!(r1.state().kept(), Some(DocId([1; 16])));
        let (x, y) = (merged(&r1, &r2), merged(&r2, &r1));
        assert_eq!(x, y);
        assert!(!x.has_replacement_conflict());
        assert_eq!(
            x.state().kept(),
            Some(DocId([2; 16])),
            "the greatest id stands"
        );
        assert_eq!(x.state().resolutions.len(), 2, "both are shown");
        // A later resolution wins over both, whatever it keeps.
        let mut later = x.clone();
        resolve(&mut later, SiteId(0), 1);
        assert_eq!(later.state().kept(), Some(DocId([1; 16])));
        // A resolution does not end a conflict with a replacement it had not seen (made
        // elsewhere, concurrently with the first two).
        let mut c = DocumentMeta::new(facts(), SiteId(0), DocState::default());
        replace(&mut c, SiteId(3), 3);
        let reopened = merged(&r1, &c);
        assert!(reopened.has_replacement_conflict());
    }

    #[test]
    fn replacements_one_after_the_other_are_not_a_conflict() {
        let base = DocumentMeta::new(facts(), SiteId(0), DocState::default());
        // Twice at one site.
        let mut a = base.clone();
        replace(&mut a, SiteId(1), 1);
        replace(&mut a, SiteId(1), 2);
        assert_eq!(a.state().successors.len(), 2);
        assert!(!a.has_replacement_conflict());
        // At one site, then at another that had received the first.
        let mut b = base.clone();
        replace(&mut b, SiteId(1), 1);
        let mut c = base;
        c.merge(&b).expect("same facts");
        replace(&mut c, SiteId(2), 2);
        let m = merged(&b, &c);
        assert!(!m.has_replacement_conflict(), "{m:?}");
        assert!(!merged(&c, &b).has_replacement_conflict());
    }

    #[test]
    fn different_facts_are_refused() {
        let a = DocumentMeta::new(facts(), SiteId(0), DocState::default());
        let mut other = facts();
        other.title = "forged".into();
        let b = DocumentMeta::new(other, SiteId(0), DocState::default());
        let mut m = a.clone();
        assert!(m.merge(&b).is_err());
        assert_eq!(m, a);
    }
}
