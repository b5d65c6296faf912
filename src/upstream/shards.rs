//! Agents in shards, so that many calls in parallel do not all queue on one pool.
//!
//! ureq keeps an agent's idle connections in one list behind one mutex, and every call
//! walks that list under the lock (its purge compares the key of every idle connection,
//! twice): with 100 calls in flight, each takes the lock that the 99 others take too, and
//! walks up to 100 connections. Profiled at 100 instant calls in parallel, that was 5.8 %
//! of all CPU time.
//!
//! A call takes the lowest free slot of [`SLOTS`] and uses the agent of its slot's group of
//! [`PER_SHARD`]. Up to 16 calls at once, a home gateway's usual load, all use the first
//! agent, so they share its connections as with one agent (no more connections, no more
//! TLS handshakes); more calls spread over the others, each of which then holds about 16
//! connections per provider. A call beyond [`SLOTS`] uses the last agent. All the agents
//! share one connector, and so one TLS configuration and one session cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ureq::Agent;
use ureq::config::Config;

use super::abort::Connector;
use super::resolver::Names;

/// Calls that hold a slot at once.
pub const SLOTS: usize = 128;
/// Calls per agent.
pub const PER_SHARD: usize = 16;

const WORDS: usize = SLOTS / 64;

/// The agents of one kind (proxied or direct) and the slots that pick one.
pub struct Shards {
    agents: Vec<Agent>,
    slots: Arc<Slots>,
}

/// Which slots are taken: one bit each.
#[derive(Default)]
struct Slots([AtomicU64; WORDS]);

/// A call's claim on a slot, given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    index: Option<usize>,
}

impl Shards {
    /// `SLOTS / PER_SHARD` agents with the same configuration, the same connector and the
    /// same resolver.
    pub fn new(config: &Config, names: &Names) -> Shards {
        let connector = Connector::default();
        let agents = (0..SLOTS / PER_SHARD)
            .map(|_| Agent::with_parts(config.clone(), connector.clone(), names.clone()))
            .collect();
        Shards {
            agents,
            slots: Arc::default(),
        }
    }

    /// A free slot and the agent that goes with it.
    pub fn take(&self) -> (&Agent, Slot) {
        let index = self.slots.take();
        let shard = index.map_or(self.agents.len() - 1, |i| i / PER_SHARD);
        let slot = Slot {
            slots: Arc::clone(&self.slots),
            index,
        };
        (&self.agents[shard], slot)
    }

    /// The first agent, for a call that takes no slot (a single small GET).
    pub fn first(&self) -> &Agent {
        &self.agents[0]
    }
    /// How many slots are taken now.
    #[cfg(test)]
    pub fn taken(&self) -> u32 {
        self.slots.taken()
    }
}

impl Slots {
    /// The lowest free slot, now taken; None when all are.
    fn take(&self) -> Option<usize> {
        for (w, word) in self.0.iter().enumerate() {
            let mut now = word.load(Ordering::Relaxed);
            while now != u64::MAX {
                let bit = (!now).trailing_zeros() as usize;
                match word.compare_exchange_weak(
                    now,
                    now | 1 << bit,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(w * 64 + bit),
                    Err(current) => now = current,
                }
            }
        }
        None
    }

    fn give_back(&self, index: usize) {
        self.0[index / 64].fetch_and(!(1 << (index % 64)), Ordering::AcqRel);
    }

    #[cfg(test)]
    fn taken(&self) -> u32 {
        self.0
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones())
            .sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            self.slots.give_back(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_takes_the_lowest_free_slot_and_gives_it_back() {
        let slots = Slots::default();
        assert_eq!(slots.take(), Some(0));
        assert_eq!(slots.take(), Some(1));
        assert_eq!(slots.take(), Some(2));
        slots.give_back(1);
        assert_eq!(slots.take(), Some(1));
        for want in 3..SLOTS {
            assert_eq!(slots.take(), Some(want));
        }
        assert_eq!(slots.take(), None);
        slots.give_back(100);
        assert_eq!(slots.take(), Some(100));
        assert_eq!(slots.taken(), SLOTS as u32);
    }

    #[test]
    fn few_calls_share_the_first_agent_and_many_spread_over_all() {
        let shards = Shards::new(&Agent::config_builder().build(), &Names::default());
        let agents = |held: &[(&Agent, Slot)]| {
            let mut seen: Vec<usize> = held
                .iter()
                .map(|(a, _)| {
                    let at = shards.agents.iter().position(|b| std::ptr::eq(*a, b));
                    at.unwrap_or(usize::MAX)
                })
                .collect();
            seen.dedup();
            seen
        };
        let few: Vec<_> = (0..PER_SHARD).map(|_| shards.take()).collect();
        assert_eq!(agents(&few), vec![0]);
        drop(few);
        assert_eq!(shards.slots.taken(), 0, "every slot given back");

        let many: Vec<_> = (0..SLOTS + 3).map(|_| shards.take()).collect();
        let last = SLOTS / PER_SHARD - 1;
        assert_eq!(agents(&many), (0..=last).collect::<Vec<_>>());
        assert!(
            many[SLOTS..].iter().all(|(_, s)| s.index.is_none()),
            "beyond the slots: the last agent, nothing to give back"
        );
        drop(many);
        assert_eq!(shards.slots.taken(), 0);
    }

    #[test]
    fn slots_taken_from_many_threads_are_all_different() {
        let slots = Arc::new(Slots::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let slots = Arc::clone(&slots);
                std::thread::spawn(move || (0..16).filter_map(|_| slots.take()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<usize> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..SLOTS).collect::<Vec<_>>());
    }
}
