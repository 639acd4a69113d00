//! How many unauthenticated bodies the ingress reads and verifies at once.
//!
//! A body is held in memory from its first byte until its signature is
//! checked, and anyone can send one. So each body read needs a permit, and a
//! request that finds none is answered 503 at once, before any of its body is
//! read (Svix retries). Bodies are admitted in two classes: small ones (a
//! declared length up to [`SMALL_BODY_BYTES`], which covers every real Clerk
//! event) and large ones (a larger or undeclared length), and large bodies
//! may take only an eighth of the permits. A flood of unfinished large bodies
//! thus fills its own class and leaves room for real deliveries, and the
//! memory held by bodies stays under [`Admission::memory_bound`].

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies declared up to this size are "small". Clerk's events are a few KiB
/// (user metadata is capped at 8 KiB); this leaves a wide margin.
pub const SMALL_BODY_BYTES: u64 = 64 * 1024;

/// The permits to read a body.
#[derive(Clone, Debug)]
pub struct Admission {
    small: Arc<Semaphore>,
    large: Arc<Semaphore>,
    large_permits: usize,
    small_permits: usize,
}

/// Held while a body is read and verified.
#[derive(Debug)]
pub struct BodyPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Admission {
    /// `max_bodies` bodies at once, of which at most an eighth (at least one)
    /// large.
    pub fn new(max_bodies: usize) -> Self {
        let max_bodies = max_bodies.max(2);
        let large_permits = (max_bodies / 8).max(1);
        let small_permits = max_bodies - large_permits;
        Self {
            small: Arc::new(Semaphore::new(small_permits)),
            large: Arc::new(Semaphore::new(large_permits)),
            large_permits,
            small_permits,
        }
    }

    /// A permit for a body of `declared` bytes (`None`: no `Content-Length`),
    /// or `None` when its class is full.
    pub fn try_admit(&self, declared: Option<u64>) -> Option<BodyPermit> {
        let class = match declared {
            Some(len) if len <= SMALL_BODY_BYTES => &self.small,
            _ => &self.large,
        };
        class.clone().try_acquire_owned().ok().map(BodyPermit)
    }

    /// The most body bytes held at once with bodies of at most `max_body_bytes`.
    pub fn memory_bound(&self, max_body_bytes: usize) -> u64 {
        self.small_permits as u64 * SMALL_BODY_BYTES
            + self.large_permits as u64 * max_body_bytes as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_fill_only_their_own_class() {
        let admission = Admission::new(16);
        let large: Vec<_> = std::iter::from_fn(|| admission.try_admit(Some(1_000_000))).collect();
        assert_eq!(large.len(), 2);
        assert!(admission.try_admit(None).is_none(), "undeclared is large");
        let small: Vec<_> = std::iter::from_fn(|| admission.try_admit(Some(3_000))).collect();
        assert_eq!(small.len(), 14);
        drop(large);
        assert!(admission.try_admit(Some(1_000_000)).is_some());
    }

    #[test]
    fn the_memory_bound_counts_both_classes() {
        let admission = Admission::new(256);
        assert_eq!(
            admission.memory_bound(1 << 20),
            224 * SMALL_BODY_BYTES + 32 * (1 << 20)
        );
    }
}
