//! Spare write buffers, kept per worker thread. An idle connection holds no buffer (memory per
//! connection is what lets a node hold a million), but a busy one would then allocate and free
//! its message list and its frame buffer on every wake-up; instead it borrows them from the
//! thread it runs on and gives them back once written.

use bytes::Bytes;
use std::cell::RefCell;
use std::thread::LocalKey;

/// Spares kept per thread: one per connection writing at once on it, in practice a few.
const KEPT: usize = 16;
/// Larger buffers (a burst to a slow client) go back to the allocator.
const MAX_KEPT_BYTES: usize = 256 * 1024;
const MAX_KEPT_MESSAGES: usize = 4096;

thread_local! {
    static FRAMES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static MESSAGES: RefCell<Vec<Vec<Bytes>>> = const { RefCell::new(Vec::new()) };
}

/// An empty byte buffer, with whatever capacity a spare had.
pub fn take_frames() -> Vec<u8> {
    take(&FRAMES)
}

/// Gives a byte buffer back for the next writer on this thread.
pub fn give_frames(buffer: Vec<u8>) {
    give(&FRAMES, buffer, MAX_KEPT_BYTES)
}

/// An empty message list, with whatever capacity a spare had.
pub fn take_messages() -> Vec<Bytes> {
    take(&MESSAGES)
}

/// Gives a message list back (its messages are dropped now).
pub fn give_messages(list: Vec<Bytes>) {
    give(&MESSAGES, list, MAX_KEPT_MESSAGES)
}

type Spares<T> = LocalKey<RefCell<Vec<Vec<T>>>>;

fn take<T: 'static>(spares: &'static Spares<T>) -> Vec<T> {
    spares
        .try_with(|spares| spares.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn give<T: 'static>(spares: &'static Spares<T>, mut spare: Vec<T>, max_capacity: usize) {
    if spare.capacity() == 0 || spare.capacity() > max_capacity {
        return;
    }
    spare.clear();
    let _ = spares.try_with(|spares| {
        let mut spares = spares.borrow_mut();
        if spares.len() < KEPT {
            spares.push(spare);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_with_its_capacity() {
        let mut buffer = take_frames();
        buffer.extend_from_slice(&[1; 1000]);
        let capacity = buffer.capacity();
        give_frames(buffer);
        let again = take_frames();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity);
    }

    #[test]
    fn huge_buffers_and_lists_are_not_kept() {
        while take_frames().capacity() > 0 {}
        give_frames(Vec::with_capacity(MAX_KEPT_BYTES + 1));
        assert_eq!(take_frames().capacity(), 0);
        while take_messages().capacity() > 0 {}
        give_messages(Vec::with_capacity(MAX_KEPT_MESSAGES + 1));
        assert_eq!(take_messages().capacity(), 0);
    }

    #[test]
    fn messages_given_back_are_dropped() {
        let shared = Bytes::from(vec![7u8; 64]);
        let mut list = take_messages();
        list.push(shared.clone());
        give_messages(list);
        assert!(take_messages().is_empty());
        // The list held a reference; giving it back released it.
        assert!(shared.is_unique());
    }

    #[test]
    fn no_more_than_kept_spares_per_thread() {
        for _ in 0..KEPT * 2 {
            give_frames(Vec::with_capacity(16));
        }
        let mut taken = 0;
        while take_frames().capacity() > 0 {
            taken += 1;
        }
        assert_eq!(taken, KEPT);
    }
}
