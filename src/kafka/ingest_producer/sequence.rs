//! The sequence numbers of one partition's idempotent producer (KIP-98).
//!
//! With `producer.idempotence` on, every produce request carries the producer's id and
//! epoch and the sequence number of its first record; the broker appends a batch only
//! if its sequence follows the last one it appended for that producer and partition,
//! and answers a copy of one of the producer's last five batches with the original's
//! offsets. So a batch whose outcome is unknown (a broken connection, a timeout,
//! `NotLeaderOrFollower`) is sent again *with the same sequence*: it is appended once.
//!
//! ```text
//! assign ─► unresolved: [A s0..9] [B s10..19] [C s20..24]   (dispatch order = sequence order)
//!              ▲ head: the only batch whose retries go out; the others wait behind it
//! resolve(A) ─► [B] [C]
//! refused(B) while head (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch):
//!              nothing from B on was appended under this epoch ─► epoch + 1, renumber
//!              [B s0..9] [C s10..14]
//! ```
//!
//! The renumbering is safe because the broker appends a producer's batches of one
//! partition only in sequence order: when it refuses the head's sequence, no later
//! batch of that epoch can have been appended. The epoch is bumped locally, as Apache
//! Kafka's Java client does for an idempotent producer (KIP-360); past `i16::MAX` the
//! producer needs a new id, and every unresolved batch waits for it.
//!
//! A batch given up on (its caller answered 503 at `producer.publish_timeout`) leaves
//! the sequence as it is: if the broker appended it, the next batch follows it; if not,
//! the next batch's sequence is refused and renumbered under a new epoch.
//!
//! Two rules keep a refused head from being stored twice (as the Java client's
//! `shouldStopDrainBatchesForPartition` and `isNextSequence` do):
//! - no new batch is sent while a batch is being retried, or while the current epoch
//!   has no confirmed batch yet ([`Sequencer::may_dispatch`]), so a retried head never
//!   falls out of the five batches the broker remembers;
//! - a batch behind which a later batch of the same epoch was confirmed is stored (the
//!   broker appends a producer's batches only in sequence order): if its retry is
//!   refused, it is answered as stored ([`Refusal::Stored`]), never renumbered.
//!
//! Each partition worker has its own producer id, so an epoch bump never touches
//! another partition's batches.

use std::collections::VecDeque;

use rskafka::client::controller::ProducerIdentity;

/// Identifies one batch among a partition's unresolved batches.
pub(super) type BatchId = u64;

/// What the next attempt of a batch sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// The producer has no id yet (or needs a new one): get one, then ask again.
    NeedsIdentity,
    /// Send the batch with this identity and base sequence. `head`: no earlier batch of
    /// the partition is unresolved, so a retry may go out now.
    Send {
        identity: ProducerIdentity,
        base_sequence: i32,
        head: bool,
    },
}

#[derive(Debug)]
struct Entry {
    id: BatchId,
    records: i32,
    /// `None` while the producer has no identity.
    base_sequence: Option<i32>,
    /// A later batch of the same epoch was confirmed: this one is in the log.
    stored: bool,
    /// Sent more than once.
    retrying: bool,
}

/// What a refused sequence means for the batch ([`Sequencer::refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// An earlier batch is unresolved: wait behind it and send again.
    Behind,
    /// The head's sequence was refused: the epoch moved on and every unresolved batch
    /// was numbered again; send again with the new numbers.
    Renumbered,
    /// A later batch of the same epoch was confirmed, so this one is in the log (the
    /// broker no longer recognises the copy): it is stored, its offsets unknown.
    Stored,
}

/// The unresolved batches of one partition, in sequence order, and the next sequence.
#[derive(Debug, Default)]
pub(super) struct Sequencer {
    identity: Option<ProducerIdentity>,
    next_sequence: i32,
    unresolved: VecDeque<Entry>,
    next_id: BatchId,
    /// A batch of the current epoch was confirmed.
    confirmed_in_epoch: bool,
}

