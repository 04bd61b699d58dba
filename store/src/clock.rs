//! Version vectors: one counter per site that changed a record.
//!
//! Invariants: counters only grow; `merge` is the pointwise maximum (commutative, associative,
//! idempotent); `compare` is the causal order (before, after, equal, concurrent). An absent
//! site counts as 0, so a vector never stores a zero counter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::SiteId;

/// How two version vectors relate causally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// The left one happened before the right one.
    Before,
    /// The left one happened after the right one.
    After,
    /// Same history.
    Equal,
    /// Neither saw the other: a concurrent update.
    Concurrent,
}

/// A version vector.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<SiteId, u64>);

impl VersionVector {
    /// The empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `site` (0 when absent).
    pub fn get(&self, site: SiteId) -> u64 {
        self.0.get(&site).copied().unwrap_or(0)
    }

    /// Records one more local update at `site` (saturating: a counter near `u64::MAX` only
    /// comes from a corrupt or hostile peer, which `is_sane` refuses first).
    pub fn bump(&mut self, site: SiteId) {
        let n = self.0.entry(site).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// True when every counter is plausible (below 2^62): what a peer may send.
    pub fn is_sane(&self) -> bool {
        self.0.values().all(|&n| n < 1 << 62)
    }

    /// Pointwise maximum, in place.
    pub fn merge(&mut self, other: &VersionVector) {
        for (&site, &n) in &other.0 {
            let mine = self.0.entry(site).or_insert(0);
            *mine = (*mine).max(n);
        }
    }

    /// The causal relation of `self` to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut less = false;
        let mut greater = false;
        for site in self.0.keys().chain(other.0.keys()) {
            let (a, b) = (self.get(*site), other.get(*site));
            less |= a < b;
            greater |= a > b;
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when `self` has seen everything `other` has (after or equal).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Causality::After | Causality::Equal)
    }

    /// The per-site counters.
    pub fn iter(&self) -> impl Iterator<Item = (SiteId, u64)> + '_ {
        self.0.iter().map(|(s, n)| (*s, *n))
    }
}

impl FromIterator<(SiteId, u64)> for VersionVector {
    /// The vector of these counters (a site named twice keeps its last counter).
    fn from_iter<I: IntoIterator<Item = (SiteId, u64)>>(pairs: I) -> Self {
        VersionVector(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(u32, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(s, n) in pairs {
            for _ in 0..n {
                v.bump(SiteId(s));
            }
        }
        v
    }

    #[test]
    fn compare_orders_causally() {
        let a = vv(&[(1, 1)]);
        let b = vv(&[(1, 2)]);
        let c = vv(&[(2, 1)]);
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(a.compare(&a.clone()), Causality::Equal);
        assert_eq!(a.compare(&c), Causality::Concurrent);
        assert!(b.dominates(&a) && !a.dominates(&b));
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u32..4, 0u64..4), 0..5).prop_map(|p| vv(&p))
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone(); aa.merge(&a);
            prop_assert_eq!(&aa, &a);
            prop_assert!(ab.dominates(&a) && ab.dominates(&b));
        }
    }
}
