//! Codec contexts shared by every thread of the process, as many kept as there are cores.
//!
//! A context per thread cost a zstd `DCtx` (about 160 KiB touched) for each of the six or so
//! threads that decompress (serving and prefetch threads), though no more than one per core
//! can run at a time. A thread takes a kept context, or makes one when all are in use.

use std::sync::Mutex;

/// Contexts of one codec.
pub(super) struct Pool<T> {
    free: Mutex<Vec<T>>,
}

impl<T> Pool<T> {
    pub(super) const fn new() -> Self {
        Pool { free: Mutex::new(Vec::new()) }
    }

    /// Runs `f` with a context: a kept one, else one from `make` (None: it could not be made).
    /// The context is kept afterwards while fewer than one per core are.
    pub(super) fn with<R>(&self, make: impl FnOnce() -> Option<T>, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let kept = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut ctx = match kept {
            Some(c) => c,
            None => make()?,
        };
        let out = f(&mut ctx);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < crate::cache::cores() {
            free.push(ctx);
        }
        Some(out)
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::Pool;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn contexts_are_reused_and_at_most_one_per_core_kept() {
        let pool: Pool<u32> = Pool::new();
        let made = AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, Ordering::Relaxed);
            Some(7)
        };
        for _ in 0..10 {
            assert_eq!(pool.with(make, |c| *c + 1), Some(8));
        }
        assert_eq!(made.load(Ordering::Relaxed), 1, "one thread in turn needs one context");
        std::thread::scope(|s| {
            for _ in 0..16 {
                s.spawn(|| {
                    for _ in 0..100 {
                        pool.with(make, |c| std::hint::black_box(*c));
                    }
                });
            }
        });
        assert!(pool.kept() <= crate::cache::cores());
        assert_eq!(pool.with(|| None, |c| *c), Some(7), "a kept context is used before making one");
    }

    #[test]
    fn a_context_that_cannot_be_made_is_none() {
        let pool: Pool<u32> = Pool::new();
        assert_eq!(pool.with(|| None, |c| *c), None);
    }
}
