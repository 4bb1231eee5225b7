//! Inputs: arbitrary bytes, and structure-aware mutations of valid
//! encodings that cairn's own writers made (truncate, flip, overwrite a
//! length field with an extreme value, splice, duplicate, insert tokens).

use proptest::prelude::*;
use proptest::sample::Index;

/// Numbers that break length and count fields.
const EXTREMES: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

#[derive(Clone, Debug)]
pub enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Set(Index, u8),
    /// Overwrite `width` bytes (1, 2, 4 or 8; little- or big-endian) with an extreme.
    Number(Index, usize, usize, bool),
    /// Copy the range at `from` of `len` bytes to `to` (overwriting).
    Splice(Index, Index, usize),
    /// Repeat the range at `from` of `len` bytes in place.
    Duplicate(Index, usize),
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    /// Insert a token of the format (a keyword, a number, a quote).
    Token(Index, Index),
}

/// One mutation of any kind.
pub fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        4 => (any::<Index>(), 0..EXTREMES.len(), prop::sample::select(vec![1usize, 2, 4, 8]), any::<bool>())
            .prop_map(|(i, v, w, le)| Mutation::Number(i, v, w, le)),
        1 => (any::<Index>(), any::<Index>(), 1usize..600).prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
        1 => (any::<Index>(), 1usize..600).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(a, n)| Mutation::Delete(a, n)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(a, b)| Mutation::Insert(a, b)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, t)| Mutation::Token(a, t)),
    ]
}

fn at(i: &Index, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        i.index(len)
    }
}

fn insert_at(b: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let tail = b.split_off(at);
    b.extend_from_slice(bytes);
    b.extend_from_slice(&tail);
}

/// `b` after each of `ms`; `tokens` are what `Token` inserts.
pub fn apply(mut b: Vec<u8>, ms: &[Mutation], tokens: &[&[u8]]) -> Vec<u8> {
    for m in ms {
        let len = b.len();
        match m {
            Mutation::Truncate(i) => b.truncate(at(i, len + 1)),
            Mutation::Flip(i, bit) if len > 0 => b[at(i, len)] ^= 1 << bit,
            Mutation::Set(i, v) if len > 0 => b[at(i, len)] = *v,
            Mutation::Number(i, v, width, le) if len > 0 => {
                let v = EXTREMES[*v].to_le_bytes();
                let mut field: Vec<u8> = v[..*width].to_vec();
                if !le {
                    field.reverse();
                }
                let start = at(i, len);
                let end = (start + width).min(len);
                b[start..end].copy_from_slice(&field[..end - start]);
            }
            Mutation::Splice(from, to, n) if len > 0 => {
                let from = at(from, len);
                let n = (*n).min(len - from);
                let piece = b[from..from + n].to_vec();
                let to = at(to, len);
                let end = (to + n).min(len);
                b[to..end].copy_from_slice(&piece[..end - to]);
            }
            Mutation::Duplicate(from, n) if len > 0 => {
                let from = at(from, len);
                let n = (*n).min(len - from);
                let piece = b[from..from + n].to_vec();
                insert_at(&mut b, from, &piece);
            }
            Mutation::Delete(from, n) if len > 0 => {
                let from = at(from, len);
                let n = (*n).min(len - from);
                b.drain(from..from + n);
            }
            Mutation::Insert(i, bytes) => {
                insert_at(&mut b, at(i, len + 1), bytes);
            }
            Mutation::Token(i, t) if !tokens.is_empty() => {
                insert_at(&mut b, at(i, len + 1), tokens[t.index(tokens.len())]);
            }
            _ => {}
        }
    }
    b
}

/// Arbitrary bytes up to `max` long.
pub fn arbitrary(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// One of `seeds` with 1 to 8 mutations, `tokens` the format's own words.
pub fn mutated(
    seeds: Vec<Vec<u8>>,
    tokens: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "a mutation target needs a seed");
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation_strategy(), 1..8),
    )
        .prop_map(move |(seed, ms)| apply(seed, &ms, tokens))
}

/// A quarter arbitrary bytes, three quarters mutated seeds; the seeds
/// themselves are always among the cases.
pub fn inputs(
    seeds: Vec<Vec<u8>>,
    tokens: &'static [&'static [u8]],
    max: usize,
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => arbitrary(max),
        1 => prop::sample::select(seeds.clone()),
        6 => mutated(seeds, tokens),
    ]
}
