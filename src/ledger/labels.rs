//! Finding a map entry keyed by `[String; N]` with `[&str; N]`, without building the owned
//! key: every request records a dozen metric series and three usage rows, and building
//! their keys to look them up was a dozen allocations per request (a tenth of all of them;
//! `perf probe` on `malloc` under sigorest-bench). The owned key is made only when a new
//! series or row begins.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A key of `N` strings, owned or borrowed, ordered as `[String; N]` is: string by string.
pub trait Labels<const N: usize> {
    fn label(&self, i: usize) -> &str;
}

impl<const N: usize> Labels<N> for [String; N] {
    fn label(&self, i: usize) -> &str {
        &self[i]
    }
}

impl<const N: usize> Labels<N> for [&str; N] {
    fn label(&self, i: usize) -> &str {
        self[i]
    }
}

impl<'a, const N: usize> Borrow<dyn Labels<N> + 'a> for [String; N] {
    fn borrow(&self) -> &(dyn Labels<N> + 'a) {
        self
    }
}

impl<const N: usize> Ord for dyn Labels<N> + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        (0..N)
            .map(|i| self.label(i).cmp(other.label(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl<const N: usize> PartialOrd for dyn Labels<N> + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> PartialEq for dyn Labels<N> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl<const N: usize> Eq for dyn Labels<N> + '_ {}

/// The entry of `key`, made with `new` (and the key owned) only when there is none.
pub fn entry<'m, const N: usize, V>(
    map: &'m mut BTreeMap<[String; N], V>,
    key: [&str; N],
    new: impl FnOnce() -> V,
) -> &'m mut V {
    // (Two lookups for a new key, one for a known one: the borrow checker does not yet
    // allow returning the first lookup's borrow and inserting otherwise.)
    if map.contains_key(&key as &dyn Labels<N>) {
        return map
            .get_mut(&key as &dyn Labels<N>)
            .expect("the key was just found");
    }
    map.entry(key.map(str::to_string)).or_insert_with(new)
}

/// Whether `map` has `key`.
pub fn contains<const N: usize, V>(map: &BTreeMap<[String; N], V>, key: [&str; N]) -> bool {
    map.contains_key(&key as &dyn Labels<N>)
}

/// The value of `key`.
#[cfg(test)]
pub fn get<'m, const N: usize, V>(
    map: &'m BTreeMap<[String; N], V>,
    key: [&str; N],
) -> Option<&'m V> {
    map.get(&key as &dyn Labels<N>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_keys_find_what_owned_keys_put_in_the_same_order() {
        let mut map: BTreeMap<[String; 2], u32> = BTreeMap::new();
        let keys = [
            ["b", "a"],
            ["a", "z"],
            ["a", ""],
            ["", "b"],
            ["ab", ""],
            ["a", "b"],
        ];
        for (n, k) in keys.iter().enumerate() {
            *entry(&mut map, *k, || 0) += n as u32 + 1;
        }
        *entry(&mut map, ["a", "z"], || 100) += 10;
        assert_eq!(map.len(), keys.len(), "one series per key");
        assert_eq!(get(&map, ["a", "z"]), Some(&12), "the existing one grew");
        assert!(contains(&map, ["", "b"]) && !contains(&map, ["", "a"]));
        let order: Vec<[&str; 2]> = map.keys().map(|[a, b]| [a.as_str(), b.as_str()]).collect();
        let mut sorted = keys.to_vec();
        sorted.sort();
        assert_eq!(order, sorted, "the map stays in [String; N] order");
    }
}
