//! What each layer of an image is cached under: chain IDs as the OCI image spec defines them,
//! and for a diff_id listed again higher up in the same stack, the key of its lowest position
//! (see the [module documentation](super) for why that is safe).

use std::collections::HashMap;

use crate::digest::{Digest, Hasher};

/// The key each layer of a stack is cached under, bottom first: its chain ID, or for a diff_id
/// listed lower in the same stack already, the key of its lowest position (see the module
/// documentation for why that is safe).
#[must_use]
pub fn cache_keys(diff_ids: &[Digest]) -> Vec<Digest> {
    let chains = chain_ids(diff_ids);
    let mut first: HashMap<&Digest, usize> = HashMap::new();
    diff_ids
        .iter()
        .enumerate()
        .map(|(i, diff_id)| chains[*first.entry(diff_id).or_insert(i)].clone())
        .collect()
}

/// The chain IDs of a stack of diff_ids, bottom first (OCI image-spec's definition).
#[must_use]
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => {
                let mut h = Hasher::new(diff_id.algorithm());
                h.update(format!("{parent} {diff_id}").as_bytes());
                h.finish()
            }
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_id_listed_again_is_cached_under_its_lowest_position() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let stack = [a.clone(), b.clone(), a.clone(), a.clone(), b.clone()];
        let chains = chain_ids(&stack);
        let keys = cache_keys(&stack);
        assert_eq!(
            keys,
            vec![
                chains[0].clone(),
                chains[1].clone(),
                chains[0].clone(),
                chains[0].clone(),
                chains[1].clone()
            ]
        );
        // Without repeats the keys are the chain IDs.
        assert_eq!(cache_keys(&stack[..2]), chain_ids(&stack[..2]));
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let c = Digest::sha256_of(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        let ab = Digest::sha256_of(format!("{a} {b}").as_bytes());
        assert_eq!(ids[1], ab);
        assert_eq!(ids[2], Digest::sha256_of(format!("{ab} {c}").as_bytes()));
        // The same layer on another parent gets another key.
        assert_ne!(chain_ids(&[c.clone(), b.clone()])[1], ids[1]);
    }
}
