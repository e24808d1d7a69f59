//! Nucleus ids packed into one buffer.
//!
//! A slide holds up to millions of nuclei: one `String` each costs a
//! pointer, a length, a capacity and a heap block (about 56 bytes for a
//! short id), and those blocks, allocated between the polygons' vertices
//! while reading, keep the freed vertices' pages resident once the polygons
//! are spilled. One text buffer with the end offset of every id holds the
//! id bytes plus 8 bytes, in two allocations.

use std::fmt;
use std::ops::Index;

/// Ids in one text buffer, by index; [`crate::io::Nuclei::ids`] keeps them
/// sorted bytewise, which [`NucleusIds::position`] relies on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NucleusIds {
    text: String,
    /// Where each id ends in `text`; id `i` starts where id `i - 1` ends.
    ends: Vec<u64>,
}

impl NucleusIds {
    /// No ids; room for `ids` ids of `bytes` bytes in all.
    pub fn with_capacity(ids: usize, bytes: usize) -> Self {
        NucleusIds {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(ids),
        }
    }

    /// Appends `id` as the last id.
    pub fn push(&mut self, id: impl AsRef<str>) {
        self.text.push_str(id.as_ref());
        self.ends.push(self.text.len() as u64);
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no id.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Id `i`, if there are more than `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        Some(&self.text[start..end])
    }

    /// The ids in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator + Clone {
        (0..self.len()).map(move |i| &self[i])
    }

    /// Index of `id` among ids sorted bytewise (binary search; `None` when
    /// absent).
    pub fn position(&self, id: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self[mid].cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Bytes held (text and offsets, as allocated).
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * std::mem::size_of::<u64>()
    }
}

/// The nuclei altered while reading, sorted by (id, what was done): ids in
/// one buffer as [`NucleusIds`] (a file of MERSCOPE z-planes alters every
/// nucleus), what was done as static text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AlteredNuclei {
    ids: NucleusIds,
    what: Vec<&'static str>,
}

impl AlteredNuclei {
    /// Number of entries (a nucleus altered in two ways has two).
    pub fn len(&self) -> usize {
        self.what.len()
    }

    /// Whether no nucleus was altered.
    pub fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    /// (id, what was done) of every entry, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &'static str)> + Clone {
        self.ids.iter().zip(self.what.iter().copied())
    }
}

impl<S: AsRef<str>> FromIterator<(S, &'static str)> for AlteredNuclei {
    fn from_iter<I: IntoIterator<Item = (S, &'static str)>>(entries: I) -> Self {
        let mut out = AlteredNuclei::default();
        for (id, what) in entries {
            out.ids.push(id);
            out.what.push(what);
        }
        out
    }
}

impl fmt::Debug for AlteredNuclei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Index<usize> for NucleusIds {
    type Output = str;

    fn index(&self, i: usize) -> &str {
        match self.get(i) {
            Some(id) => id,
            None => panic!("nucleus index {i} out of range ({} ids)", self.len()),
        }
    }
}

impl<S: AsRef<str>> FromIterator<S> for NucleusIds {
    fn from_iter<I: IntoIterator<Item = S>>(ids: I) -> Self {
        let mut out = NucleusIds::default();
        for id in ids {
            out.push(id);
        }
        out
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for NucleusIds {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for NucleusIds {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl fmt::Debug for NucleusIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{AlteredNuclei, NucleusIds};

    #[test]
    fn ids_round_trip_and_binary_search() {
        let ids: NucleusIds = ["", "1", "10", "3", "a-1", "é"].into_iter().collect();
        assert_eq!(ids.len(), 6);
        assert_eq!(ids, ["", "1", "10", "3", "a-1", "é"]);
        assert_eq!(&ids[2], "10");
        assert_eq!(ids.get(6), None);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(ids.position(id), Some(i), "{id}");
        }
        for absent in ["0", "2", "a", "z", "1 "] {
            assert_eq!(ids.position(absent), None, "{absent}");
        }
        assert_eq!(NucleusIds::default().position(""), None);
        assert_eq!(format!("{ids:?}"), r#"["", "1", "10", "3", "a-1", "é"]"#);
    }

    #[test]
    fn altered_entries_keep_their_order() {
        let altered: AlteredNuclei = [("b", "x"), ("b", "y"), ("c", "x")].into_iter().collect();
        assert_eq!(altered.len(), 3);
        assert_eq!(
            altered.iter().collect::<Vec<_>>(),
            [("b", "x"), ("b", "y"), ("c", "x")]
        );
        assert_eq!(
            format!("{altered:?}"),
            r#"[("b", "x"), ("b", "y"), ("c", "x")]"#
        );
    }
}
