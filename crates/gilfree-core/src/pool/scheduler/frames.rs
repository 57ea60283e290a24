//! [`Frames`]: the messages a task's worker sent back, kept in one buffer.

use std::ops::Index;

/// A task's frames, in order, in one contiguous buffer.
///
/// A chunk of tiny tasks answers with one frame per item: tens of thousands of messages of a
/// few bytes. Kept as a `Vec` each, every frame was allocated by the slot thread and freed by
/// the thread that took the completion (a cross-thread free, glibc's slow path): about a fifth
/// of the whole pool's CPU time per tiny task. Here a frame costs a copy into `data` and an
/// entry in `ends`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frames {
    data: Vec<u8>,
    /// Where each frame ends in `data` (frame `i` is `data[ends[i - 1]..ends[i]]`).
    ends: Vec<usize>,
}

impl Frames {
    /// No frames.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a frame.
    pub fn push(&mut self, frame: &[u8]) {
        self.data.extend_from_slice(frame);
        self.ends.push(self.data.len());
    }

    /// How many frames.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Frame `i`, if there are that many.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.data[start..end])
    }

    /// The last frame, if any.
    pub fn last(&self) -> Option<&[u8]> {
        self.get(self.len().checked_sub(1)?)
    }

    /// The frames, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + DoubleEndedIterator + Clone + '_ {
        (0..self.len()).map(|i| &self[i])
    }
}

impl Index<usize> for Frames {
    type Output = [u8];

    fn index(&self, i: usize) -> &[u8] {
        match self.get(i) {
            Some(frame) => frame,
            None => panic!("frame {i} of {}", self.len()),
        }
    }
}

impl PartialEq<Vec<Vec<u8>>> for Frames {
    fn eq(&self, other: &Vec<Vec<u8>>) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_bounds_and_order() {
        let mut f = Frames::new();
        assert!(f.is_empty() && f.last().is_none() && f.get(0).is_none());
        f.push(b"ab");
        f.push(b"");
        f.push(b"cde");
        assert_eq!(f.len(), 3);
        assert_eq!((&f[0], &f[1], &f[2]), (&b"ab"[..], &b""[..], &b"cde"[..]));
        assert_eq!(f.last(), Some(&b"cde"[..]));
        assert_eq!(
            f.iter().rev().collect::<Vec<_>>(),
            [&b"cde"[..], b"", b"ab"]
        );
        assert_eq!(f, vec![b"ab".to_vec(), Vec::new(), b"cde".to_vec()]);
        assert_ne!(f, vec![b"ab".to_vec(), b"cde".to_vec()]);
    }
}
