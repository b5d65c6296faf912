//! A vector of slots with a free list: stable small indices for tasks and registered
//! sockets, reused as they end.

/// Entries addressed by index; a removed entry's index is handed out again.
pub(crate) struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores `value`; returns its index.
    pub(crate) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(value);
                i
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    /// The index the next `insert` will use.
    pub(crate) fn next_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.entries.get(i).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.entries.get_mut(i).and_then(Option::as_mut)
    }

    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        let taken = self.entries.get_mut(i).and_then(Option::take);
        if taken.is_some() {
            self.len -= 1;
            self.free.push(i);
        }
        taken
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// One past the highest index in use (every index below may be looked up).
    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Takes every entry out, leaving the slab empty.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.free.clear();
        self.len = 0;
        std::mem::take(&mut self.entries)
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_reused_after_removal() {
        let mut s = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!((a, b, s.len()), (0, 1, 2));
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None, "removed once");
        assert_eq!(s.next_index(), a);
        assert_eq!(s.insert("c"), a);
        assert_eq!(s.get(a), Some(&"c"));
        assert_eq!(s.get(7), None);
        assert_eq!(s.len(), 2);
        let mut all = s.drain();
        all.sort();
        assert_eq!(all, ["b", "c"]);
        assert_eq!(s.len(), 0);
        assert_eq!(s.insert("d"), 0);
    }
}