impl Sequencer {
    /// Takes the next sequence numbers for a batch of `records` records; batches must be
    /// assigned in the order they are first sent.
    pub(super) fn assign(&mut self, records: usize) -> BatchId {
        let records = i32::try_from(records).expect("a batch holds fewer than 2^31 records");
        let id = self.next_id;
        self.next_id += 1;
        let base_sequence = self.identity.map(|_| self.take(records));
        self.unresolved.push_back(Entry {
            id,
            records,
            base_sequence,
            stored: false,
            retrying: false,
        });
        id
    }

    /// Whether a new batch may be sent now: not while a batch is being retried (its
    /// retries go first and alone), nor while the current epoch (or producer id) has no
    /// confirmed batch yet and one is unresolved (the first batch of an epoch goes
    /// alone, so a later one cannot overtake it).
    pub(super) fn may_dispatch(&self) -> bool {
        if self.unresolved.iter().any(|entry| entry.retrying) {
            return false;
        }
        self.unresolved.is_empty() || (self.identity.is_some() && self.confirmed_in_epoch)
    }

    /// The batch is about to be sent again.
    pub(super) fn retrying(&mut self, id: BatchId) {
        let position = self.position(id);
        self.unresolved[position].retrying = true;
    }

    /// What the batch's next attempt sends. `id` must be unresolved.
    pub(super) fn attempt(&self, id: BatchId) -> Attempt {
        let position = self.position(id);
        match (self.identity, self.unresolved[position].base_sequence) {
            (Some(identity), Some(base_sequence)) => Attempt::Send {
                identity,
                base_sequence,
                head: position == 0,
            },
            _ => Attempt::NeedsIdentity,
        }
    }

    /// The producer's identity, if it has one.
    pub(super) fn identity(&self) -> Option<ProducerIdentity> {
        self.identity
    }

    /// A new producer id (from InitProducerId): every unresolved batch is numbered again
    /// from 0, in order.
    pub(super) fn set_identity(&mut self, identity: ProducerIdentity) {
        self.identity = Some(identity);
        self.renumber();
    }

    /// The broker refused the batch's sequence (`OutOfOrderSequenceNumber`,
    /// `UnknownProducerId`, `InvalidProducerEpoch`). A batch known to be stored (a later
    /// one of its epoch was confirmed) is [`Refusal::Stored`]. Else, if it is the head,
    /// nothing from it on was appended under its epoch: the epoch is bumped (or, past
    /// `i16::MAX`, the id dropped) and every unresolved batch renumbered
    /// ([`Refusal::Renumbered`]). If an earlier batch is unresolved, the refusal only
    /// says that batch is not appended yet: nothing changes ([`Refusal::Behind`]).
    pub(super) fn refused(&mut self, id: BatchId) -> Refusal {
        let position = self.position(id);
        if self.unresolved[position].stored {
            return Refusal::Stored;
        }
        if position != 0 {
            return Refusal::Behind;
        }
        match self.identity {
            Some(identity) if identity.epoch < i16::MAX => {
                self.identity = Some(ProducerIdentity {
                    id: identity.id,
                    epoch: identity.epoch + 1,
                });
                self.renumber();
            }
            _ => {
                self.identity = None;
                self.confirmed_in_epoch = false;
                for entry in &mut self.unresolved {
                    entry.base_sequence = None;
                }
            }
        }
        Refusal::Renumbered
    }

    /// The broker confirmed the batch (appended, or recognised a copy). Every earlier
    /// unresolved batch of the same numbering is then in the log too.
    pub(super) fn confirmed(&mut self, id: BatchId) {
        let position = self.position(id);
        for entry in self.unresolved.iter_mut().take(position) {
            entry.stored = true;
        }
        self.confirmed_in_epoch = true;
        self.resolve(id);
    }

    /// The batch is finished with: appended, refused for good, or given up on.
    pub(super) fn resolve(&mut self, id: BatchId) {
        self.unresolved.retain(|entry| entry.id != id);
    }

    /// Whether no earlier batch is unresolved.
    pub(super) fn is_head(&self, id: BatchId) -> bool {
        self.unresolved.front().is_some_and(|entry| entry.id == id)
    }

    /// Batches not yet resolved.
    #[cfg(test)]
    pub(super) fn unresolved(&self) -> usize {
        self.unresolved.len()
    }

