//! Outbound messages of many groups, grouped by destination node, so a driver sends one
//! envelope per node per flush instead of one per group (Redpanda's heartbeat manager does this
//! for heartbeats; here every message kind coalesces). Destinations come out in node order and
//! messages of one destination in the order they were pushed, so a simulation replays exactly.

use std::collections::BTreeMap;

use crate::message::Message;
use crate::types::{GroupId, NodeId};

/// Messages for one destination node, each tagged with its group.
pub type Envelope<P> = Vec<(GroupId, Message<P>)>;

#[derive(Debug)]
pub struct Outbox<P> {
    by_node: BTreeMap<NodeId, Envelope<P>>,
    messages: usize,
}

impl<P> Default for Outbox<P> {
    fn default() -> Self {
        Outbox { by_node: BTreeMap::new(), messages: 0 }
    }
}

impl<P> Outbox<P> {
    pub fn push(&mut self, to: NodeId, group: GroupId, msg: Message<P>) {
        self.by_node.entry(to).or_default().push((group, msg));
        self.messages += 1;
    }

    /// Messages waiting, over all destinations.
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Destinations waiting: the number of envelopes `drain` will return.
    pub fn destinations(&self) -> usize {
        self.by_node.len()
    }

    /// Takes every envelope, one per destination node, in node order.
    pub fn drain(&mut self) -> impl Iterator<Item = (NodeId, Envelope<P>)> {
        self.messages = 0;
        std::mem::take(&mut self.by_node).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10,000 partitions over 3 brokers: one heartbeat round is 20,000 heartbeats (and as many
    /// replies), but only one envelope per broker pair and direction.
    #[test]
    fn heartbeat_round_of_10k_partitions_coalesces_to_a_few_envelopes() {
        let mut mg = crate::testkit::MultiGroup::new(3, 10_000, false);
        assert!(mg.elect_all(200), "every group elects a leader");
        // A heartbeat interval is `HEARTBEAT_TICKS_DEFAULT` timer rounds; groups elected at
        // different times heartbeat in different rounds of it.
        let (mut messages, mut envelopes) = (0, 0);
        for _ in 0..crate::limits::HEARTBEAT_TICKS_DEFAULT {
            mg.round();
            messages += mg.messages_last_round;
            envelopes += mg.envelopes_last_round;
        }
        println!(
            "heartbeat interval, 10000 partitions x 3 brokers: {messages} messages uncoalesced, {envelopes} envelopes coalesced"
        );
        assert_eq!(messages, 10_000 * 2 * 2, "every leader heartbeats 2 followers, who reply");
        // Per timer round: 3 brokers x 2 destinations for heartbeats, and again for replies.
        let rounds = crate::limits::HEARTBEAT_TICKS_DEFAULT as usize;
        assert!(envelopes <= 12 * rounds, "{envelopes} envelopes");
        // With quiescence, idle groups send nothing at all once they are quiet.
        let mut quiet = crate::testkit::MultiGroup::new(3, 10_000, true);
        assert!(quiet.elect_all(200));
        let mut rounds = 0;
        while quiet.messages_last_round > 0 || rounds < 3 {
            quiet.round();
            rounds += 1;
            assert!(rounds < 50, "{} messages still in round {rounds}", quiet.messages_last_round);
        }
        println!("10000 partitions x 3 brokers quiet after {rounds} rounds");
    }

    #[test]
    fn groups_by_destination_in_order() {
        let mut outbox: Outbox<()> = Outbox::default();
        for g in 0..1000u64 {
            for to in [2, 3] {
                outbox.push(
                    to,
                    GroupId(g),
                    Message::Heartbeat { term: 1, commit: g, quiesce: false },
                );
            }
        }
        assert_eq!(outbox.len(), 2000);
        assert_eq!(outbox.destinations(), 2);
        let envelopes: Vec<_> = outbox.drain().collect();
        assert_eq!(envelopes.len(), 2);
        assert_eq!(envelopes[0].0, 2);
        assert_eq!(envelopes[0].1.len(), 1000);
        assert_eq!(envelopes[0].1[7].0, GroupId(7));
        assert!(outbox.is_empty());
    }
}