    fn position(&self, id: BatchId) -> usize {
        self.unresolved
            .iter()
            .position(|entry| entry.id == id)
            .expect("a batch is asked about only while unresolved")
    }

    fn renumber(&mut self) {
        self.confirmed_in_epoch = false;
        let mut next = 0;
        for entry in &mut self.unresolved {
            entry.base_sequence = Some(next);
            entry.stored = false;
            next = increment_sequence(next, entry.records);
        }
        self.next_sequence = next;
    }

    fn take(&mut self, records: i32) -> i32 {
        let base = self.next_sequence;
        self.next_sequence = increment_sequence(base, records);
        base
    }
}

/// The sequence `increment` records after `sequence`; sequences wrap from `i32::MAX`
/// to 0, as Kafka's `DefaultRecordBatch.incrementSequence` does.
pub(super) fn increment_sequence(sequence: i32, increment: i32) -> i32 {
    if sequence > i32::MAX - increment {
        increment - (i32::MAX - sequence) - 1
    } else {
        sequence + increment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRODUCER: ProducerIdentity = ProducerIdentity { id: 7, epoch: 0 };

    fn send(sequencer: &Sequencer, id: BatchId) -> (i16, i32, bool) {
        match sequencer.attempt(id) {
            Attempt::Send {
                identity,
                base_sequence,
                head,
            } => (identity.epoch, base_sequence, head),
            Attempt::NeedsIdentity => panic!("batch {id} has no sequence"),
        }
    }

    fn with_identity() -> Sequencer {
        let mut sequencer = Sequencer::default();
        sequencer.set_identity(PRODUCER);
        sequencer
    }

    #[test]
    fn batches_take_consecutive_sequences_in_dispatch_order() {
        let mut sequencer = with_identity();
        let a = sequencer.assign(10);
        let b = sequencer.assign(5);
        let c = sequencer.assign(1);
        assert_eq!(send(&sequencer, a), (0, 0, true));
        assert_eq!(send(&sequencer, b), (0, 10, false));
        assert_eq!(send(&sequencer, c), (0, 15, false));
        sequencer.resolve(a);
        assert_eq!(send(&sequencer, b), (0, 10, true), "b is the head now");
        // A retry of b keeps its sequence: the broker drops a copy of what it appended.
        assert_eq!(send(&sequencer, b), (0, 10, true));
        sequencer.resolve(b);
        sequencer.resolve(c);
        let d = sequencer.assign(3);
        assert_eq!(send(&sequencer, d), (0, 16, true));
        assert_eq!(sequencer.unresolved(), 1);
    }

    #[test]
    fn a_refusal_behind_the_head_changes_nothing() {
        let mut sequencer = with_identity();
        let a = sequencer.assign(2);
        let b = sequencer.assign(2);
        // b overtook a (out of order on the wire): the broker refused b's sequence.
        assert_eq!(sequencer.refused(b), Refusal::Behind);
        assert_eq!(send(&sequencer, a), (0, 0, true));
        assert_eq!(send(&sequencer, b), (0, 2, false));
    }

    #[test]
    fn a_refused_head_bumps_the_epoch_and_renumbers_in_order() {
        let mut sequencer = with_identity();
        let a = sequencer.assign(4);
        let b = sequencer.assign(3);
        let c = sequencer.assign(2);
        sequencer.resolve(a); // appended
        // b given up on (503): if it was not appended, c's sequence (7) is refused.
        sequencer.resolve(b);
        assert_eq!(sequencer.refused(c), Refusal::Renumbered);
        assert_eq!(send(&sequencer, c), (1, 0, true), "new epoch starts at 0");
        let d = sequencer.assign(5);
        assert_eq!(send(&sequencer, d), (1, 2, false));
    }

    #[test]
    fn every_unresolved_batch_moves_to_the_new_epoch_keeping_its_order() {
        let mut sequencer = with_identity();
        let a = sequencer.assign(1);
        let b = sequencer.assign(1);
        let c = sequencer.assign(1);
        assert_eq!(sequencer.refused(a), Refusal::Renumbered);
        assert_eq!(send(&sequencer, a), (1, 0, true));
        assert_eq!(send(&sequencer, b), (1, 1, false));
        assert_eq!(send(&sequencer, c), (1, 2, false));
    }

    #[test]
    fn an_exhausted_epoch_needs_a_new_producer_id() {
        let mut sequencer = Sequencer::default();
        sequencer.set_identity(ProducerIdentity {
            id: 7,
            epoch: i16::MAX,
        });
        let a = sequencer.assign(1);
        let b = sequencer.assign(1);
        assert_eq!(sequencer.refused(a), Refusal::Renumbered);
        assert_eq!(sequencer.attempt(a), Attempt::NeedsIdentity);
        assert_eq!(sequencer.attempt(b), Attempt::NeedsIdentity);
        sequencer.set_identity(ProducerIdentity { id: 8, epoch: 0 });
        assert_eq!(send(&sequencer, a), (0, 0, true));
        assert_eq!(send(&sequencer, b), (0, 1, false));
        let c = sequencer.assign(2);
        assert_eq!(send(&sequencer, c), (0, 2, false));
    }

    #[test]
    fn batches_assigned_before_the_identity_are_numbered_when_it_arrives() {
        let mut sequencer = Sequencer::default();
        let a = sequencer.assign(3);
        let b = sequencer.assign(2);
        assert_eq!(sequencer.attempt(a), Attempt::NeedsIdentity);
        sequencer.set_identity(PRODUCER);
        assert_eq!(send(&sequencer, a), (0, 0, true));
        assert_eq!(send(&sequencer, b), (0, 3, false));
        assert_eq!(sequencer.identity(), Some(PRODUCER));
    }

    #[test]
    fn a_head_behind_a_confirmed_batch_is_stored_not_renumbered() {
        // The review's case: a (head) is appended, its answer lost (NotLeaderOrFollower
        // after appending); b, sent behind it, is confirmed; a's retry is no longer
        // recognised by the broker and refused. Renumbering a would store it twice.
        let mut sequencer = with_identity();
        let a = sequencer.assign(10);
        let b = sequencer.assign(10);
        sequencer.retrying(a);
        sequencer.confirmed(b);
        assert_eq!(sequencer.refused(a), Refusal::Stored);
        assert_eq!(send(&sequencer, a), (0, 0, true), "numbers unchanged");
    }

    #[test]
    fn no_new_batch_goes_while_one_is_retried_or_an_epoch_is_unconfirmed() {
        let mut sequencer = Sequencer::default();
        assert!(sequencer.may_dispatch(), "nothing unresolved");
        let a = sequencer.assign(1);
        assert!(
            !sequencer.may_dispatch(),
            "the first batch goes alone (no id yet)"
        );
        sequencer.set_identity(PRODUCER);
        assert!(
            !sequencer.may_dispatch(),
            "nor before the epoch's first confirmation"
        );
        sequencer.confirmed(a);
        let b = sequencer.assign(1);
        assert!(
            sequencer.may_dispatch(),
            "pipelined once the epoch is confirmed"
        );
        sequencer.retrying(b);
        assert!(!sequencer.may_dispatch(), "not while a batch is retried");
        assert_eq!(sequencer.refused(b), Refusal::Renumbered);
        assert!(!sequencer.may_dispatch(), "a new epoch goes alone again");
        sequencer.confirmed(b);
        assert!(sequencer.may_dispatch());
    }

    #[test]
    fn sequences_wrap_at_i32_max_as_kafka_does() {
        assert_eq!(increment_sequence(0, 5), 5);
        assert_eq!(increment_sequence(i32::MAX - 5, 5), i32::MAX);
        assert_eq!(increment_sequence(i32::MAX - 5, 6), 0);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 10), 8);
    }

    #[test]
    fn a_resolved_head_hands_over_to_the_next_batch() {
        let mut sequencer = with_identity();
        let a = sequencer.assign(1);
        let b = sequencer.assign(1);
        assert!(sequencer.is_head(a));
        assert!(!sequencer.is_head(b));
        // Batches may finish out of order (b acknowledged while a retries).
        sequencer.resolve(b);
        assert!(sequencer.is_head(a));
        sequencer.resolve(a);
        assert_eq!(sequencer.unresolved(), 0);
    }
}
